"""Similarity of embeddings (CLIP image/text features, identity features): cosine similarity per pair."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cosine_similarity(a: jax.Array, b: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """cos(a_i, b_i) for embeddings (B, D) x 2 -> (B,); a zero vector gives 0, not NaN."""
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape:
        raise ValueError(f"embeddings must have the same shape; got {a.shape} and {b.shape}")
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, eps)
