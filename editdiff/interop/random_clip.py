"""A randomly initialised CLIPModel directory: the stand-in for trained CLIP weights where none exist.

Demos and tests that need a CLIP directory on a machine without the model hub write one with

    python -m editdiff.interop.random_clip DIR

transformers' CLIPModel (both towers, 224 px, patch 32, width 64, 2 layers, projection 64) with a byte-level
tokenizer (every byte is a token; no merges), saved as from_pretrained reads it. Its config.json carries
`STAND_IN_KEY`, so code loading it can say plainly that its CLIP losses and scores measure nothing semantic
(`stand_in_note`).
"""
from __future__ import annotations

import json
import os
import sys

STAND_IN_KEY = "editdiff_stand_in"
STAND_IN_TEXT = ("randomly initialised by editdiff.interop.random_clip, not a trained CLIP: its directions and "
                 "similarities carry no meaning")


def write_byte_level_tokenizer(directory: str | os.PathLike, model_max_length: int = 77) -> dict[str, int]:
    """vocab.json + merges.txt of a CLIP byte-level BPE without merges (every byte and its word-final form,
    then <|startoftext|> and <|endoftext|>) and tokenizer_config.json; returns the vocabulary."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet]
                                                + ["<|startoftext|>", "<|endoftext|>"])}
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(directory, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": model_max_length}, f)
    return vocab


def write_random_clip(directory: str | os.PathLike, seed: int = 0, image_size: int = 224,
                      vision_width: int = 64) -> str:
    """Writes the stand-in CLIPModel and its tokenizer to `directory`; returns the directory. `image_size`
    (a multiple of the patch size 32; tests use 32) is CLIP's input resolution, `vision_width` the vision
    tower's hidden size (a multiple of its 4 heads)."""
    import torch
    import transformers

    directory = os.fspath(directory)
    vocab = write_byte_level_tokenizer(directory, model_max_length=32)
    torch.manual_seed(seed)
    special = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                   pad_token_id=vocab["<|endoftext|>"])
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=32, **special),
        vision_config=dict(image_size=image_size, patch_size=32, hidden_size=vision_width, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=64)
    transformers.CLIPModel(config).eval().save_pretrained(directory)
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        saved = json.load(f)
    saved[STAND_IN_KEY] = STAND_IN_TEXT
    with open(path, "w") as f:
        json.dump(saved, f, indent=2)
    return directory


def stand_in_note(directory: str | os.PathLike) -> str | None:
    """`STAND_IN_TEXT` when `directory` holds the stand-in (its config.json says so), else None."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f).get(STAND_IN_KEY)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m editdiff.interop.random_clip DIR")
    print(f"wrote a stand-in CLIP ({STAND_IN_TEXT}) to {write_random_clip(sys.argv[1])}")
