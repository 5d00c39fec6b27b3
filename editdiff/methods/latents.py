"""The latent space every latent-diffusion method works in, for any autoencoder of the shared interface
(`encode(x).mean`, `decode(z)`, `scaling_factor`): the SD VAE or the patch autoencoder."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from input_pipeline.images import resize_short_side


def encode(autoencoder: nnx.Module, images: jax.Array) -> jax.Array:
    """z = s * E(x), the posterior mean scaled: (B, H, W, 3) -> (B, h, w, C) float32."""
    return (autoencoder.scaling_factor * autoencoder.encode(images).mean).astype(jnp.float32)


def decode(autoencoder: nnx.Module, latents: jax.Array) -> jax.Array:
    """x = D(z / s), clipped to [-1, 1]: (B, h, w, C) -> (B, H, W, 3) float32."""
    return jnp.clip(autoencoder.decode(latents / autoencoder.scaling_factor).astype(jnp.float32), -1.0, 1.0)


class LatentModel(nnx.Module):
    """A model holding its autoencoder as `self.autoencoder`, with the latent space's two maps."""

    def encode(self, images: jax.Array) -> jax.Array:
        """z = s * E(x), the posterior mean scaled: (B, H, W, 3) -> (B, h, w, C) float32."""
        return encode(self.autoencoder, images)

    def decode(self, latents: jax.Array) -> jax.Array:
        """x = D(z / s), clipped to [-1, 1]: (B, h, w, C) -> (B, H, W, 3) float32."""
        return decode(self.autoencoder, latents)


def fit_image(image: np.ndarray, short_side: int, multiple: int) -> np.ndarray:
    """A `--mode=edit` photo (H, W, 3) in [-1, 1] at the training photos' scale (its short side resized to
    `short_side`, when > 0), centre-cropped to a multiple of `multiple` px (the sizes the model takes); each
    change logged. (H', W', 3) float32; ValueError when the photo is smaller than one multiple."""
    if short_side and min(image.shape[:2]) != short_side:
        logging.info("--mode=edit: resized %dx%d to the short side %d of the training photos "
                     "(config.data.resize_short_side)", image.shape[1], image.shape[0], short_side)
        image = resize_short_side((image + 1.0) / 2.0, short_side) * 2.0 - 1.0
    height, width = (n - n % multiple for n in image.shape[:2])
    if not (height and width):
        raise ValueError(f"--mode=edit: an image of {image.shape[1]}x{image.shape[0]} px is smaller than the "
                         f"model's {multiple} px grid")
    top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
    if (height, width) != image.shape[:2]:
        logging.info("--mode=edit: centre-cropped %dx%d to %dx%d (a multiple of %d px)", image.shape[1],
                     image.shape[0], width, height, multiple)
    return np.asarray(image[top:top + height, left:left + width], np.float32)
