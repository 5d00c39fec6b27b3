"""The multitask paper's mapping network f_theta: editing vector C -> cross-attention context.

Seed 000, §3 "Conditioning": "The editing vector C is passed through a mapping network f_theta to get the
features, which are in turn passed into the cross-attention layers in the denoising U-Net. The mapping network
f_theta is realized as two linear layers with an in-between sigmoid linear unit activation."

The paper does not say how one feature vector becomes a key/value *sequence*. A single token would make every
cross-attention layer a constant shift (softmax over one key is 1), so the last layer's output is split into
`num_tokens` tokens of width `context_dim` (METHODS.md §1, decision), letting each query attend to a mixture.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MappingNetwork(nnx.Module):
    """f_theta: `depth` Dense layers with SiLU between them (depth 2 is the paper's), reshaped to tokens.

    `__call__(edit_vector (B, edit_dim)) -> context (B, num_tokens, context_dim)`.
    """

    def __init__(self, edit_dim: int, context_dim: int, *, depth: int = 2, hidden_dim: int = 256,
                 num_tokens: int = 4, rngs: nnx.Rngs, dtype=jnp.float32):
        if depth < 1:
            raise ValueError(f"MappingNetwork depth must be >= 1, got {depth}")
        widths = [edit_dim] + [hidden_dim] * (depth - 1) + [num_tokens * context_dim]
        self.layers = nnx.List([nnx.Linear(w_in, w_out, dtype=dtype, rngs=rngs)
                                for w_in, w_out in zip(widths[:-1], widths[1:])])
        self.edit_dim, self.hidden_dim, self.depth = edit_dim, hidden_dim, depth
        self.num_tokens, self.context_dim = num_tokens, context_dim

    def __call__(self, edit_vector: jax.Array) -> jax.Array:
        h = edit_vector
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = jax.nn.silu(h)
            h = layer(h)
        return h.reshape(h.shape[0], self.num_tokens, self.context_dim)
