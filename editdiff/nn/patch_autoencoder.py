"""A parameter-free autoencoder: pixel-unshuffle by a factor f, for diffusion runs without pretrained weights.

Latent channel order (position-major): latent channel `k = (i * f + j) * 3 + c` at latent position (y, x)
holds image pixel (y * f + i, x * f + j), colour c. So `z[..., :3]` is the image subsampled at the top-left
pixel of each f x f patch. (torch's `pixel_unshuffle` is channel-major, `k = c * f * f + i * f + j`; this
order keeps each pixel's RGB together, as patch embeddings in JAX usually do.)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.nn.diagonal_gaussian import DiagonalGaussian

IMAGE_CHANNELS = 3


class PatchAutoencoder(nnx.Module):
    """encode: (B, H, W, 3) -> point-mass posterior over (B, H/f, W/f, 3 f^2); decode is its exact inverse."""

    scaling_factor = 1.0

    def __init__(self, factor: int):
        if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
            raise ValueError(f"PatchAutoencoder factor={factor!r}: must be a positive int")
        self.factor = factor
        self.downsample_factor = factor
        self.latent_channels = IMAGE_CHANNELS * factor * factor

    def encode(self, x: jax.Array) -> DiagonalGaussian:
        """x (B, H, W, 3), H and W multiples of f -> posterior with mean (B, H/f, W/f, 3 f^2), logvar 0.

        Deterministic: `.sample(rng)` and `.mode()` both return the unshuffled image exactly.
        """
        b, h, w, c = x.shape
        f = self.factor
        if c != IMAGE_CHANNELS or h % f or w % f:
            raise ValueError(f"PatchAutoencoder(factor={f}).encode: image shape {x.shape}; expected "
                             f"(B, H, W, {IMAGE_CHANNELS}) with H and W multiples of {f}")
        patches = x.reshape(b, h // f, f, w // f, f, c).transpose(0, 1, 3, 2, 4, 5)
        mean = patches.reshape(b, h // f, w // f, f * f * c)
        return DiagonalGaussian(mean=mean, logvar=jnp.zeros_like(mean), deterministic=True)

    def decode(self, z: jax.Array) -> jax.Array:
        """z (B, h, w, 3 f^2) -> image (B, h f, w f, 3): the inverse of `encode`."""
        b, h, w, k = z.shape
        f = self.factor
        if k != self.latent_channels:
            raise ValueError(f"PatchAutoencoder(factor={f}).decode: latent shape {z.shape}; expected "
                             f"(B, h, w, {self.latent_channels})")
        patches = z.reshape(b, h, w, f, f, IMAGE_CHANNELS).transpose(0, 1, 3, 2, 4, 5)
        return patches.reshape(b, h * f, w * f, IMAGE_CHANNELS)
