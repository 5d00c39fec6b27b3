"""editdiff.nn.layers.GroupNorm against torch.nn.GroupNorm: the same result and gradients (max abs errors
printed), float32 statistics under a bfloat16 compute dtype, and a clear error for channels that do not split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from editdiff.nn.layers import GroupNorm


def _pair(shape, groups, eps=1e-5, seed=0):
    """Ours and torch's GroupNorm with the same random scale and bias, and an input of `shape` (B, ..., C)."""
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    ours = GroupNorm(channels, groups=groups, eps=eps, rngs=nnx.Rngs(0))
    theirs = torch.nn.GroupNorm(groups, channels, eps=eps)
    scale, bias = rng.standard_normal(channels).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    ours.scale[...], ours.bias[...] = jnp.asarray(scale), jnp.asarray(bias)
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(scale))
        theirs.bias.copy_(torch.from_numpy(bias))
    x = (3.0 * rng.standard_normal(shape) + 2.0).astype(np.float32)  # an offset mean: the two-pass variance matters
    return ours, theirs, x


def _channels_first(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).requires_grad_(True)


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 32), 8), ((3, 6, 10, 12), 3), ((2, 7, 16), 16)])
def test_result_and_gradients_match_torch(shape, groups):
    ours, theirs, x = _pair(shape, groups)
    cotangent = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def loss(module, x):
        return jnp.sum(module(x) * cotangent)

    y = ours(jnp.asarray(x))
    grads_x, grads_params = jax.grad(lambda x, m: loss(m, x), argnums=(0, 1))(jnp.asarray(x), ours)
    x_torch = _channels_first(x)
    y_torch = theirs(x_torch)
    (y_torch * _channels_first(cotangent).detach()).sum().backward()
    errors = {
        "output": np.abs(np.asarray(y) - np.moveaxis(y_torch.detach().numpy(), 1, -1)).max(),
        "d input": np.abs(np.asarray(grads_x) - np.moveaxis(x_torch.grad.numpy(), 1, -1)).max(),
        "d scale": np.abs(np.asarray(grads_params.scale[...]) - theirs.weight.grad.numpy()).max(),
        "d bias": np.abs(np.asarray(grads_params.bias[...]) - theirs.bias.grad.numpy()).max(),
    }
    print(f"GroupNorm {shape}, {groups} groups, max abs error vs torch: "
          + ", ".join(f"{name} {error:.1e}" for name, error in errors.items()))
    assert errors["output"] < 1e-5 and errors["d input"] < 1e-4
    assert errors["d scale"] < 1e-4 and errors["d bias"] < 1e-4  # sums over B*H*W terms of size ~3


def test_bfloat16_compute_keeps_float32_statistics():
    """A large common offset: bfloat16 statistics would lose the per-pixel differences; float32 ones keep them."""
    ours, theirs, x = _pair((2, 4, 4, 8), 2)
    x = x + 100.0
    ours.dtype = jnp.bfloat16
    y = ours(jnp.asarray(x, jnp.bfloat16))
    reference = theirs(_channels_first(x.astype(jnp.bfloat16).astype(np.float32))).detach().numpy()
    assert y.dtype == jnp.bfloat16
    error = np.abs(np.asarray(y, np.float32) - np.moveaxis(reference, 1, -1)).max()
    print(f"bfloat16 GroupNorm, max abs error vs torch float32 on the same input: {error:.2e}")
    assert error < 0.05


def test_channels_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="12 channels do not split into 5 groups"):
        GroupNorm(12, groups=5, eps=1e-5, rngs=nnx.Rngs(0))
