"""The FID Inception-V3 (`pt_inception-2015-12-05`): 2048-d pool3 features as pytorch-fid computes them.

This is the TensorFlow 2015 graph that FID was defined with, in torchvision's Inception3 layout with
pytorch-fid's changes: 1008 logits, average pools that exclude padding (FIDInceptionA/C/E_1) and a max pool
in the last block's pool branch (FIDInceptionE_2). Attribute names follow torchvision's, so a module at
`Mixed_6b.branch7x7_2` reads the state-dict keys `Mixed_6b.branch7x7_2.{conv,bn}.*`.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from editdiff.interop.name_map import Layout, Rule, load_state_dict
from editdiff.tracing import abstract_module
from eval import weights
from eval.nets.layers import FrozenBatchNorm, avg_pool_exclude_padding, max_pool

INPUT_SIZE = 299
FEATURE_DIM = 2048
_BN_EPS = 1e-3  # torchvision BasicConv2d


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def resize_bilinear(images: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, size, size, C) as torch's interpolate(mode="bilinear", align_corners=False) does:
    half-pixel centres and no antialiasing filter when shrinking."""
    images = jnp.asarray(images, jnp.float32)
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bilinear", antialias=False)


class BasicConv(nnx.Module):
    """conv (no bias) -> batch norm -> ReLU, torchvision's BasicConv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel, *, stride: int = 1, padding=0, dtype,
                 rngs: nnx.Rngs):
        pad_h, pad_w = _pair(padding)
        self.conv = nnx.Conv(in_channels, out_channels, _pair(kernel), stride, padding=((pad_h, pad_h), (pad_w, pad_w)),
                             use_bias=False, dtype=dtype, rngs=rngs)
        self.bn = FrozenBatchNorm(out_channels, eps=_BN_EPS)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.bn(self.conv(x)))


class InceptionA(nnx.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (pool_features)."""

    def __init__(self, cin: int, pool_features: int, *, dtype, rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.branch1x1 = conv(cin, 64, 1)
        self.branch5x5_1 = conv(cin, 48, 1)
        self.branch5x5_2 = conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = conv(cin, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, padding=1)
        self.branch_pool = conv(cin, pool_features, 1)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool_exclude_padding(x)),
        ], axis=-1)


class InceptionB(nnx.Module):
    """35 -> 17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, *, dtype, rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.branch3x3 = conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = conv(cin, 64, 1)
        self.branch3x3dbl_2 = conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = conv(96, 96, 3, stride=2)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            max_pool(x, 3, 2),
        ], axis=-1)


class InceptionC(nnx.Module):
    """17x17 block with factorised 7x7 convolutions of width c7."""

    def __init__(self, cin: int, c7: int, *, dtype, rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.branch1x1 = conv(cin, 192, 1)
        self.branch7x7_1 = conv(cin, c7, 1)
        self.branch7x7_2 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = conv(cin, c7, 1)
        self.branch7x7dbl_2 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = conv(cin, 192, 1)

    def __call__(self, x):
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(avg_pool_exclude_padding(x)),
        ], axis=-1)


class InceptionD(nnx.Module):
    """17 -> 8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, cin: int, *, dtype, rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.branch3x3_1 = conv(cin, 192, 1)
        self.branch3x3_2 = conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = conv(cin, 192, 1)
        self.branch7x7x3_2 = conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = conv(192, 192, 3, stride=2)

    def __call__(self, x):
        return jnp.concatenate([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
            max_pool(x, 3, 2),
        ], axis=-1)


class InceptionE(nnx.Module):
    """8x8 block with split 1x3 / 3x1 outputs; `pool` is "avg" (FIDInceptionE_1) or "max" (FIDInceptionE_2)."""

    def __init__(self, cin: int, pool: str, *, dtype, rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.pool = pool
        self.branch1x1 = conv(cin, 320, 1)
        self.branch3x3_1 = conv(cin, 384, 1)
        self.branch3x3_2a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = conv(cin, 448, 1)
        self.branch3x3dbl_2 = conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = conv(cin, 192, 1)

    def __call__(self, x):
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = max_pool(x, 3, 1, padding=1) if self.pool == "max" else avg_pool_exclude_padding(x)
        return jnp.concatenate([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], axis=-1)


class FIDInceptionV3(nnx.Module):
    """(B, H, W, 3) images in [-1, 1] -> (B, 2048) pool3 features.

    Inputs are resized to 299x299 (bilinear, no antialiasing: torch's interpolate with align_corners=False,
    as pytorch-fid does) unless `resize=False`, which runs the network on the given size (at least 75x75).
    """

    def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
        conv = lambda *a, **k: BasicConv(*a, dtype=dtype, rngs=rngs, **k)  # noqa: E731
        self.Conv2d_1a_3x3 = conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = conv(32, 32, 3)
        self.Conv2d_2b_3x3 = conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = conv(64, 80, 1)
        self.Conv2d_4a_3x3 = conv(80, 192, 3)
        blocks = dict(dtype=dtype, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, **blocks)
        self.Mixed_5c = InceptionA(256, 64, **blocks)
        self.Mixed_5d = InceptionA(288, 64, **blocks)
        self.Mixed_6a = InceptionB(288, **blocks)
        self.Mixed_6b = InceptionC(768, 128, **blocks)
        self.Mixed_6c = InceptionC(768, 160, **blocks)
        self.Mixed_6d = InceptionC(768, 160, **blocks)
        self.Mixed_6e = InceptionC(768, 192, **blocks)
        self.Mixed_7a = InceptionD(768, **blocks)
        self.Mixed_7b = InceptionE(1280, "avg", **blocks)
        self.Mixed_7c = InceptionE(2048, "max", **blocks)

    def __call__(self, images: jax.Array, *, resize: bool = True) -> jax.Array:
        x = resize_bilinear(images, INPUT_SIZE) if resize else jnp.asarray(images, jnp.float32)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = max_pool(x, 3, 2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _basic_conv_rules(prefix: tuple) -> list[Rule]:
    key = ".".join(prefix)
    return [Rule(prefix + ("conv", "kernel"), f"{key}.conv.weight", Layout.CONV),
            *[Rule(prefix + ("bn", name), f"{key}.bn.{name}") for name in
              ("weight", "bias", "running_mean", "running_var")]]


def inception_rules(model: FIDInceptionV3) -> list[Rule]:
    """One conv + four batch-norm rules per BasicConv, keyed by its torchvision attribute path.

    The Flax attribute names are torchvision's, so each BasicConv's path is its key prefix; whether the file
    has exactly these keys, with these shapes, is what `load_state_dict` then checks.
    """
    prefixes = [tuple(path[:-2]) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))
                if path[-2:] == ("conv", "kernel")]
    return [rule for prefix in prefixes for rule in _basic_conv_rules(prefix)]


def unused_inception_keys(state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Tensors in the file FID never reads: the 1008-way classifier and BatchNorm's step counters."""
    return ["fc.weight", "fc.bias"] + [k for k in state_dict if k.endswith(".bn.num_batches_tracked")]


def inception_from_state_dict(state_dict: Mapping[str, np.ndarray], *, source: str,
                              dtype=jnp.float32) -> FIDInceptionV3:
    """FIDInceptionV3 holding `state_dict`; any missing, extra or mis-shaped tensor is a CheckpointError."""
    # Abstract (eval_shape) construction skips random initialisers; loading makes every parameter concrete.
    model = abstract_module(lambda: FIDInceptionV3(dtype=dtype, rngs=nnx.Rngs(0)))
    load_state_dict(model, state_dict, inception_rules(model), source=source,
                    ignore=unused_inception_keys(state_dict))
    return model


def load_inception(weights_dir, *, dtype=jnp.float32) -> FIDInceptionV3:
    """FIDInceptionV3 from `weights_dir/pt_inception-2015-12-05-6726825d.pth` (pytorch-fid's release file)."""
    filename, url = weights.INCEPTION_FILE
    state, path = weights.read_weights_file(weights_dir, filename, purpose="FID / KID Inception features", url=url)
    return inception_from_state_dict(state, source=path, dtype=dtype)
