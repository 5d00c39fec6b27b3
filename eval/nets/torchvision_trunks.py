"""The convolutional trunks of torchvision's AlexNet and VGG16 (`model.features`), tapped where LPIPS reads.

Each trunk is a spec: a sequence of steps, each a conv (its index in torchvision's `features` Sequential,
which names its state-dict keys), a max pool, or a tap that emits the current ReLU output. LPIPS (Zhang et
al. 2018) reads five taps: AlexNet relu1..relu5, VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from editdiff.interop.name_map import Rule, conv_rules
from eval.nets.layers import max_pool


@dataclasses.dataclass(frozen=True)
class ConvStep:
    """A Conv2d + ReLU at `features.{torch_index}` in torchvision's Sequential."""

    torch_index: int
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 1


@dataclasses.dataclass(frozen=True)
class PoolStep:
    window: int
    stride: int


TAP = "tap"


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
    name: str
    steps: tuple
    classifier_layers: tuple[int, ...]  # `classifier.{i}` Linear layers in torchvision's file, unused here

    @property
    def convs(self) -> tuple[ConvStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, ConvStep))

    @property
    def tap_channels(self) -> tuple[int, ...]:
        channels, out = 0, []
        for step in self.steps:
            if isinstance(step, ConvStep):
                channels = step.out_channels
            elif step == TAP:
                out.append(channels)
        return tuple(out)

    def output_size(self, size: int) -> int:
        """The side of the last tapped map for a `size` x `size` input (<= 0: the input is too small)."""
        for step in self.steps:
            if isinstance(step, ConvStep):
                size = (size + 2 * step.padding - step.kernel) // step.stride + 1
            elif isinstance(step, PoolStep):
                size = (size - step.window) // step.stride + 1
            if size <= 0:
                return size
        return size

    @property
    def min_input_size(self) -> int:
        """The smallest square input every tap has a pixel for (AlexNet 31, VGG16 16)."""
        return next(size for size in range(1, 1024) if self.output_size(size) > 0)


ALEXNET = TrunkSpec(
    name="alex",
    steps=(ConvStep(0, 3, 64, 11, stride=4, padding=2), TAP,
           PoolStep(3, 2), ConvStep(3, 64, 192, 5, padding=2), TAP,
           PoolStep(3, 2), ConvStep(6, 192, 384, 3), TAP,
           ConvStep(8, 384, 256, 3), TAP,
           ConvStep(10, 256, 256, 3), TAP),
    classifier_layers=(1, 4, 6),
)

VGG16 = TrunkSpec(
    name="vgg",
    steps=(ConvStep(0, 3, 64, 3), ConvStep(2, 64, 64, 3), TAP,
           PoolStep(2, 2), ConvStep(5, 64, 128, 3), ConvStep(7, 128, 128, 3), TAP,
           PoolStep(2, 2), ConvStep(10, 128, 256, 3), ConvStep(12, 256, 256, 3), ConvStep(14, 256, 256, 3), TAP,
           PoolStep(2, 2), ConvStep(17, 256, 512, 3), ConvStep(19, 512, 512, 3), ConvStep(21, 512, 512, 3), TAP,
           PoolStep(2, 2), ConvStep(24, 512, 512, 3), ConvStep(26, 512, 512, 3), ConvStep(28, 512, 512, 3), TAP),
    classifier_layers=(0, 3, 6),
)

TRUNKS = {spec.name: spec for spec in (ALEXNET, VGG16)}


class TorchvisionTrunk(nnx.Module):
    """Runs a TrunkSpec: (B, H, W, 3) normalised images -> the tapped ReLU maps [(B, h_k, w_k, C_k)]."""

    def __init__(self, spec: TrunkSpec, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.spec = spec
        self.convs = nnx.List([
            nnx.Conv(c.in_channels, c.out_channels, (c.kernel, c.kernel), c.stride,
                     padding=((c.padding, c.padding), (c.padding, c.padding)), dtype=dtype, rngs=rngs)
            for c in spec.convs])

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps, conv_index = [], 0
        for step in self.spec.steps:
            if isinstance(step, ConvStep):
                x = jax.nn.relu(self.convs[conv_index](x))
                conv_index += 1
            elif isinstance(step, PoolStep):
                x = max_pool(x, step.window, step.stride)
            else:
                taps.append(x)
        return taps


def trunk_rules(spec: TrunkSpec) -> list[Rule]:
    """Flax path <-> torchvision `features.{i}.weight/bias` for every conv of the trunk."""
    return [rule for position, conv in enumerate(spec.convs)
            for rule in conv_rules(("convs", position), f"features.{conv.torch_index}")]


def unused_classifier_keys(spec: TrunkSpec) -> tuple[str, ...]:
    """The ImageNet classifier tensors in torchvision's file, which LPIPS never reads."""
    return tuple(f"classifier.{i}.{name}" for i in spec.classifier_layers for name in ("weight", "bias"))
