"""The diagonal Gaussian posterior q(z | x) that every autoencoder's `encode` returns.

Matches diffusers' `DiagonalGaussianDistribution` (log-variance clamped to [-30, 20]) in NHWC, as a pytree
so it can leave a jitted function. Statistics are float32 whatever the autoencoder's compute dtype: the latent
is the diffusion model's regression target.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@struct.dataclass
class DiagonalGaussian:
    """N(mean, exp(logvar)) per latent element; `mean` and `logvar` are (B, h, w, C).

    `deterministic=True` is a point mass at `mean` (as diffusers' flag): std and var are 0, `sample` returns
    `mean`, `kl` is 0. `logvar` is then carried only for shape and is not used.
    """

    mean: jax.Array
    logvar: jax.Array
    deterministic: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def from_moments(cls, moments: jax.Array) -> "DiagonalGaussian":
        """Splits an encoder output (B, h, w, 2C) along channels into mean (first C) and log-variance."""
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return cls(mean=mean, logvar=jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))

    @property
    def std(self) -> jax.Array:
        if self.deterministic:
            return jnp.zeros_like(self.mean)
        return jnp.exp(0.5 * self.logvar)

    @property
    def var(self) -> jax.Array:
        if self.deterministic:
            return jnp.zeros_like(self.mean)
        return jnp.exp(self.logvar)

    def sample(self, rng: jax.Array) -> jax.Array:
        """A draw mean + std * eps, eps ~ N(0, I), shape (B, h, w, C)."""
        if self.deterministic:
            return self.mean
        return self.mean + self.std * jax.random.normal(rng, self.mean.shape, self.mean.dtype)

    def mode(self) -> jax.Array:
        return self.mean

    def kl(self) -> jax.Array:
        """KL(q || N(0, I)) summed over (h, w, C): shape (B,)."""
        if self.deterministic:
            return jnp.zeros(self.mean.shape[:1], self.mean.dtype)
        return 0.5 * jnp.sum(jnp.square(self.mean) + self.var - 1.0 - self.logvar, axis=(1, 2, 3))
