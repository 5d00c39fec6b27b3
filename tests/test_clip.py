"""CLIP encoders against transformers (PyTorch, float32, tiny random models): outputs, loading, export."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from editdiff.interop.torch_io import CheckpointError, read_config, write_config
from editdiff.interop.transformers_clip import (export_clip_text, export_clip_vision, load_clip_text,
                                                load_clip_tokenizer, load_clip_vision, tokenize)
from editdiff.nn.clip import CLIPTextConfig, CLIPVisionConfig

TOL = 1e-4

# Both activations, projection widths unlike the hidden widths, odd layer / head counts.
VISION_CONFIGS = {
    "quick_gelu": dict(hidden_size=32, intermediate_size=48, projection_dim=24, num_hidden_layers=2,
                       num_attention_heads=4, image_size=32, patch_size=8, hidden_act="quick_gelu"),
    "gelu": dict(hidden_size=24, intermediate_size=40, projection_dim=40, num_hidden_layers=3,
                 num_attention_heads=2, image_size=30, patch_size=6, hidden_act="gelu", layer_norm_eps=1e-6),
}
TEXT_CONFIGS = {
    # eos_token_id of the tokenizer written below: pooling at the first EOS.
    "quick_gelu": dict(vocab_size=300, hidden_size=32, intermediate_size=48, projection_dim=24, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=12, hidden_act="quick_gelu",
                       bos_token_id=268, eos_token_id=269, pad_token_id=269),
    # eos_token_id 2: the pre-#24773 configs, pooling at the largest id.
    "gelu": dict(vocab_size=300, hidden_size=24, intermediate_size=40, projection_dim=40, num_hidden_layers=3,
                 num_attention_heads=2, max_position_embeddings=12, hidden_act="gelu", eos_token_id=2),
}


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Perturbs every parameter (LayerNorm scales and biases included, which init leaves at 1 / 0, so that a
    swapped scale and bias would show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _max_err(ours, theirs) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - theirs.detach().numpy().astype(np.float64))))


def _text_ids(vocab_size: int, eos_token_id: int, lengths=(5, 9, 12)) -> np.ndarray:
    """(3, 12) ids: bos-like token, random tokens, one EOS, then padding with the EOS id. For the legacy
    eos_token_id 2 the EOS is the largest id, as the real tokenizer guarantees."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab_size - 1, size=(len(lengths), 12))
    eos = eos_token_id if eos_token_id != 2 else vocab_size - 1
    for row, n in enumerate(lengths):
        ids[row, n - 1:] = eos
    return ids


@pytest.fixture(scope="module")
def vision_checkpoints(tmp_path_factory) -> dict:
    """Per config name: (transformers CLIPVisionModelWithProjection, our model loaded from its directory, the
    directory)."""
    checkpoints = {}
    for seed, (name, kwargs) in enumerate(sorted(VISION_CONFIGS.items())):
        torch.manual_seed(seed)
        reference = _randomize(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**kwargs)),
                               seed=seed + 10)
        directory = tmp_path_factory.mktemp(f"clip_vision_{name}")
        reference.save_pretrained(directory)
        checkpoints[name] = reference, load_clip_vision(directory), directory
    return checkpoints


@pytest.fixture(scope="module")
def text_checkpoints(tmp_path_factory) -> dict:
    """Per config name: (transformers CLIPTextModelWithProjection, our model loaded from its directory, the
    directory)."""
    checkpoints = {}
    for seed, (name, kwargs) in enumerate(sorted(TEXT_CONFIGS.items())):
        torch.manual_seed(seed)
        reference = _randomize(transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**kwargs)),
                               seed=seed + 20)
        directory = tmp_path_factory.mktemp(f"clip_text_{name}")
        reference.save_pretrained(directory)
        checkpoints[name] = reference, load_clip_text(directory), directory
    return checkpoints


apply = nnx.jit(lambda model, inputs: model(inputs))


@pytest.mark.parametrize("name", sorted(VISION_CONFIGS))
def test_vision_matches_transformers(vision_checkpoints, name):
    reference, model, _ = vision_checkpoints[name]
    size = model.config.image_size
    pixels = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(pixels.transpose(0, 3, 1, 2)), output_hidden_states=True)
        their_pooled = reference.vision_model(torch.from_numpy(pixels.transpose(0, 3, 1, 2))).pooler_output
    ours = apply(model, jnp.asarray(pixels))

    assert len(ours.hidden_states) == len(theirs.hidden_states) == model.config.num_hidden_layers + 1
    errors = {
        "last_hidden_state": _max_err(ours.last_hidden_state, theirs.last_hidden_state),
        "hidden_states": max(_max_err(a, b) for a, b in zip(ours.hidden_states, theirs.hidden_states)),
        "pooler_output": _max_err(ours.pooler_output, their_pooled),
        "image_embeds": _max_err(ours.image_embeds, theirs.image_embeds),
        "patch_tokens": _max_err(ours.patch_tokens, theirs.hidden_states[-1][:, 1:]),
    }
    print(f"\nCLIP vision ({name}) max abs error vs transformers: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) < TOL, errors
    assert ours.image_embeds.shape == (2, model.config.projection_dim)


@pytest.mark.parametrize("name", sorted(TEXT_CONFIGS))
def test_text_matches_transformers(text_checkpoints, name):
    reference, model, _ = text_checkpoints[name]
    ids = _text_ids(model.config.vocab_size, model.config.eos_token_id)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids), output_hidden_states=True)
        their_pooled = reference.text_model(torch.from_numpy(ids)).pooler_output
    ours = apply(model, jnp.asarray(ids, jnp.int32))

    assert len(ours.hidden_states) == len(theirs.hidden_states) == model.config.num_hidden_layers + 1
    errors = {
        "last_hidden_state": _max_err(ours.last_hidden_state, theirs.last_hidden_state),
        "hidden_states": max(_max_err(a, b) for a, b in zip(ours.hidden_states, theirs.hidden_states)),
        "pooler_output": _max_err(ours.pooler_output, their_pooled),
        "text_embeds": _max_err(ours.text_embeds, theirs.text_embeds),
    }
    print(f"\nCLIP text ({name}, eos_token_id {model.config.eos_token_id}) max abs error vs transformers: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) < TOL, errors


def _assert_state_dicts_equal(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", sorted(VISION_CONFIGS))
def test_vision_export_round_trip(vision_checkpoints, name, tmp_path):
    reference, model, _ = vision_checkpoints[name]
    export_clip_vision(model, tmp_path)
    reloaded, info = transformers.CLIPVisionModelWithProjection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _assert_state_dicts_equal(reference.state_dict(), reloaded.state_dict())
    assert reloaded.config.hidden_act == reference.config.hidden_act
    assert reloaded.config.projection_dim == reference.config.projection_dim


@pytest.mark.parametrize("name", sorted(TEXT_CONFIGS))
def test_text_export_round_trip(text_checkpoints, name, tmp_path):
    reference, model, _ = text_checkpoints[name]
    export_clip_text(model, tmp_path)
    reloaded, info = transformers.CLIPTextModelWithProjection.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    _assert_state_dicts_equal(reference.state_dict(), reloaded.state_dict())
    assert reloaded.config.eos_token_id == reference.config.eos_token_id


def test_loads_both_towers_from_a_full_clip_model(tmp_path):
    """A CLIPModel directory: the sub-configs keep their default projection_dim (512); the top-level one
    (20) is the real projection width."""
    config = transformers.CLIPConfig(text_config=TEXT_CONFIGS["quick_gelu"],
                                     vision_config=VISION_CONFIGS["gelu"], projection_dim=20)
    torch.manual_seed(0)
    reference = _randomize(transformers.CLIPModel(config), seed=3)
    reference.save_pretrained(tmp_path)
    vision, text = load_clip_vision(tmp_path), load_clip_text(tmp_path)
    assert vision.config.projection_dim == text.config.projection_dim == 20

    size = vision.config.image_size
    pixels = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    ids = _text_ids(text.config.vocab_size, text.config.eos_token_id)
    with torch.no_grad():
        their_image = reference.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
        their_text = reference.get_text_features(input_ids=torch.from_numpy(ids))
    errors = (_max_err(apply(vision, jnp.asarray(pixels)).image_embeds, their_image.pooler_output),
              _max_err(apply(text, jnp.asarray(ids, jnp.int32)).text_embeds, their_text.pooler_output))
    print(f"\nCLIPModel directory: max abs error image_embeds {errors[0]:.2e}, text_embeds {errors[1]:.2e}")
    assert max(errors) < TOL


def _byte_level_alphabet() -> list[str]:
    """GPT-2 / CLIP byte-level BPE's printable stand-ins for the 256 byte values."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def test_tokenizer_round_trip_feeds_the_text_model(text_checkpoints, tmp_path):
    """vocab.json + merges.txt written here -> CLIPTokenizer -> ids -> text; the same ids through our text model
    and transformers' pool the same EOS token."""
    reference, model, _ = text_checkpoints["quick_gelu"]  # its bos / eos ids are this tokenizer's
    # Byte-level BPE: the 256 byte stand-ins, word-final forms of the bytes the texts end words with, and the
    # merges that make "photo", "cat" and "of" single tokens.
    word_ends = ["a</w>", "t</w>", "f</w>", "o</w>", "!</w>"]
    merges = ["p h", "o t", "ph ot", "phot o</w>", "c a", "ca t</w>", "o f</w>"]
    merged = ["ph", "ot", "phot", "photo</w>", "ca", "cat</w>", "of</w>"]
    tokens = _byte_level_alphabet() + word_ends + merged + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) < model.config.vocab_size
    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer_dir.mkdir()
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")

    tokenizer = load_clip_tokenizer(tokenizer_dir)
    texts = ["a photo of a cat", "A  Photo   of a CAT!"]
    ids = tokenize(tokenizer, texts, max_length=model.config.max_position_embeddings)
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    assert (bos, eos) == (model.config.bos_token_id, model.config.eos_token_id)
    assert ids.shape == (2, 12) and ids.dtype == np.int32
    assert list(ids[0, :7]) == [bos, vocab["a</w>"], vocab["photo</w>"], vocab["of</w>"], vocab["a</w>"],
                                vocab["cat</w>"], eos]
    assert np.all(ids[0, 7:] == eos)  # padded with the pad token, which is the EOS token
    decoded = tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert decoded == ["a photo of a cat", "a photo of a cat !"]

    encoded = tokenizer(texts, padding="max_length", max_length=12, return_tensors="pt")
    with torch.no_grad():
        theirs = reference(torch.from_numpy(ids.astype(np.int64))).text_embeds
        # With the tokenizer's padding mask too: right padding after the EOS changes nothing pooled.
        theirs_masked = reference(**encoded).text_embeds
    ours = apply(model, jnp.asarray(ids)).text_embeds
    error = max(_max_err(ours, theirs), _max_err(ours, theirs_masked))
    print(f"\ntokenized prompts: text_embeds max abs error {error:.2e}")
    assert error < TOL


def test_compute_dtype_keeps_float32_params(vision_checkpoints):
    _, model, directory = vision_checkpoints["quick_gelu"]
    half = load_clip_vision(directory, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(half, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params)
    size = half.config.image_size
    pixels = jnp.asarray(np.random.default_rng(2).normal(size=(2, size, size, 3)), jnp.float32)  # parity test's shape: compiled once
    low, full = apply(half, pixels).image_embeds, apply(model, pixels).image_embeds
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), full, atol=0.1 * float(jnp.abs(full).max()))


@pytest.mark.parametrize("key,value,allowed", [
    ("hidden_act", "relu", "'quick_gelu' or 'gelu'"),
    ("num_attention_heads", 5, "a divisor of hidden_size=32"),
    ("image_size", [32, 32], "a positive int"),
    ("attention_dropout", 0.1, "0 (dropout is not implemented)"),
])
def test_vision_config_errors_name_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ValueError) as error:
        CLIPVisionConfig.from_transformers_dict({**VISION_CONFIGS["quick_gelu"], key: value})
    assert f"CLIPVisionConfig.{key}={value!r}" in str(error.value) and allowed in str(error.value)


def test_text_config_errors_on_a_list_of_eos_ids():
    with pytest.raises(ValueError, match=r"eos_token_id=\[2, 3\].*one int token id"):
        CLIPTextConfig(**{**TEXT_CONFIGS["gelu"], "eos_token_id": [2, 3]})


def test_checkpoint_errors(vision_checkpoints, text_checkpoints, tmp_path):
    reference, _, _ = vision_checkpoints["quick_gelu"]
    _, _, text_directory = text_checkpoints["quick_gelu"]
    # A bad value in config.json names the directory and the key.
    bad_config = tmp_path / "bad_config"
    reference.save_pretrained(bad_config)
    write_config(bad_config, {**read_config(bad_config), "hidden_act": "relu"})
    with pytest.raises(CheckpointError, match=r"bad_config.*hidden_act='relu'"):
        load_clip_vision(bad_config)

    # A vision tower without the projection cannot give image embeddings.
    no_projection = tmp_path / "no_projection"
    transformers.CLIPVisionModel(reference.config).save_pretrained(no_projection)
    with pytest.raises(CheckpointError, match="architectures.*CLIPVisionModelWithProjection"):
        load_clip_vision(no_projection)

    # A text directory is not a vision one.
    with pytest.raises(CheckpointError, match="model_type='clip_text_model'.*'clip_vision_model'"):
        load_clip_vision(text_directory)

    # Missing and unexpected keys are all listed.
    from safetensors.numpy import load_file, save_file
    renamed = tmp_path / "renamed"
    reference.save_pretrained(renamed)
    state = load_file(os.fspath(renamed / "model.safetensors"))
    state["visual_projection.kernel"] = state.pop("visual_projection.weight")
    del state["vision_model.post_layernorm.bias"]
    save_file(state, os.fspath(renamed / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        load_clip_vision(renamed)
    message = str(error.value)
    assert "missing keys (2): vision_model.post_layernorm.bias, visual_projection.weight" in message
    assert "unexpected keys (1): visual_projection.kernel" in message
