"""Synthetic degradations of Diff-Plugin's eight tasks, TF ops on one `(H, W, 3)` float32 image in [0, 1].

Each `degrade_<task>(image, seed, **ranges)` takes an image in [0, 1] (the range of `input_pipeline.effects`;
the batch fields' [-1, 1] is applied later, as in `input_pipeline.tasks`), a stateless `(2,)` int32 / int64
seed, and keyword parameter ranges (defaults documented, with their sources, in each module); it returns the
degraded `(H, W, 3)` float32 in [0, 1], a pure function of (image, seed), in eager mode and inside
`tf.data.Dataset.map` alike. H and W must be static.

    DEGRADATIONS                 {task: degrade function}, the tasks of Diff-Plugin's Table 1
    degrade(task, image, seed)   dispatches on the task name
    paired_example(task, image, seed)  -> {"source": degraded, "target": clean}, a map function's output
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from input_pipeline.degradations.blur import degrade_deblur
from input_pipeline.degradations.face import degrade_face
from input_pipeline.degradations.haze import degrade_dehaze
from input_pipeline.degradations.highlight import degrade_highlight
from input_pipeline.degradations.low_light import degrade_lowlight
from input_pipeline.degradations.moire import degrade_demoire
from input_pipeline.degradations.rain import degrade_derain
from input_pipeline.degradations.snow import degrade_desnow

DEGRADATIONS: dict[str, Callable[..., tf.Tensor]] = {
    "desnow": degrade_desnow,
    "dehaze": degrade_dehaze,
    "deblur": degrade_deblur,
    "derain": degrade_derain,
    "lowlight": degrade_lowlight,
    "face": degrade_face,
    "demoire": degrade_demoire,
    "highlight": degrade_highlight,
}


def degrade(task: str, image: tf.Tensor, seed: tf.Tensor, **ranges) -> tf.Tensor:
    """`DEGRADATIONS[task](image, seed, **ranges)`; ValueError for an unknown task."""
    if task not in DEGRADATIONS:
        raise ValueError(f"unknown degradation task {task!r}; tasks are {sorted(DEGRADATIONS)}")
    return DEGRADATIONS[task](tf.convert_to_tensor(image, tf.float32), seed, **ranges)


def paired_example(task: str, image: tf.Tensor, seed: tf.Tensor, **ranges) -> dict[str, tf.Tensor]:
    """{"source": the degraded image, "target": the clean one}, both `(H, W, 3)` float32 in [0, 1].

    The restoration direction (the plugin learns degraded -> clean). In a pipeline, e.g.
    `ds.map(lambda image, index: paired_example("derain", image, example_seed(seed, index)))`.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    return {"source": degrade(task, image, seed, **ranges), "target": image}


__all__ = ["DEGRADATIONS", "degrade", "paired_example", *(f.__name__ for f in DEGRADATIONS.values())]
