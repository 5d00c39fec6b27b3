"""The visual-prompting method's data config, its checks, its training batches and its fixed evaluation sets.

`config.data` (`default_visual_data_config`):

    source.kind          "bundled" | "folder" | "labelled_folder" (images + maps: segmentation or depth)
    source.folder        kind "folder": the root of the photos
    source.labelled_images_folder, source.labelled_maps_folder, source.label_kind: kind "labelled_folder"
    source.heldout_per_mille   the fixed train / held-out split of the folder sources
    cell_size            the side of one grid cell in pixels (the grid is 2 x cell_size square)
    resize_short_side    0, or the short side every photo is resized to before the cell is cropped
    tasks                () = every in-distribution task the source serves; else task names
    batch_size, seed, num_parallel_calls, prefetch_batches

Batches (`VisualPromptBatches`): the example of `visual_prompt_example_fn` — reference_input, reference_output,
query, answer (B, c, c, 3) in [-1, 1], task_id (B,), and the 2 x 2 grids of `assemble_grid`: hint and target
(B, 2c, 2c, 3) — where example i of the run (i = step * batch_size +
position in the global batch) is a pure function of (seed, i), so a resumed run sees the same batches; host p
of P takes positions [p B/P, (p + 1) B/P) of each global batch.

`fixed_task_examples(cfg, task, count, seed)`: `count` held-out examples of one task, the same at every call
(the evaluator's set).
"""
from __future__ import annotations

import logging
import os

import ml_collections
import numpy as np
import tensorflow as tf

from editdiff import config_checks as checks
from input_pipeline.host_batches import HostBatches
from input_pipeline.visual_tasks.examples import ALL_TASKS, servable_tasks, visual_prompt_example_fn
from input_pipeline.visual_tasks.grid import assemble_grid
from input_pipeline.visual_tasks.labelled import LABEL_KINDS, create_visual_source

SOURCE_KINDS = ("bundled", "folder", "labelled_folder")


def default_visual_data_config() -> ml_collections.ConfigDict:
    """`config.data` of the module docstring: the bundled photos, 32 px cells of whole 32 px thumbnails."""
    return ml_collections.ConfigDict(dict(
        source=dict(kind="bundled", folder="", labelled_images_folder="", labelled_maps_folder="",
                    label_kind="segmentation", heldout_per_mille=100),
        cell_size=32, resize_short_side=0, tasks=(), batch_size=8, seed=0, num_parallel_calls=-1,
        prefetch_batches=2))


def _source_rule(config) -> list[str]:
    """The source's folders exist and every photo of a labelled source has its map; the tasks are servable."""
    source = config.data.source
    if source.kind == "folder" and not os.path.isdir(source.folder):
        return [f"config.data.source.folder = {source.folder!r} is invalid; allowed: an existing directory of "
                "images when config.data.source.kind = 'folder'"]
    if source.kind == "labelled_folder" and not source.labelled_maps_folder:
        return ["config.data.source.labelled_maps_folder = '' is invalid; allowed: the folder of the maps (one per "
                "photo of config.data.source.labelled_images_folder, same relative path, .png/.tif/.npy) when "
                "config.data.source.kind = 'labelled_folder'"]
    try:
        train = create_visual_source(source, "train")
        servable_tasks(train, tuple(config.data.tasks) or None)
        create_visual_source(source, "heldout")
    except ValueError as error:
        return [f"config.data: {error}"]
    problems = []
    for split in ("train", "heldout"):
        count = len(train) if split == "train" else len(create_visual_source(source, split))
        if count < 2:
            problems.append(f"config.data.source: the {split} split has {count} photo(s); a reference and a query "
                            "need two (add photos or change config.data.source.heldout_per_mille)")
    return problems


def _size_rule(config) -> list[str]:
    resize, cell = config.data.resize_short_side, config.data.cell_size
    if 0 < resize < cell:
        return [f"config.data.resize_short_side = {resize} is invalid; allowed: 0 (off) or at least "
                f"config.data.cell_size = {cell}"]
    return []


def visual_data_sections() -> list[checks.Section]:
    """The checks of `config.data` (module docstring); the source is opened (files listed) by the rules."""
    return [
        checks.Section("data", {
            "cell_size": checks.int_at_least(8),
            "resize_short_side": checks.int_at_least(0),
            "tasks": ((lambda v: isinstance(v, (tuple, list)) and all(t in ALL_TASKS for t in v)),
                      f"a tuple of task names from {tuple(ALL_TASKS)} (empty: every task the source serves)"),
            "batch_size": checks.int_at_least(1),
            "seed": checks.int_at_least(0),
            "num_parallel_calls": ((lambda v: checks.is_int(v) and (v == -1 or v >= 1)),
                                   "an integer >= 1, or -1 for tf.data AUTOTUNE"),
            "prefetch_batches": checks.int_at_least(0),
            "source": checks.ANY,
        }, rules=(_size_rule,)),
        checks.Section("data.source", {
            "kind": checks.one_of(SOURCE_KINDS),
            "folder": checks.string(),
            "labelled_images_folder": checks.string(),
            "labelled_maps_folder": checks.string(),
            "label_kind": checks.one_of(LABEL_KINDS),
            "heldout_per_mille": ((lambda v: checks.is_int(v) and 0 <= v < 1000), "an integer in [0, 1000)"),
        }, rules=(_source_rule,)),
    ]


def training_tasks(cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The tasks the run trains on: `cfg.tasks`, or every in-distribution task the training source serves."""
    return servable_tasks(create_visual_source(cfg.source, "train"), tuple(cfg.tasks) or None)


class VisualPromptBatches(HostBatches):
    """Per-host training batches (module docstring; input_pipeline.host_batches); `step` is the next batch's."""

    def __init__(self, cfg: ml_collections.ConfigDict, *, start_step: int = 0, process_index: int = 0,
                 process_count: int = 1):
        source = create_visual_source(cfg.source, "train")
        make = visual_prompt_example_fn(source, cfg.cell_size, cfg.seed, tuple(cfg.tasks) or None,
                                        short_side=cfg.resize_short_side or None)

        def example(index):
            fields = make(index)
            grid = assemble_grid(*(fields[name] for name in ("reference_input", "reference_output", "query",
                                                             "answer")))
            return {**fields, "hint": grid["hint"], "target": grid["target"]}

        super().__init__(source, example, batch_size=cfg.batch_size, start_step=start_step,
                         process_index=process_index, process_count=process_count,
                         num_parallel_calls=cfg.num_parallel_calls, prefetch_batches=cfg.prefetch_batches)


def fixed_task_examples(cfg: ml_collections.ConfigDict, task: str, count: int, seed: int) -> dict[str, np.ndarray]:
    """Examples 0..count-1 of `task` alone on the held-out split under `seed`: the FIELDS as numpy arrays
    (count, ...). The same at every call."""
    source = create_visual_source(cfg.source, "heldout")
    make = visual_prompt_example_fn(source, cfg.cell_size, seed, (task,), short_side=cfg.resize_short_side or None)
    dataset = tf.data.Dataset.range(count).map(make).batch(count)
    examples = next(iter(dataset.as_numpy_iterator()))
    if len(source.skipped):
        logging.warning("fixed_task_examples(%s): skipped %s", task, source.skipped.as_dict())
    return examples
