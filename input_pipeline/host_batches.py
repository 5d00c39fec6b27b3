"""The per-host training batch iterator the image pipelines share: global example positions to this host's
slice of every global batch, through tf.data, deterministic, resumable at any step.

Host p of P takes positions [p B/P, (p + 1) B/P) of each global batch of B examples; global example i = step *
B + position is a pure function of i (the caller's `example`), so a resumed run sees the same batches.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from input_pipeline.sources import Source


class HostBatches:
    """Iterator of this host's batches (dicts of numpy arrays `(B / P, ...)`); `step` is the next batch's;
    `num_skipped` / `skipped_files` report the source's unusable files met so far."""

    def __init__(self, source: Source, example: Callable[[tf.Tensor], dict[str, tf.Tensor]], *, batch_size: int,
                 start_step: int, process_index: int, process_count: int, num_parallel_calls: int,
                 prefetch_batches: int):
        if batch_size % process_count:
            raise ValueError(f"config.data.batch_size = {batch_size} is not a multiple of the process count "
                             f"{process_count}")
        self.source = source
        self.step = start_step
        local = batch_size // process_count
        first = process_index * local

        def at(position):
            return example((position // local) * batch_size + first + position % local)

        positions = tf.data.Dataset.range(start_step * local, np.iinfo(np.int64).max)
        dataset = positions.map(at, num_parallel_calls=num_parallel_calls, deterministic=True)
        dataset = dataset.batch(local, drop_remainder=True).prefetch(prefetch_batches)
        options = tf.data.Options()
        options.deterministic = True
        self._iterator = iter(dataset.with_options(options).as_numpy_iterator())

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
