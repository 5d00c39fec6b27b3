"""The latent space every latent-diffusion method works in, for any autoencoder of the shared interface
(`encode(x).mean`, `decode(z)`, `scaling_factor`): the SD VAE or the patch autoencoder."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


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
