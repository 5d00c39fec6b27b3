"""The Plugin-Selector of Diff-Plugin (seed 002 §3.4, METHODS.md §3): which Task-Plugins a text instruction asks
for.

For an input image I, every plugin i gives its visual prompt F^p_i (B, N, D) (editdiff/heads/task_plugin.py);
the instruction T is encoded by the frozen CLIP text tower (its pooled, projected embedding EncT(T)). Eq. 4-5:

    v_i = VP(maxpool_tokens(F^p_i))          the shared visual projection head (Dense), over tokens' max
    q = TP(EncT(T))                          the textual projection head (Dense)
    s_i = cos(v_i, q)                        one score per plugin
    selected = {P_i | s_i >= theta}          theta = 0 in the paper; run in descending score order
                                             (its metrics count s > theta: the same but at s = theta)

Training (eq. 6), with F^p of the image's own plugin as the pseudo label: each anchor v_i (its task i_c) is
paired with K = N + 1 instructions, its positive q_j and N negatives from other tasks, and

    l_{i,j} = -log( exp(s(v_i, q_j) / tau) / sum_k 1[k_c != i_c] exp(s(v_i, q_k) / tau) )

The denominator, as eq. 6 writes it, sums over the negatives only (the decoupled form); `contrastive_loss`'s
`include_positive=True` gives the usual InfoNCE denominator over all K. 1 / tau = exp(logit_scale), a learned
scalar initialised to log(1 / 0.07) and clamped at log(100), as CLIP's.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp; eq. 6's form is unbounded below without it


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


class PluginSelector(nnx.Module):
    """VP (prompt_width -> embed_dim), TP (text_width -> embed_dim) and the logit scale. The authors': 768 ->
    768 both (SD-1.x's context width, CLIP ViT-L/14's text projection)."""

    def __init__(self, prompt_width: int, text_width: int, embed_dim: int, *, rngs: nnx.Rngs):
        self.visual_projection = nnx.Linear(prompt_width, embed_dim, rngs=rngs)
        self.text_projection = nnx.Linear(text_width, embed_dim, rngs=rngs)
        self.logit_scale = nnx.Param(jnp.asarray(INITIAL_LOGIT_SCALE, jnp.float32))

    def visual_embeddings(self, prompts: jax.Array) -> jax.Array:
        """(..., N, prompt_width) visual prompt tokens -> (..., embed_dim) unit v = VP(max over tokens)."""
        return _unit(self.visual_projection(jnp.max(prompts.astype(jnp.float32), axis=-2)))

    def text_embeddings(self, texts: jax.Array) -> jax.Array:
        """(..., text_width) pooled CLIP text embeddings -> (..., embed_dim) unit q = TP(EncT(T))."""
        return _unit(self.text_projection(texts.astype(jnp.float32)))

    def scores(self, texts: jax.Array, prompts: jax.Array) -> jax.Array:
        """(B, P) cosine similarities s of each instruction (B, text_width) with each plugin's visual prompt
        (P, N, prompt_width) of the same image, or per instruction (B, P, N, prompt_width)."""
        q, v = self.text_embeddings(texts), self.visual_embeddings(prompts)
        return jnp.einsum("bd,pd->bp", q, v) if v.ndim == 2 else jnp.einsum("bd,bpd->bp", q, v)


def contrastive_loss(anchors: jax.Array, texts: jax.Array, positive: jax.Array, logit_scale: jax.Array, *,
                     include_positive: bool = False) -> jax.Array:
    """Eq. 6 averaged over the anchors' positive pairs. anchors (B, E) unit v_i; texts (B, K, E) unit q_k, the
    K instructions paired with anchor i; positive (B, K) bool, True where k_c = i_c (at least one per row and
    one negative). The denominator sums over the negatives (eq. 6), or over all K with `include_positive`;
    1 / tau = exp(logit_scale), clamped at 100."""
    logits = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE)) * jnp.einsum("be,bke->bk", anchors, texts)
    denominator = jnp.where(jnp.ones_like(positive) if include_positive else ~positive, logits, -jnp.inf)
    per_pair = jax.nn.logsumexp(denominator, axis=-1, keepdims=True) - logits
    return jnp.sum(jnp.where(positive, per_pair, 0.0)) / jnp.sum(positive)


def selected_plugins(scores: np.ndarray, names: list[str], threshold: float = 0.0) -> list[tuple[str, float]]:
    """Eq. 5 for one instruction: [(plugin name, score)] of every plugin with score >= threshold, highest
    first (the order they run in). Empty when none matches: the caller says so and edits nothing."""
    chosen = [(name, float(s)) for name, s in zip(names, np.asarray(scores)) if s >= threshold]
    return sorted(chosen, key=lambda pair: -pair[1])
