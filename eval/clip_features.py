"""CLIP image embeddings through the project's CLIP (editdiff.nn.clip), for embedding-similarity metrics.

Kept apart from the rest of `eval` so that the pixel and Inception metrics never load the CLIP code.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from editdiff.interop.transformers_clip import load_clip_vision
from editdiff.nn.clip import CLIPVisionModel
from editdiff.nn.clip_preprocess import resize_center_crop


def load_clip_image_encoder(directory: str | os.PathLike, *, dtype=jnp.float32) -> CLIPVisionModel:
    """The vision tower + projection of a local transformers CLIPModel / CLIPVisionModelWithProjection folder."""
    return load_clip_vision(directory, dtype=dtype)


def clip_image_embeddings(model: CLIPVisionModel, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) images in [-1, 1] -> (B, projection_dim) image embeddings (not normalised).

    Preprocessed as CLIPImageProcessor does: bicubic resize of the shorter side to the model's image size,
    centre crop, CLIP mean / std.
    """
    return model(resize_center_crop(images, size=model.config.image_size)).image_embeds
