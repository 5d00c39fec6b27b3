"""LPIPS (Zhang et al. 2018, v0.1): learned perceptual distance from AlexNet or VGG16 features.

For images x, y the distance is, summed over the five tapped layers l with features f_l (B, h, w, C):
    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f_l(x) / ||f_l(x)||_c - f_l(y) / ||f_l(y)||_c)^2
(`lpips_from_features`), where ||.||_c is the L2 norm over channels at each position and w_l are the linear
heads shipped in the `lpips` package. Images go in as (B, H, W, 3) in [-1, 1] and are first shifted and
scaled per channel as the package's ScalingLayer does.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editdiff.interop.name_map import Layout, Rule, dense_rules, load_state_dict
from editdiff.tracing import abstract_module
from eval import weights
from eval.nets.torchvision_trunks import TRUNKS, TorchvisionTrunk, trunk_rules, unused_classifier_keys

# The lpips package's ScalingLayer: inputs in [-1, 1] -> ImageNet-normalised inputs.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_NORM_EPS = 1e-10  # lpips.normalize_tensor


def normalize_channels(features: jax.Array) -> jax.Array:
    """features / (L2 norm over channels + 1e-10) at every position of (B, h, w, C)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(features), axis=-1, keepdims=True))
    return features / (norm + _NORM_EPS)


def lpips_from_features(features_a: Sequence[jax.Array], features_b: Sequence[jax.Array],
                        head_weights: Sequence[jax.Array]) -> jax.Array:
    """The LPIPS sum over layers from tapped features [(B, h_l, w_l, C_l)] and head weights [(C_l,)]: -> (B,)."""
    total = 0.0
    for fa, fb, w in zip(features_a, features_b, head_weights, strict=True):
        squared = jnp.square(normalize_channels(fa.astype(jnp.float32)) - normalize_channels(fb.astype(jnp.float32)))
        total = total + jnp.mean(squared @ w.astype(jnp.float32), axis=(1, 2))
    return total


class LinearHeads(nnx.Module):
    """One bias-free 1x1 conv per tapped layer, C_l -> 1 (the package's NetLinLayer, dropout off)."""

    def __init__(self, channels: Sequence[int], *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(c, 1, use_bias=False, rngs=rngs) for c in channels])

    def weights(self) -> list[jax.Array]:
        return [layer.kernel[..., 0] for layer in self.layers]


class LPIPS(nnx.Module):
    """d(pred, target) for (B, H, W, 3) images in [-1, 1] -> (B,); `backbone` is "alex" or "vgg"."""

    def __init__(self, backbone: str = "alex", *, dtype=jnp.float32, rngs: nnx.Rngs):
        if backbone not in TRUNKS:
            raise ValueError(f"LPIPS backbone {backbone!r} is not one of {sorted(TRUNKS)}")
        self.backbone = backbone
        self.trunk = TorchvisionTrunk(TRUNKS[backbone], dtype=dtype, rngs=rngs)
        self.heads = LinearHeads(TRUNKS[backbone].tap_channels, rngs=rngs)

    def __call__(self, pred: jax.Array, target: jax.Array) -> jax.Array:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 3:
            raise ValueError(f"LPIPS needs two (B, H, W, 3) images; got {pred.shape} and {target.shape}")
        batch = pred.shape[0]
        images = jnp.concatenate([pred, target]).astype(jnp.float32)
        scaled = (images - jnp.asarray(_SHIFT)) / jnp.asarray(_SCALE)
        taps = self.trunk(scaled)
        return lpips_from_features([t[:batch] for t in taps], [t[batch:] for t in taps], self.heads.weights())


def head_rules(num_layers: int) -> list[Rule]:
    """LinearHeads <-> the package's `lin{k}.model.1.weight` (1, C, 1, 1) tensors."""
    return [rule for k in range(num_layers)
            for rule in dense_rules(("layers", k), f"lin{k}.model.1", bias=False, layout=Layout.LINEAR_FROM_CONV1X1)]


def lpips_from_state_dicts(backbone: str, trunk_state: Mapping[str, np.ndarray], head_state: Mapping[str, np.ndarray],
                           *, trunk_source: str, head_source: str, dtype=jnp.float32) -> LPIPS:
    """LPIPS holding a torchvision backbone state dict and the lpips package's head state dict.

    Every tensor of both is consumed, except the backbone's ImageNet classifier (which LPIPS never runs); any
    other missing, extra or mis-shaped key is a CheckpointError naming the source.
    """
    # Abstract (eval_shape) construction skips random initialisers; loading makes every parameter concrete.
    model = abstract_module(lambda: LPIPS(backbone, dtype=dtype, rngs=nnx.Rngs(0)))
    spec = TRUNKS[backbone]
    load_state_dict(model.trunk, trunk_state, trunk_rules(spec), source=trunk_source,
                    ignore=unused_classifier_keys(spec))
    load_state_dict(model.heads, head_state, head_rules(len(spec.tap_channels)), source=head_source)
    return model


def load_lpips(weights_dir: str | os.PathLike, backbone: str = "alex", *, dtype=jnp.float32) -> LPIPS:
    """LPIPS with torchvision's backbone file from `weights_dir` and the heads shipped in the lpips package."""
    if backbone not in TRUNKS:
        raise ValueError(f"LPIPS backbone {backbone!r} is not one of {sorted(TRUNKS)}")
    filename, url = weights.TORCHVISION_FILES[backbone]
    trunk_state, trunk_path = weights.read_weights_file(weights_dir, filename, purpose=f"LPIPS ({backbone})", url=url)
    head_state, head_path = weights.read_lpips_heads(backbone)
    return lpips_from_state_dicts(backbone, trunk_state, head_state, trunk_source=trunk_path, head_source=head_path,
                                  dtype=dtype)
