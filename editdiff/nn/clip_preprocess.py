"""CLIP's image preprocessing in JAX, from (B, H, W, 3) images in [-1, 1] to CLIP-normalised pixel values.

Jit-able and differentiable (the directional CLIP loss back-propagates through it). Shapes are static: the
output size follows from the input shape at trace time.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# OpenAI CLIP's per-channel statistics of [0, 1] RGB (transformers' OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: jax.Array) -> jax.Array:
    """(B, H, W, 3) in [-1, 1] -> ((x + 1) / 2 - mean) / std, float32."""
    unit = (jnp.asarray(images, jnp.float32) + 1.0) * 0.5
    return (unit - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def shortest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to `size`, the longer one truncated to an int as
    transformers' `get_resize_output_image_size(default_to_square=False)` does."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _resize(images: jax.Array, height: int, width: int) -> jax.Array:
    # Antialiased Keys cubic (a = -0.5): the kernel of PIL's BICUBIC, which CLIPImageProcessor uses, widened
    # by the scale factor when shrinking as PIL widens it.
    return jax.image.resize(images, (images.shape[0], height, width, images.shape[-1]), method="bicubic",
                            antialias=True)


def resize_center_crop(images: jax.Array, size: int = 224, crop_size: int | None = None) -> jax.Array:
    """CLIPImageProcessor's pipeline: bicubic resize of the shorter side to `size`, a centred
    `crop_size` x `crop_size` crop (default `size`), CLIP mean / std.

    (B, H, W, 3) in [-1, 1] -> (B, crop_size, crop_size, 3) float32.
    """
    crop_size = size if crop_size is None else crop_size
    if not 0 < crop_size <= size:
        raise ValueError(f"crop_size={crop_size} must lie in (0, size={size}]: the crop is taken inside the resized "
                         "image")
    height, width = shortest_side_size(images.shape[1], images.shape[2], size)
    resized = _resize(jnp.asarray(images, jnp.float32), height, width)
    top, left = (height - crop_size) // 2, (width - crop_size) // 2  # transformers' center_crop offsets
    return normalize(resized[:, top:top + crop_size, left:left + crop_size])


def resize_square(images: jax.Array, size: int = 224) -> jax.Array:
    """Bicubic resize to `size` x `size` whatever the aspect ratio (nothing cropped away), CLIP mean / std.

    (B, H, W, 3) in [-1, 1] -> (B, size, size, 3) float32.
    """
    return normalize(_resize(jnp.asarray(images, jnp.float32), size, size))
