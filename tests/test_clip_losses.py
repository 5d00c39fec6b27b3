"""Normalised CLIP embeddings, cosine similarity and the directional CLIP loss, on tiny random towers."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from editdiff.nn import clip_losses, clip_preprocess
from editdiff.nn.clip import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

IMAGE_SIZE = 32
preprocess = functools.partial(clip_preprocess.resize_center_crop, size=IMAGE_SIZE)

# Jitted once per module: eager calls would compile every op on its own.
text_direction = nnx.jit(clip_losses.text_direction)
text_embeds = nnx.jit(lambda model, ids: model(ids).text_embeds)
image_embeds = nnx.jit(lambda model, images: model(preprocess(images)).image_embeds)


@pytest.fixture(scope="module")
def towers():
    vision = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=48, projection_dim=16,
                                              num_hidden_layers=2, num_attention_heads=4, image_size=IMAGE_SIZE,
                                              patch_size=8), rngs=nnx.Rngs(0))
    text = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=32, intermediate_size=48, projection_dim=16,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=8,
                                        bos_token_id=62, eos_token_id=63, pad_token_id=63), rngs=nnx.Rngs(1))
    return vision, text


def _prompts(seed: int, templates: int = 3) -> jnp.ndarray:
    """(templates, 8) token ids: bos, random tokens, eos padding."""
    ids = np.random.default_rng(seed).integers(0, 62, size=(templates, 8))
    ids[:, 0], ids[:, 5:] = 62, 63
    return jnp.asarray(ids, jnp.int32)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_normalized_and_cosine_similarity():
    x = jnp.asarray([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(clip_losses.normalized(x), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    # A vanishing vector has a finite gradient (an edit that has not moved yet must not give NaN).
    assert np.isfinite(jax.grad(lambda v: clip_losses.normalized(v).sum())(jnp.zeros(3))).all()
    a, b = jnp.asarray([[1.0, 0.0], [1.0, 1.0]]), jnp.asarray([[0.0, 2.0], [-2.0, -2.0]])
    np.testing.assert_allclose(clip_losses.cosine_similarity(a, b), [0.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(clip_losses.direction_loss(a, b), [1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(clip_losses.direction_loss(a, a), [0.0, 0.0], atol=1e-6)


def test_fill_templates():
    assert clip_losses.fill_templates("cat", ("a photo of a {}.", "a {} in the snow")) == [
        "a photo of a cat.", "a cat in the snow"]
    assert len(clip_losses.fill_templates("dog")) == len(clip_losses.PROMPT_TEMPLATES)


def test_text_direction_averages_normalised_template_differences(towers):
    _, text = towers
    source, target = _prompts(0), _prompts(1)
    direction = text_direction(text, source, target)
    embeds_source, embeds_target = np.split(_unit(text_embeds(text, jnp.concatenate([source, target]))), 2)
    expected = _unit(np.mean(embeds_target - embeds_source, axis=0))
    assert direction.shape == (16,)
    np.testing.assert_allclose(direction, expected, atol=1e-5)
    with pytest.raises(ValueError, match="source_ids has 3 templates, target_ids 2"):
        clip_losses.text_direction(text, source, target[:2])


def test_directional_clip_loss_value_gradient_and_no_move(towers):
    vision, text = towers
    rng = np.random.default_rng(0)
    source = jnp.asarray(rng.uniform(-1, 1, size=(2, 40, 48, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(-1, 1, size=(2, 40, 48, 3)), jnp.float32)
    direction = text_direction(text, _prompts(0), _prompts(1))

    @nnx.jit
    def loss_and_target_grad(vision, source, target):
        """(per-image losses (B,), d mean loss / d target)."""
        def mean_loss(target):
            losses = clip_losses.directional_clip_loss(vision, source, target, direction, preprocess)
            return losses.mean(), losses
        (_, losses), grad = jax.value_and_grad(mean_loss, has_aux=True)(target)
        return losses, grad

    loss, grad = loss_and_target_grad(vision, source, target)
    e_src, e_tar = np.split(_unit(image_embeds(vision, jnp.concatenate([source, target]))), 2)
    expected = 1.0 - np.sum(_unit(e_tar - e_src) * np.asarray(direction), axis=-1)
    assert loss.shape == (2,) and loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, expected, atol=1e-5)
    assert np.isfinite(grad).all() and float(jnp.abs(grad).sum()) > 0
    # Target equal to source (an edit that has not moved yet): no direction to compare, but no NaN either.
    unmoved_loss, unmoved_grad = loss_and_target_grad(vision, source, source)
    assert np.all((unmoved_loss >= 0) & (unmoved_loss <= 2)) and np.isfinite(unmoved_grad).all()
