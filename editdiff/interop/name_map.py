"""An explicit, checked correspondence between Flax NNX parameters and PyTorch state-dict keys.

Each model's interop module lists one `Rule` per parameter (no regex guessing): which Flax path, which
PyTorch key, and how the tensor layout differs. Loading checks the whole correspondence before it writes a
single value: every PyTorch key missing from the file, every key in the file that no rule reads, and every
tensor whose shape disagrees is listed in one CheckpointError.
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from editdiff.interop.torch_io import CheckpointError

FlaxPath = tuple  # e.g. ("down_blocks", 0, "resnets", 1, "conv1", "kernel")


class Layout(enum.Enum):
    """How a PyTorch tensor is laid out relative to its Flax counterpart."""

    SAME = "same"  # biases, norm weight <-> scale, embeddings, raw parameters
    LINEAR = "linear"  # torch (out, in) <-> flax (in, out)
    CONV = "conv"  # torch (out, in, kh, kw) <-> flax (kh, kw, in, out)
    LINEAR_FROM_CONV1X1 = "linear_from_conv1x1"  # torch (out, in, 1, 1) <-> flax dense (in, out)

    def to_flax(self, t: np.ndarray) -> np.ndarray:
        if self is Layout.LINEAR:
            return t.T
        if self is Layout.CONV:
            return t.transpose(2, 3, 1, 0)
        if self is Layout.LINEAR_FROM_CONV1X1:
            return t[:, :, 0, 0].T
        return t

    def to_torch(self, f: np.ndarray) -> np.ndarray:
        if self is Layout.LINEAR:
            return f.T
        if self is Layout.CONV:
            return f.transpose(3, 2, 0, 1)
        if self is Layout.LINEAR_FROM_CONV1X1:
            return f.T[:, :, None, None]
        return f


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter: Flax path <-> PyTorch key, with the layout conversion between them."""

    flax_path: FlaxPath
    torch_key: str
    layout: Layout = Layout.SAME


def conv_rules(flax_path: FlaxPath, torch_prefix: str) -> list[Rule]:
    """An nnx.Conv (kernel, bias) <-> a torch Conv2d (`prefix.weight`, `prefix.bias`)."""
    return [Rule((*flax_path, "kernel"), f"{torch_prefix}.weight", Layout.CONV),
            Rule((*flax_path, "bias"), f"{torch_prefix}.bias")]


def dense_rules(flax_path: FlaxPath, torch_prefix: str, *, bias: bool = True,
                layout: Layout = Layout.LINEAR) -> list[Rule]:
    """An nnx.Linear <-> a torch Linear (or, with Layout.LINEAR_FROM_CONV1X1, a 1x1 Conv2d)."""
    rules = [Rule((*flax_path, "kernel"), f"{torch_prefix}.weight", layout)]
    return rules + [Rule((*flax_path, "bias"), f"{torch_prefix}.bias")] if bias else rules


def norm_rules(flax_path: FlaxPath, torch_prefix: str) -> list[Rule]:
    """An nnx GroupNorm / LayerNorm (scale, bias) <-> torch's (`prefix.weight`, `prefix.bias`)."""
    return [Rule((*flax_path, "scale"), f"{torch_prefix}.weight"), Rule((*flax_path, "bias"), f"{torch_prefix}.bias")]


def flax_params(model: nnx.Module) -> dict[FlaxPath, nnx.Variable]:
    """The model's nnx.Param variables by path."""
    return {tuple(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _check_rules_cover_model(params: Mapping[FlaxPath, nnx.Variable], rules: Iterable[Rule]) -> None:
    ruled = [r.flax_path for r in rules]
    unruled = sorted(set(params) - set(ruled), key=str)
    unknown = sorted(set(ruled) - set(params), key=str)
    if unruled or unknown:
        raise CheckpointError(
            "name map out of date with the model: "
            f"parameters without a rule {unruled[:20]}; rules for no parameter {unknown[:20]}")


def load_state_dict(model: nnx.Module, state_dict: Mapping[str, np.ndarray], rules: list[Rule], *,
                    source: str, ignore: Iterable[str] = ()) -> None:
    """Writes `state_dict` into `model`'s parameters in place, converting layouts per rule.

    `model` may be abstract (built under nnx.eval_shape): every parameter is then replaced by a concrete array.

    `ignore` names PyTorch keys that may be present and are deliberately unused (non-persistent buffers that
    old checkpoints still carry). Raises CheckpointError naming `source` with every missing, unexpected and
    mis-shaped key before any parameter is changed.
    """
    params = flax_params(model)
    _check_rules_cover_model(params, rules)
    ignore = set(ignore)
    wanted = {r.torch_key for r in rules}
    missing = sorted(wanted - set(state_dict))
    unexpected = sorted(set(state_dict) - wanted - ignore)
    converted, misshaped = {}, []
    for rule in rules:
        if rule.torch_key not in state_dict:
            continue
        value = rule.layout.to_flax(np.asarray(state_dict[rule.torch_key]))
        expected = tuple(params[rule.flax_path].get_value().shape)
        if value.shape != expected:
            misshaped.append(f"{rule.torch_key}: file {tuple(state_dict[rule.torch_key].shape)} "
                             f"-> {value.shape}, model {expected}")
        else:
            converted[rule.flax_path] = value
    if missing or unexpected or misshaped:
        lines = [f"{source}: checkpoint does not match the model"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped tensors ({len(misshaped)}): " + "; ".join(misshaped))
        raise CheckpointError("\n".join(lines))
    for path, value in converted.items():
        var = params[path]
        # set_value (not var[...] =) also fills an abstract model from nnx.eval_shape, which skips random init.
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))


def export_state_dict(model: nnx.Module, rules: list[Rule]) -> dict[str, np.ndarray]:
    """The model's parameters as a PyTorch-layout state dict of float32 numpy arrays, one key per rule."""
    params = flax_params(model)
    _check_rules_cover_model(params, rules)
    return {r.torch_key: np.ascontiguousarray(r.layout.to_torch(np.asarray(params[r.flax_path][...], np.float32)))
            for r in rules}
