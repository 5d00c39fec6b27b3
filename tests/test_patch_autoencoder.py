"""PatchAutoencoder: exact inverse, shapes, documented channel order, no parameters, bad shapes named."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.nn.patch_autoencoder import PatchAutoencoder


def _image(shape=(2, 8, 12, 3), seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_encode_then_decode_is_the_identity(factor):
    ae = PatchAutoencoder(factor)
    x = _image()
    posterior = ae.encode(x)
    np.testing.assert_array_equal(np.asarray(ae.decode(posterior.mean)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(ae.decode(posterior.sample(jax.random.key(1)))), np.asarray(x))


def test_decode_then_encode_is_the_identity():
    ae = PatchAutoencoder(2)
    z = _image((2, 3, 5, 12))
    np.testing.assert_array_equal(np.asarray(ae.encode(ae.decode(z)).mode()), np.asarray(z))


def test_shapes_and_attributes():
    ae = PatchAutoencoder(4)
    posterior = ae.encode(_image((2, 8, 12, 3)))
    assert posterior.mean.shape == posterior.logvar.shape == (2, 2, 3, 48)
    assert (ae.latent_channels, ae.downsample_factor, ae.scaling_factor) == (48, 4, 1.0)
    assert ae.decode(posterior.mean).shape == (2, 8, 12, 3)


def test_channel_order_is_position_major():
    """Latent channel (i * f + j) * 3 + c at (y, x) is pixel (y * f + i, x * f + j), colour c."""
    f = 2
    x = np.asarray(_image((1, 4, 6, 3)))
    z = np.asarray(PatchAutoencoder(f).encode(jnp.asarray(x)).mean)
    for y, xx, i, j, c in [(0, 0, 0, 0, 0), (0, 0, 0, 1, 2), (1, 2, 1, 0, 1), (1, 1, 1, 1, 2)]:
        assert z[0, y, xx, (i * f + j) * 3 + c] == x[0, y * f + i, xx * f + j, c]
    np.testing.assert_array_equal(z[..., :3], x[:, ::f, ::f, :])


def test_posterior_is_a_point_mass():
    posterior = PatchAutoencoder(2).encode(_image())
    np.testing.assert_array_equal(np.asarray(posterior.logvar), 0.0)
    np.testing.assert_array_equal(np.asarray(posterior.std), 0.0)
    np.testing.assert_array_equal(np.asarray(posterior.kl()), np.zeros(2))


def test_has_no_parameters_and_jits():
    ae = PatchAutoencoder(2)
    assert not jax.tree.leaves(nnx.state(ae, nnx.Param))
    x = _image()
    roundtrip = nnx.jit(lambda model, images: model.decode(model.encode(images).mean))
    np.testing.assert_array_equal(np.asarray(roundtrip(ae, x)), np.asarray(x))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="factor=0"):
        PatchAutoencoder(0)
    with pytest.raises(ValueError, match=r"\(2, 7, 12, 3\)"):
        PatchAutoencoder(2).encode(_image((2, 7, 12, 3)))
    with pytest.raises(ValueError, match=r"expected \(B, h, w, 12\)"):
        PatchAutoencoder(2).decode(_image((2, 3, 3, 4)))
