"""CLIP preprocessing in JAX against transformers' CLIPImageProcessor on scikit-image's bundled photos."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from transformers import CLIPImageProcessorPil

from editdiff.nn import clip_preprocess

# Portrait, landscape and square photos of different sizes, so that both resize orientations and odd crop
# offsets occur.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _signed(image: np.ndarray) -> jnp.ndarray:
    """A uint8 (H, W, 3) photo as a (1, H, W, 3) batch in [-1, 1]."""
    return jnp.asarray(image[None].astype(np.float32) / 127.5 - 1.0)


@pytest.mark.parametrize("size,crop_size", [(224, 224), (256, 224)])
def test_resize_center_crop_matches_clip_image_processor(size, crop_size):
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": crop_size, "width": crop_size})
    diffs = {}
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ours = np.asarray(clip_preprocess.resize_center_crop(_signed(image), size, crop_size))[0]
        assert ours.shape == expected.shape == (crop_size, crop_size, 3)
        diffs[f"{name}{image.shape[:2]}"] = float(np.mean(np.abs(ours - expected)))
    # What remains is mostly PIL's rounding of the resized image to uint8 (half a level is 0.007 here).
    print(f"\nmean abs difference to CLIPImageProcessor (normalised units), size {size} crop {crop_size}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 0.01, diffs


def test_resize_square_keeps_the_whole_image_and_normalizes():
    image = skimage.data.coffee()  # 400 x 600
    out = clip_preprocess.resize_square(_signed(image), 224)
    assert out.shape == (1, 224, 224, 3)
    # No crop: the whole frame is kept, so the mean colour survives the resize.
    unit_mean = (np.asarray(out)[0] * clip_preprocess.CLIP_STD + clip_preprocess.CLIP_MEAN).mean(axis=(0, 1))
    np.testing.assert_allclose(unit_mean, image.reshape(-1, 3).mean(axis=0) / 255.0, atol=2e-3)
    # At the target size the resize is the identity and only the normalisation remains.
    same = _signed(image[:224, :224])
    np.testing.assert_allclose(clip_preprocess.resize_square(same, 224), clip_preprocess.normalize(same), atol=1e-5)


def test_preprocessing_is_jittable_and_differentiable():
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(2, 48, 64, 3)), jnp.float32)
    loss = lambda x: jnp.sum(clip_preprocess.resize_center_crop(x, 32, 28) ** 2)
    grad = jax.jit(jax.grad(loss))(images)
    assert grad.shape == images.shape and np.isfinite(grad).all()
    assert float(jnp.abs(grad).sum()) > 0
    # The crop drops the outer columns of a landscape image: they get no gradient.
    assert float(jnp.abs(grad[:, :, :2]).max()) == 0.0


def test_crop_larger_than_the_resize_is_refused():
    with pytest.raises(ValueError, match="crop_size=256 must lie in"):
        clip_preprocess.resize_center_crop(jnp.zeros((1, 32, 32, 3)), 224, 256)
