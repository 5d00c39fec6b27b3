"""modulated_conv2d: equal to the materialised per-sample kernels (values and gradients), exact zeros for zero
offsets, nothing per sample kept for the backward pass, and the ModulatedConv layer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.nn.layers import ModulatedConv, conv2d
from editdiff.nn.modulated_conv import (materialised_modulated_conv2d, modulated_conv2d, offset_shapes,
                                        submodulation)

# (kernel size, strides, padding, (H, W)): odd sizes, stride 2 (diffusers' Downsample2D pads 1 on every side,
# the VAE's pads bottom/right only), flax's padding forms.
CASES = {
    "3x3_same_odd": (3, 1, "SAME", (7, 9)),
    "3x3_explicit_stride2_odd": (3, 2, ((1, 1), (1, 1)), (9, 7)),
    "3x3_int_padding_stride2_even": (3, 2, 1, (8, 6)),
    "3x3_same_stride2_odd": (3, 2, "SAME", (7, 7)),
    "3x3_bottom_right_stride2": (3, (2, 2), ((0, 1), (0, 1)), (8, 8)),
    "3x3_valid": (3, 1, "VALID", (6, 5)),
    "1x1": (1, 1, "SAME", (5, 7)),
    "1x1_stride2": (1, 2, 0, (5, 6)),
}


def _operands(kernel_size, shape, batch=3, cin=5, cout=6, seed=0):
    """Inputs scaled so outputs are O(1); every sample has its own offsets."""
    rng = np.random.default_rng(seed)
    normal = lambda *s, scale=1.0: jnp.asarray(scale * rng.standard_normal(s), jnp.float32)
    x = normal(batch, *shape, cin)
    kernel = normal(kernel_size, kernel_size, cin, cout, scale=1 / np.sqrt(kernel_size ** 2 * cin))
    a_shape, b_shape = offset_shapes(batch, kernel.shape)
    return x, kernel, normal(*a_shape, scale=0.7), normal(*b_shape, scale=0.7)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_materialised_kernels(name):
    kernel_size, strides, padding, shape = CASES[name]
    x, kernel, a, b = _operands(kernel_size, shape)
    got = modulated_conv2d(x, kernel, a, b, strides=strides, padding=padding)
    want = materialised_modulated_conv2d(x, kernel, a, b, strides=strides, padding=padding)
    plain = modulated_conv2d(x, kernel, jnp.zeros_like(a), jnp.zeros_like(b), strides=strides, padding=padding)
    assert got.shape == want.shape == plain.shape
    assert float(jnp.abs(want - plain).max()) > 0.1  # the offsets matter
    print(f"{name}: max abs error vs materialised kernels {float(jnp.abs(got - want).max()):.2g}")
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["3x3_same_odd", "3x3_explicit_stride2_odd", "1x1"])
def test_gradients_match_materialised_kernels(name):
    kernel_size, strides, padding, shape = CASES[name]
    x, kernel, a, b = _operands(kernel_size, shape, seed=1)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(
        materialised_modulated_conv2d(x, kernel, a, b, strides=strides, padding=padding).shape), jnp.float32)

    def grads(conv):
        loss = lambda x, kernel, a, b: jnp.sum(conv(x, kernel, a, b, strides=strides, padding=padding) * cotangent)
        return jax.grad(loss, argnums=(0, 1, 2, 3))(x, kernel, a, b)

    for wrt, got, want in zip(("x", "kernel", "a", "b"), grads(modulated_conv2d), grads(materialised_modulated_conv2d)):
        scale = max(1.0, float(jnp.abs(want).max()))  # the kernel's gradient sums over batch and positions
        print(f"{name} d/d{wrt}: max abs error {float(jnp.abs(got - want).max()):.2g} (scale {scale:.3g})")
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5 * scale, err_msg=wrt)


def test_zero_offsets_add_exact_zeros():
    x, kernel, a, b = _operands(3, (6, 6))
    plain = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    got = modulated_conv2d(x, kernel, jnp.zeros_like(a), jnp.zeros_like(b))
    assert jnp.array_equal(got, plain)


def test_backward_keeps_no_per_sample_kernels():
    x, kernel, a, b = _operands(3, (8, 8), batch=4, cin=16, cout=32)

    def kept_bytes(conv):
        residuals = jax.eval_shape(lambda x, a, b: jax.vjp(lambda x, a, b: conv(x, kernel, a, b), x, a, b)[1], x, a, b)
        return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(residuals))

    inputs_bytes = sum(t.size * t.dtype.itemsize for t in (x, kernel, a, b))
    per_sample_kernels = 4 * kernel.size * kernel.dtype.itemsize
    assert kept_bytes(modulated_conv2d) <= inputs_bytes
    assert kept_bytes(materialised_modulated_conv2d) >= per_sample_kernels


def test_wrong_offset_shapes_are_an_error_naming_the_expected_shapes():
    x, kernel, a, b = _operands(3, (6, 6))
    with pytest.raises(ValueError, match=r"expected a \(3, 3, 3, 5\), b \(3, 3, 3, 6\)"):
        modulated_conv2d(x, kernel, a[:, :1], b)


def test_modulated_conv_layer_matches_function_and_is_exact_for_zero_offsets():
    conv = conv2d(5, 6, 3, stride=2, padding=1, modulated=True, rngs=nnx.Rngs(0))
    assert isinstance(conv, ModulatedConv)
    x, _, a, b = _operands(3, (9, 8))
    want = modulated_conv2d(x, conv.kernel[...], a, b, strides=2, padding=1) + conv.bias[...]
    np.testing.assert_allclose(np.asarray(conv(x, (a, b))), np.asarray(want), rtol=0, atol=1e-5)
    assert jnp.array_equal(conv(x, (jnp.zeros_like(a), jnp.zeros_like(b))), conv(x))


def test_submodulation_strips_the_prefix():
    offsets = (jnp.zeros(1), jnp.zeros(1))
    modulation = {("up_blocks", 0, "resnets", 1, "conv1"): offsets, ("mid_block", "resnets", 0, "conv2"): offsets}
    assert submodulation(modulation, "up_blocks", 0) == {("resnets", 1, "conv1"): offsets}
    assert submodulation(modulation, "up_blocks", 1) is None
    assert submodulation(None, "mid_block") is None
