"""The deterministic, resumable tf.data pipeline: global example index -> composited multitask example.

Example i of a run (i = step * batch_size + position in the global batch) is a pure function of (seed, i):
its photo is position i % n of a stateless permutation of epoch i // n (every photo once per epoch), and all
its other randomness (reference photo, crops, flips, labels, strengths, blur angle, grain, mask) comes from
stateless ops keyed by (seed, i). Host p of P takes positions [p B/P, (p + 1) B/P) of each global batch, so the
hosts read disjoint slices and a run resumed at step k sees exactly the batches of an uninterrupted run.

A photo that cannot be used (unreadable, or too small under small_image_policy='skip') is recorded once in
the source's skip log and replaced, deterministically, by the next usable photo of the split.
"""
from __future__ import annotations

import ml_collections
import numpy as np
import tensorflow as tf

from input_pipeline.images import UnreadableImage, fit_to_crop, resize_short_side
from input_pipeline.randomness import example_seed, purpose_seed
from input_pipeline.sources import PairedSource, Source, create_source
from input_pipeline.tasks import (EDIT_VECTOR_SIZE, EVAL_COMBINATIONS, TASKS, composite, draw_strengths,
                                  label_table, labels_of)

_PERMUTATION_SALT = 0x1A6E


class PhotoLoader:
    """Python side of the pipeline: loads, fits and crops photos (called through tf.numpy_function)."""

    def __init__(self, source: Source, cfg: ml_collections.ConfigDict):
        self.source = source
        self.crop_size = cfg.crop_size
        self.policy = cfg.small_image_policy
        self.resize_short_side = cfg.resize_short_side

    def _prepared(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        photo, blurred = self.source.load(index)
        if self.resize_short_side:
            photo = resize_short_side(photo, self.resize_short_side)
            blurred = None if blurred is None else resize_short_side(blurred, self.resize_short_side)
        fitted = fit_to_crop(photo, self.crop_size, self.policy)
        if fitted is None:
            self.source.skipped.add(self.source.ids[index], f"smaller than crop_size={self.crop_size}: "
                                                            f"{photo.shape[:2]}")
            raise UnreadableImage("too small")
        if blurred is not None:
            blurred = fit_to_crop(blurred, self.crop_size, self.policy)
        return fitted, blurred

    def _first_usable(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        n = len(self.source)
        for attempt in range(n):
            try:
                return self._prepared((index + attempt) % n)
            except UnreadableImage:
                continue
        raise RuntimeError(f"no usable image among the {n} of this split; skipped: {self.source.skipped.as_dict()}")

    def _crop(self, image: np.ndarray, fraction: np.ndarray) -> tuple[int, int]:
        height, width = image.shape[:2]
        top = min(int(fraction[0] * (height - self.crop_size + 1)), height - self.crop_size)
        left = min(int(fraction[1] * (width - self.crop_size + 1)), width - self.crop_size)
        return top, left

    def __call__(self, photo_index, reference_index, crop_fraction, reference_crop_fraction, load_reference):
        """Returns photo, blurred (zeros for unpaired sources) and reference (zeros unless `load_reference`)
        crops, `(crop, crop, 3)` float32."""
        c = self.crop_size
        photo, blurred = self._first_usable(int(photo_index))
        top, left = self._crop(photo, crop_fraction)
        photo_crop = photo[top:top + c, left:left + c]
        blurred_crop = np.zeros_like(photo_crop) if blurred is None else blurred[top:top + c, left:left + c]
        if load_reference:
            reference, _ = self._first_usable(int(reference_index))
            top, left = self._crop(reference, reference_crop_fraction)
            reference_crop = reference[top:top + c, left:left + c]
        else:  # colour transfer is off: the reference field is zeros anyway
            reference_crop = np.zeros_like(photo_crop)
        return (np.ascontiguousarray(photo_crop, np.float32), np.ascontiguousarray(blurred_crop, np.float32),
                np.ascontiguousarray(reference_crop, np.float32))


def _photo_indices(seed: int, index: tf.Tensor, n: int, example: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """This example's photo (epoch permutation) and its colour reference (another photo when n > 1)."""
    epoch, position = index // n, index % n
    epoch_seed = tf.random.experimental.stateless_fold_in(tf.constant([seed, _PERMUTATION_SALT], tf.int64), epoch)
    photo = tf.random.experimental.index_shuffle(position, epoch_seed, tf.constant(n - 1, tf.int64))
    if n == 1:
        return photo, photo
    other = tf.random.stateless_uniform([], purpose_seed(example, "reference"), minval=0, maxval=n - 1,
                                        dtype=tf.int64)
    return photo, other + tf.cast(other >= photo, tf.int64)


def draw_labels(seed: int, index: tf.Tensor, table: np.ndarray) -> tf.Tensor:
    """The `(5,)` task labels of training example `index`: a uniform row of the label table."""
    row = tf.random.stateless_uniform([], purpose_seed(example_seed(seed, index), "labels"), minval=0,
                                      maxval=table.shape[0], dtype=tf.int32)
    return tf.gather(tf.constant(table), row)


def example_fn(source: Source, cfg: ml_collections.ConfigDict, seed: int):
    """The tf.data map function: (global example index int64, labels (5,)) -> dict of batch fields."""
    loader = PhotoLoader(source, cfg)
    paired = isinstance(source, PairedSource)
    crop = cfg.crop_size

    def make(index, labels):
        example = example_seed(seed, index)
        photo_index, reference_index = _photo_indices(seed, index, len(source), example)
        photo, blurred, reference = tf.numpy_function(
            loader, [photo_index, reference_index,
                     tf.random.stateless_uniform([2], purpose_seed(example, "crop")),
                     tf.random.stateless_uniform([2], purpose_seed(example, "reference_crop")),
                     labels[TASKS.index("colour")] > 0.5],
            [tf.float32] * 3, stateful=False)
        photo.set_shape([crop, crop, 3])
        blurred.set_shape([crop, crop, 3])
        reference.set_shape([crop, crop, 3])
        if cfg.random_flip:
            flips = tf.random.stateless_uniform([2], purpose_seed(example, "flip")) < 0.5
            photo = tf.where(flips[0], tf.reverse(photo, [1]), photo)
            blurred = tf.where(flips[0], tf.reverse(blurred, [1]), blurred)
            reference = tf.where(flips[1], tf.reverse(reference, [1]), reference)
        strengths = draw_strengths(example, cfg)
        return composite(photo, reference, blurred if paired else None, labels, strengths, example, cfg)

    return make


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


class TrainIterator:
    """Per-host training batches as dicts of numpy arrays; `step` is the step of the next batch.

    `skipped_files` ({path: reason}) and `num_skipped` report unusable files met so far (log them).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int = 0,
                 process_count: int = 1):
        if cfg.batch_size % process_count:
            raise ValueError(f"data config: batch_size={cfg.batch_size} is not a multiple of the "
                             f"process count {process_count}")
        self.source = create_source(cfg.source, "train")
        self.step = start_step
        global_batch = cfg.batch_size
        local = global_batch // process_count
        first = process_index * local
        positions = tf.data.Dataset.range(start_step * local, np.iinfo(np.int64).max)
        table = label_table(cfg.label_set, tuple(cfg.tasks))

        def index_and_labels(position):
            index = (position // local) * global_batch + first + position % local
            return index, draw_labels(cfg.seed, index, table)

        dataset = positions.map(index_and_labels).map(example_fn(self.source, cfg, cfg.seed),
                                                      num_parallel_calls=cfg.num_parallel_calls, deterministic=True)
        dataset = dataset.batch(local, drop_remainder=True).prefetch(cfg.prefetch_batches)
        self._iterator = iter(dataset.with_options(_options()).as_numpy_iterator())

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        self.step += 1
        return batch

    @property
    def skipped_files(self) -> dict[str, str]:
        return self.source.skipped.as_dict()

    @property
    def num_skipped(self) -> int:
        return len(self.source.skipped)


def create_train_iterator(data_config: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int = 0,
                          process_count: int = 1) -> TrainIterator:
    """Per-host training batches; the batch at step k is a pure function of (data_config.seed, k)."""
    return TrainIterator(data_config, start_step=start_step, process_index=process_index,
                         process_count=process_count)


def eval_set_names() -> tuple[str, ...]:
    """Each single task, then the paper's four combinations (Table 3)."""
    return TASKS + EVAL_COMBINATIONS


def create_eval_sets(data_config: ml_collections.ConfigDict) -> dict[str, dict[str, np.ndarray]]:
    """{name: batch} of `eval.size` held-out examples per task set, fixed by `eval.seed`.

    Every set uses the same photos, crops and strengths (example i is keyed by (eval.seed, i)), so the sets
    differ only in which effects are on.
    """
    source = create_source(data_config.source, "heldout")
    names = eval_set_names()
    size = data_config.eval.size
    indices = np.tile(np.arange(size, dtype=np.int64), len(names))
    labels = np.repeat(np.stack([labels_of(name) for name in names]), size, axis=0)
    dataset = tf.data.Dataset.from_tensor_slices((indices, labels))
    dataset = dataset.map(example_fn(source, data_config, data_config.eval.seed),
                          num_parallel_calls=data_config.num_parallel_calls, deterministic=True).batch(size)
    return dict(zip(names, dataset.with_options(_options()).as_numpy_iterator()))


def batch_spec(data_config: ml_collections.ConfigDict, batch_size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Shapes and dtypes of the batch fields (see input_pipeline.tasks), e.g. for dummy batches."""
    c = data_config.crop_size
    return {"source": ((batch_size, c, c, 3), "float32"), "target": ((batch_size, c, c, 3), "float32"),
            "reference": ((batch_size, c, c, 3), "float32"), "mask": ((batch_size, c, c, 1), "float32"),
            "edit_vector": ((batch_size, EDIT_VECTOR_SIZE), "float32"),
            "task_labels": ((batch_size, len(TASKS)), "float32")}
