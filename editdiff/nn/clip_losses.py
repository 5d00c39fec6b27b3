"""CLIP embeddings and the directional CLIP loss (Gal et al., StyleGAN-NADA; DiffusionCLIP's form).

    L_direction = 1 - cos(E_I(x_tar) - E_I(x_src), E_T(t_tar) - E_T(t_src))

E_I and E_T are unit-normalised CLIP image / text embeddings. The text direction is computed once per
(source, target) text pair, averaged over prompt templates as DiffusionCLIP does: each templated prompt is
embedded and normalised, the per-template differences target - source are averaged, and the mean is
normalised. Everything here is jit-able and differentiable; losses are float32.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from editdiff.nn import clip_preprocess
from editdiff.nn.clip import CLIPTextModel, CLIPVisionModel

# A few of CLIP's ImageNet prompt templates (Radford et al., 2021), the family DiffusionCLIP averages over.
PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
    "a bright photo of a {}.",
    "a dark photo of a {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a rendering of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
)

_EPS = 1e-7  # DiffusionCLIP's guard for the norm of a vanishing direction


def normalized(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / ||x|| along `axis`, in float32. A zero vector stays zero with a finite (zero) gradient rather than
    NaN, which matters for the direction of an edit that has not moved yet."""
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True), _EPS ** 2))


def cosine_similarity(a: jax.Array, b: jax.Array, axis: int = -1) -> jax.Array:
    """cos(a, b) along `axis` (broadcasting), float32; (..., P), (..., P) -> (...)."""
    return jnp.sum(normalized(a, axis) * normalized(b, axis), axis=axis)


def image_embeddings(vision_model: CLIPVisionModel, images: jax.Array,
                     preprocess: Callable[[jax.Array], jax.Array] = clip_preprocess.resize_center_crop) -> jax.Array:
    """Unit CLIP image embeddings (B, P) of (B, H, W, 3) images in [-1, 1].

    `preprocess` maps the images to the model's input size, CLIP-normalised (default: CLIPImageProcessor's
    shortest-side resize + centre crop to 224; pass e.g. `functools.partial(resize_center_crop, size=336)` for
    another tower).
    """
    return normalized(vision_model(preprocess(images)).image_embeds)


def text_embeddings(text_model: CLIPTextModel, input_ids: jax.Array) -> jax.Array:
    """Unit CLIP text embeddings (N, P) of (N, L) token ids."""
    return normalized(text_model(input_ids).text_embeds)


def fill_templates(text: str, templates: Sequence[str] = PROMPT_TEMPLATES) -> list[str]:
    """`text` put into each template's `{}`, in template order."""
    return [template.format(text) for template in templates]


def text_direction(text_model: CLIPTextModel, source_ids: jax.Array, target_ids: jax.Array) -> jax.Array:
    """Unit text direction (P,) from the source to the target text, averaged over prompt templates.

    source_ids / target_ids: (T, L) token ids of the same T templates filled with the source / target text
    (see `fill_templates`), row t of one matching row t of the other.
    """
    if source_ids.shape[0] != target_ids.shape[0]:
        raise ValueError(f"source_ids has {source_ids.shape[0]} templates, target_ids {target_ids.shape[0]}; "
                         "each template needs both texts")
    deltas = text_embeddings(text_model, target_ids) - text_embeddings(text_model, source_ids)
    return normalized(jnp.mean(deltas, axis=0))


def direction_loss(delta: jax.Array, reference_delta: jax.Array) -> jax.Array:
    """1 - cos(delta, reference_delta) per row: (B, P), (B or 1, P) or (P,) -> (B,), in [0, 2].

    The loss every directional objective here reduces to: the directional CLIP loss, and the visual-prompt
    task-consistency loss 1 - cos(phi(y_pred) - phi(x_q), phi(y_r) - phi(x_r)).
    """
    return 1.0 - cosine_similarity(delta, reference_delta)


def directional_clip_loss(vision_model: CLIPVisionModel, source_images: jax.Array, target_images: jax.Array,
                          direction: jax.Array,
                          preprocess: Callable[[jax.Array], jax.Array] = clip_preprocess.resize_center_crop
                          ) -> jax.Array:
    """1 - cos(E_I(target) - E_I(source), direction) per image: (B, H, W, 3) x2 in [-1, 1], (P,) -> (B,).

    `direction` is the unit text direction from `text_direction`. Gradients flow into both image batches
    (stop_gradient the source where it is data). A target that has not moved from its source has no direction:
    the loss is then 1 - cos(rounding noise, direction), anywhere in [0, 2], with a finite gradient.
    """
    images = jnp.concatenate([source_images, target_images], axis=0)  # one forward pass for both batches
    source, target = jnp.split(image_embeddings(vision_model, images, preprocess), 2, axis=0)
    return direction_loss(target - source, direction)
