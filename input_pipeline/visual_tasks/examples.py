"""The task registries and the visual-prompt example: global index -> reference pair and query of one task.

`visual_prompt_example_fn(source, crop_size, seed, tasks=None)` returns the tf.data map function
index (int64) -> {
    reference_input   (c, c, 3) float32 in [-1, 1]  x_r = T_in(photo r)
    reference_output  (c, c, 3) float32 in [-1, 1]  y_r = T_out(photo r)
    query             (c, c, 3) float32 in [-1, 1]  x_q = T_in(photo q)
    answer            (c, c, 3) float32 in [-1, 1]  y_q = T_out(photo q)
    task_id           () int32                      TASK_IDS[name]: position in VISUAL_TASKS then OOD_TASKS
}
(denoising's inputs may leave [-1, 1], see visual_tasks.pairs). Example i is a pure function of (seed, i), like
the multitask pipeline's: photo q is position i % n of epoch i // n's stateless permutation, photo r another
photo of the split (input_pipeline.pipeline's draw, so r != q), each resized to short side `short_side`
(default `crop_size`, bicubic; maps nearest) and cropped at a seeded position. The task is uniform over
`tasks`; the reference and the query share the task's seed, so the reference shows exactly the transformation
asked of the query (same noise sigma, blur kernel, contrast factor, rain, inpainting mask).

`tasks=None` means every in-distribution task the source can serve: the synthesisable ones, plus
segmentation / depth for a LabelledFolderSource of that label_kind. Naming a labelled task the source cannot
serve, an unknown task, or a source of fewer than two photos is a ValueError.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import numpy as np
import tensorflow as tf
from PIL import Image

from input_pipeline.images import UnreadableImage, resize_short_side
from input_pipeline.pipeline import _photo_indices
from input_pipeline.randomness import example_seed, purpose_seed
from input_pipeline.sources import Source
from input_pipeline.visual_tasks import pairs
from input_pipeline.visual_tasks.labelled import LabelledFolderSource

# Folded into the example seed; distinct from input_pipeline.randomness.PURPOSES (small ids), never renumber.
_TASK_PURPOSE = 0x7A51
_TASK_SEED_PURPOSE = 0x7A52
PREPARED_CACHE_SIZE = 16


@dataclasses.dataclass(frozen=True)
class VisualTask:
    """A pair maker: `make(image, seed)`, or `make(image, label_map, seed)` when `label_kind` is set."""
    make: Callable
    label_kind: str | None = None

    def pair(self, image: tf.Tensor, label_map: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return self.make(image, label_map, seed) if self.label_kind else self.make(image, seed)


VISUAL_TASKS = {
    "inpainting": VisualTask(pairs.make_inpainting),
    "colourisation": VisualTask(pairs.make_colourisation),
    "edges": VisualTask(pairs.make_edges),
    "super_resolution": VisualTask(pairs.make_super_resolution),
    "deblurring": VisualTask(pairs.make_deblurring),
    "denoising": VisualTask(pairs.make_denoising),
    "segmentation": VisualTask(pairs.make_segmentation, "segmentation"),
    "depth": VisualTask(pairs.make_depth, "depth"),
}
OOD_TASKS = {
    "deraining": VisualTask(pairs.make_deraining),
    "contrast": VisualTask(pairs.make_contrast),
}
ALL_TASKS = {**VISUAL_TASKS, **OOD_TASKS}
TASK_IDS = {name: i for i, name in enumerate(ALL_TASKS)}
SYNTHESISABLE_TASKS = tuple(name for name, task in ALL_TASKS.items() if task.label_kind is None)


def servable_tasks(source: Source, tasks: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """`tasks` checked against the source (or its default in-distribution tasks); ValueError naming the problem."""
    label_kind = source.label_kind if isinstance(source, LabelledFolderSource) else None
    if tasks is None:
        return tuple(n for n, t in VISUAL_TASKS.items() if t.label_kind in (None, label_kind))
    unknown = [n for n in tasks if n not in ALL_TASKS]
    if unknown:
        raise ValueError(f"unknown visual task(s) {unknown}; tasks are {tuple(ALL_TASKS)}")
    unservable = [n for n in tasks if ALL_TASKS[n].label_kind not in (None, label_kind)]
    if unservable:
        raise ValueError(f"visual task(s) {unservable} need a labelled_folder source with label_kind="
                         f"{ALL_TASKS[unservable[0]].label_kind!r}; this source is {type(source).__name__}"
                         f"{f' of label_kind {label_kind!r}' if label_kind else ''}")
    if not tasks:
        raise ValueError("visual prompt examples need at least one task")
    return tuple(tasks)


class PromptPhotoLoader:
    """Python side (tf.numpy_function): two photos (and maps) resized to `short_side` and cropped to `crop_size`."""

    def __init__(self, source: Source, crop_size: int, short_side: int):
        if short_side < crop_size:
            raise ValueError(f"visual prompt: short_side={short_side} is smaller than crop_size={crop_size}")
        self.source, self.crop_size, self.short_side = source, crop_size, short_side
        # Resizing dominates a small crop's cost; photos recur (bundled sources, every example reads two).
        self._prepared = functools.lru_cache(maxsize=PREPARED_CACHE_SIZE)(self._prepare)

    def _prepare(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        photo, label_map = self.source.load(index)
        resized = resize_short_side(photo, self.short_side)
        if not isinstance(self.source, LabelledFolderSource):  # a paired source's blurred frame is not used
            return resized, np.zeros(resized.shape[:2], np.float32)
        height, width = resized.shape[:2]
        # Nearest: class ids must not be blended into ids of other classes.
        label_map = np.asarray(Image.fromarray(label_map).resize((width, height), Image.Resampling.NEAREST))
        return resized, label_map

    def _first_usable(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.source)
        for attempt in range(n):
            try:
                return self._prepared((index + attempt) % n)
            except UnreadableImage:
                continue
        raise RuntimeError(f"no usable image among the {n} of this split; skipped: {self.source.skipped.as_dict()}")

    def _crop(self, index: int, fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        photo, label_map = self._first_usable(int(index))
        c = self.crop_size
        top = min(int(fraction[0] * (photo.shape[0] - c + 1)), photo.shape[0] - c)
        left = min(int(fraction[1] * (photo.shape[1] - c + 1)), photo.shape[1] - c)
        return (np.ascontiguousarray(photo[top:top + c, left:left + c], np.float32),
                np.ascontiguousarray(label_map[top:top + c, left:left + c], np.float32))

    def __call__(self, query_index, reference_index, query_fraction, reference_fraction):
        """query photo, query map, reference photo, reference map: `(c, c, 3)` / `(c, c)` float32."""
        return (*self._crop(query_index, query_fraction), *self._crop(reference_index, reference_fraction))


def visual_prompt_example_fn(source: Source, crop_size: int, seed: int, tasks: tuple[str, ...] | None = None,
                             *, short_side: int | None = None):
    """The tf.data map function of the module docstring: int64 index -> example dict."""
    names = servable_tasks(source, tasks)
    if len(source) < 2:
        raise ValueError(f"visual prompt examples need two different photos; the source has {len(source)}")
    loader = PromptPhotoLoader(source, crop_size, short_side or crop_size)
    task_ids = tf.constant([TASK_IDS[n] for n in names], tf.int32)

    def make(index):
        example = example_seed(seed, index)
        query_index, reference_index = _photo_indices(seed, index, len(source), example)
        query, query_map, reference, reference_map = tf.numpy_function(
            loader, [query_index, reference_index,
                     tf.random.stateless_uniform([2], purpose_seed(example, "crop")),
                     tf.random.stateless_uniform([2], purpose_seed(example, "reference_crop"))],
            [tf.float32] * 4, stateful=False)
        for image in (query, reference):
            image.set_shape([crop_size, crop_size, 3])
        for label_map in (query_map, reference_map):
            label_map.set_shape([crop_size, crop_size])
        choice = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(example, _TASK_PURPOSE),
                                             minval=0, maxval=len(names), dtype=tf.int32)
        task_seed = tf.random.experimental.stateless_fold_in(example, _TASK_SEED_PURPOSE)

        def branch(name):
            task = ALL_TASKS[name]
            return lambda: (*task.pair(reference, reference_map, task_seed), *task.pair(query, query_map, task_seed))

        cells = tf.switch_case(choice, [branch(n) for n in names])
        fields = dict(zip(("reference_input", "reference_output", "query", "answer"), cells))
        example_dict = {k: tf.ensure_shape(v, [crop_size, crop_size, 3]) * 2.0 - 1.0 for k, v in fields.items()}
        example_dict["task_id"] = tf.gather(task_ids, choice)
        return example_dict

    return make
