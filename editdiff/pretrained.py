"""`config.pretrained`: local directories of pretrained weights (nothing is downloaded at run time).

    config.pretrained.root           a diffusers pipeline directory (unet/, vae/, text_encoder/, ...): fills
                                     every part below that is left empty and exists there
    config.pretrained.unet           a diffusers UNet2DConditionModel / UNet2DModel directory
    config.pretrained.vae            a diffusers AutoencoderKL directory
    config.pretrained.text_encoder   a transformers CLIP (text) directory
    config.pretrained.image_encoder  a transformers CLIP (vision) directory
    config.pretrained.tokenizer      a CLIP tokenizer directory (vocab.json + merges.txt)

Every part is optional; a method says which it needs (`require`), and a named directory that does not
exist is an error before anything is built.
"""
from __future__ import annotations

import os

import ml_collections

from editdiff import config_checks as checks

PARTS = ("unet", "vae", "text_encoder", "image_encoder", "tokenizer")


def default_pretrained_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"root": "", **{part: "" for part in PARTS}})


def pretrained_path(config: ml_collections.ConfigDict, part: str) -> str:
    """The directory of `part`: named explicitly, else `root/part` when that exists, else ""."""
    if part not in PARTS:
        raise KeyError(f"unknown pretrained part {part!r}; known: {', '.join(PARTS)}")
    named = config.pretrained[part]
    if named:
        return named
    root = config.pretrained.root
    candidate = os.path.join(root, part) if root else ""
    return candidate if candidate and os.path.isdir(candidate) else ""


_DIRECTORY_OR_EMPTY: checks.Check = ((lambda v: isinstance(v, str) and (v == "" or os.path.isdir(v))),
                                     "an existing directory, or '' for none")


def pretrained_section(require: tuple[str, ...] = ()) -> checks.Section:
    """The `config.pretrained` keys; each part in `require` must resolve to a directory."""

    def required(config: ml_collections.ConfigDict) -> list[str]:
        return [f"config.pretrained.{part} = '' is invalid here; allowed: a local diffusers/transformers "
                f"directory (or config.pretrained.root with a {part}/ subfolder)"
                for part in require if not pretrained_path(config, part)]

    return checks.Section("pretrained", {key: _DIRECTORY_OR_EMPTY for key in ("root", *PARTS)}, rules=(required,))
