"""`--mode=edit` for the multitask method: a photo (or a folder of them) and an edit of any combination of the five
effects, from `config.edit`:

    blur               beta in [0, 1], the motion blur's strength; 0 = off
    grain              sigma in [0, 0.1], the film grain's radius in pixels; 0 = off
    reference          a colour reference image for colour transfer; '' = off
    mask               a mask image for inpainting, white (> 0.5 grey) = the hole to fill; '' = off
    sharpen_amount     lambda, the unsharp mask's amount (trained on config.data.sharpen.amount_range); 0 = off
    sharpen_threshold  mu in [0, 1], its threshold (with sharpen_amount)
    seed               the sampler's start noise
    tile_size, tile_overlap, batch_size   photos larger than tile_size x tile_size px are edited as
                       overlapping tiles, `batch_size` at a time, and stitched with feathered seams (`tiles`)

e.g. `python main.py --config configs/multitask.py --workdir runs/demo --mode=edit
--config.edit.input=photo.png --config.edit.blur=0.5 --config.edit.reference=ref.png`. The edited photo keeps
the input's resolution: a photo smaller than a tile is reflect-padded to the sizes the model takes and cropped
back; a larger one is tiled (both logged).
"""
from __future__ import annotations

import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from editdiff import config_checks as checks
from editdiff.methods import tiles as tiles_lib
from editdiff.methods.reports import chunks
from input_pipeline.config import TASKS
from input_pipeline.images import load_image


def default_edit_config() -> ml_collections.ConfigDict:
    """`config.edit`: the trainer's input and output, and the edit (module docstring); nothing on by default."""
    return ml_collections.ConfigDict(dict(
        input="", output="", blur=0.0, grain=0.0, reference="", mask="", sharpen_amount=0.0, sharpen_threshold=0.0,
        seed=0, tile_size=512, tile_overlap=32, batch_size=4))


_EDIT_CHECKS = {
    "input": checks.ANY, "output": checks.ANY,  # checked by the trainer's edit section
    "blur": checks.number_in(0, 1), "grain": checks.number_in(0, 0.1),
    "reference": checks.string(), "mask": checks.string(),
    "sharpen_amount": checks.number_at_least(0), "sharpen_threshold": checks.number_in(0, 1),
    "seed": checks.int_at_least(0), "tile_size": checks.int_at_least(1), "tile_overlap": checks.int_at_least(0),
    "batch_size": checks.int_at_least(1),
}


def _files_rule(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    for key in ("reference", "mask"):
        path = config.edit[key]
        if path and not os.path.isfile(path):
            problems.append(f"config.edit.{key} = {path!r} is invalid; allowed: '' (off) or an existing image file")
    if config.edit.tile_overlap >= config.edit.tile_size:
        problems.append(f"config.edit.tile_overlap = {config.edit.tile_overlap} is invalid; allowed: less than "
                        f"config.edit.tile_size = {config.edit.tile_size}")
    return problems


def edit_section() -> checks.Section:
    return checks.Section("edit", _EDIT_CHECKS, rules=(_files_rule,))


def edit_labels(edit: ml_collections.ConfigDict) -> np.ndarray:
    """(5,) float32 task labels [blur, grain, colour, inpaint, sharpen] of the configured edit; ConfigError when
    nothing is on."""
    on = {"blur": edit.blur > 0, "grain": edit.grain > 0, "colour": bool(edit.reference), "inpaint": bool(edit.mask),
          "sharpen": edit.sharpen_amount > 0}
    if not any(on.values()):
        raise checks.ConfigError("--mode=edit: no edit is on; allowed: any of config.edit.blur > 0, config.edit.grain "
                                 "> 0, config.edit.reference=IMAGE, config.edit.mask=IMAGE, "
                                 "config.edit.sharpen_amount > 0")
    return np.array([float(on[task]) for task in TASKS], np.float32)


def edit_vector(edit: ml_collections.ConfigDict, labels: np.ndarray) -> np.ndarray:
    """C = [beta e1, sigma e2, lambda e5, mu e5, e1..e5] (9,) float32, as `input_pipeline.tasks.edit_vector`."""
    scalars = np.array([edit.blur, edit.grain, edit.sharpen_amount, edit.sharpen_threshold], np.float32)
    return np.concatenate([scalars * labels[[0, 1, 4, 4]], labels]).astype(np.float32)


def _warn_outside_training(edit: ml_collections.ConfigDict, data: ml_collections.ConfigDict) -> None:
    trained = {"blur": tuple(data.motion_blur.beta_range), "grain": (min(data.film_grain.radii), max(data.film_grain.radii)),
               "sharpen_amount": tuple(data.sharpen.amount_range)}
    for key, (low, high) in trained.items():
        if edit[key] > 0 and not low <= edit[key] <= high:
            logging.warning("--mode=edit: config.edit.%s = %s lies outside the trained range [%s, %s]", key, edit[key],
                            low, high)


def _resized(image: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    return np.asarray(jax.image.resize(jnp.asarray(image, jnp.float32), (height, width, image.shape[-1]), method,
                                       antialias=method != "nearest"))


def _reflect_pad(image: np.ndarray, height: int, width: int) -> np.ndarray:
    pad = ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0))
    return np.pad(image, pad, mode="reflect" if max(image.shape[:2]) > 1 else "edge")


def edit_photo(sample, model, image: np.ndarray, edit: ml_collections.ConfigDict, data: ml_collections.ConfigDict,
               multiple: int) -> dict[str, np.ndarray]:
    """The configured edit of `image` (H, W, 3) in [-1, 1]: {"edited", "input" (as the model saw it: masked when
    inpainting), "reference" (when set)}, each (H, W, 3) in [-1, 1]. `sample(model, batch, rng)` is the method's
    compiled sampler, `multiple` the image sizes the model takes (autoencoder factor x U-Net downsampling)."""
    labels = edit_labels(edit)
    _warn_outside_training(edit, data)
    height, width = image.shape[:2]
    if edit.tile_size % multiple:
        raise checks.ConfigError(f"config.edit.tile_size = {edit.tile_size} is invalid; allowed: a multiple of "
                                 f"{multiple} (the sizes this model takes)")
    tile = tuple(min(edit.tile_size, math.ceil(n / multiple) * multiple) for n in (height, width))
    canvas = (max(height, tile[0]), max(width, tile[1]))
    if canvas != (height, width):
        logging.info("--mode=edit: %dx%d px reflect-padded to %dx%d (a multiple of %d px), cropped back after",
                     width, height, canvas[1], canvas[0], multiple)
    mask = np.ones((height, width, 1), np.float32)
    if edit.mask:
        grey = np.mean(_resized(load_image(edit.mask), height, width, "nearest"), axis=-1, keepdims=True)
        mask = (grey <= 0.5).astype(np.float32)  # 1 = keep, as in training
    pieces, positions = tiles_lib.split(np.concatenate([_reflect_pad(image, *canvas), _reflect_pad(mask, *canvas)], -1),
                                        tile, edit.tile_overlap)
    if len(positions) > 1:
        logging.info("--mode=edit: %dx%d px edited as %d tiles of %dx%d px (overlap %d px)", width, height,
                     len(positions), tile[1], tile[0], edit.tile_overlap)
    reference = np.zeros((*tile, 3), np.float32)
    if edit.reference:
        reference = _resized(load_image(edit.reference), *tile, "linear") * 2.0 - 1.0
    n = len(pieces)
    batch = {"source": pieces[..., :3] * pieces[..., 3:], "mask": pieces[..., 3:],
             "reference": np.broadcast_to(reference, (n, *tile, 3)),
             "edit_vector": np.broadcast_to(edit_vector(edit, labels), (n, len(labels) + 4)),
             "task_labels": np.broadcast_to(labels, (n, len(labels)))}
    rng = jax.random.key(edit.seed)
    edited = []
    for i, parts in enumerate(zip(*(chunks(np.ascontiguousarray(v), edit.batch_size) for v in batch.values()))):
        count = parts[0][0]
        chunk = {key: jnp.asarray(part) for key, (_, part) in zip(batch, parts)}
        edited.append(np.asarray(sample(model, chunk, jax.random.fold_in(rng, i)))[:count])
    stitched = tiles_lib.stitch(np.concatenate(edited), positions, canvas, edit.tile_overlap)[:height, :width]
    results = {"edited": stitched, "input": image * mask}
    if edit.reference:
        results["reference"] = _resized(reference, height, width, "linear")
    return results
