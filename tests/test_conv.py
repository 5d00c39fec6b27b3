"""The models' convolution (editdiff.nn.conv) on the CPU: XLA's result and XLA's gradients, whichever forward
form it takes (XLA's below IM2COL_FORWARD_MIN_ROWS, the im2col product for 1x1 kernels and wide inputs) and with
the im2col backward; small convolutions and the forms im2col does not cover are lax.conv_general_dilated."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from editdiff.nn import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _inputs(batch, size, cin, cout, k, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    return x, w


@pytest.mark.parametrize("cin, k, stride, padding", [
    (8, 3, 1, ((1, 1), (1, 1))),      # XLA forward
    (8, 3, 2, ((1, 1), (1, 1))),      # stride 2 on an even input, torch's symmetric padding
    (8, 4, 2, ((1, 1), (1, 1))),      # pix2pix's 4x4 kernel
    (8, 3, 1, ((0, 1), (2, 0))),      # uneven padding
    (16, 1, 1, ((0, 0), (0, 0))),     # 1x1: the im2col forward (a matmul)
    (520, 3, 1, ((1, 1), (1, 1))),    # 9 * 520 >= IM2COL_FORWARD_MIN_ROWS: the im2col forward
])
def test_result_and_gradients_are_xla_convolutions(cin, k, stride, padding, monkeypatch):
    monkeypatch.setattr(conv, "IM2COL_MIN_MACS", 0)  # the im2col forms at test sizes
    x, w = _inputs(2, 9, cin, 6, k)
    assert conv.im2col_applies(x, w, (stride, stride), padding, dimension_numbers=NHWC)
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(
        lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC).shape), jnp.float32)

    def loss(conv_fn, x, w):
        y = conv_fn(x, w, (stride, stride), padding, dimension_numbers=NHWC)
        return jnp.sum(y * cotangent), y

    (_, ours), our_grads = jax.value_and_grad(lambda x, w: loss(conv.conv_general_dilated, x, w), (0, 1),
                                              has_aux=True)(x, w)
    (_, xla), xla_grads = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w), (0, 1),
                                             has_aux=True)(x, w)
    np.testing.assert_allclose(ours, xla, rtol=1e-5, atol=1e-5)
    for our_grad, xla_grad in zip(our_grads, xla_grads):
        np.testing.assert_allclose(our_grad, xla_grad, rtol=1e-4, atol=1e-4)


def test_the_im2col_product_is_the_convolution():
    x, w = _inputs(2, 8, 8, 5, 3)
    padding = ((1, 1), (1, 1))
    expected = lax.conv_general_dilated(x, w, (2, 2), padding, dimension_numbers=NHWC)
    np.testing.assert_allclose(conv.im2col_conv(x, w, (2, 2), padding), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["string padding", "dilation", "groups", "small"])
def test_forms_outside_im2col_are_lax_convolutions(case, monkeypatch):
    if case != "small":
        monkeypatch.setattr(conv, "IM2COL_MIN_MACS", 0)
    x, w = _inputs(1, 8, 4, 4, 3)
    kwargs = dict(dimension_numbers=NHWC)
    padding = ((1, 1), (1, 1))
    if case == "string padding":
        padding = "SAME"
    elif case == "small":
        pass  # 1 * 8 * 8 * 3 * 3 * 4 * 4 multiply-adds: below IM2COL_MIN_MACS
    elif case == "dilation":
        kwargs["rhs_dilation"] = (2, 2)
    elif case == "groups":
        w = w[:, :, :2]
        kwargs["feature_group_count"] = 2
    assert not conv.im2col_applies(x, w, (1, 1), padding, **kwargs)
    np.testing.assert_array_equal(conv.conv_general_dilated(x, w, (1, 1), padding, **kwargs),
                                  lax.conv_general_dilated(x, w, (1, 1), padding, **kwargs))


def test_bfloat16_inputs_keep_their_dtype_through_forward_and_backward(monkeypatch):
    monkeypatch.setattr(conv, "IM2COL_MIN_MACS", 0)
    x, w = _inputs(1, 6, 4, 4, 3)
    x, w = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    f = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    y, (gx, gw) = f(x, w), jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32)), (0, 1))(x, w)
    assert y.dtype == gx.dtype == gw.dtype == jnp.bfloat16
