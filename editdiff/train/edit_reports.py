"""Periodic sample grids and evaluation tables for image-to-image editing methods.

`EditReports` works on fixed, named evaluation sets (batches with `source`, `target`, `reference`, `mask` and
the method's other fields, e.g. one set per single task and per combination of tasks) and on `Method.sample`,
so it knows nothing method-specific. The edited images of all sets are sampled in one compiled call and shared
by both reports of a step:

- `write_grid`: `WORKDIR/samples/step_NNNNNNN.png` (rows: the first examples of every set; columns: source,
  reference, mask, target, edited) and the same grid to TensorBoard.
- `write_tables`: the edited images scored against the targets with the `eval` module's L1, PSNR and SSIM
  (on [0, 1] images, data range 1) next to the do-nothing baseline (the source itself):
  `WORKDIR/eval/step_NNNNNNN.json`, a markdown `.md` shaped like the multitask paper's Tables 2-3 (methods as
  rows, tasks as column groups), and the scalars to the metric writer.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from clu import metric_writers
from flax import nnx
from PIL import Image

from eval import metrics as pixel_metrics
from editdiff.methods.base import Batch, Method
from editdiff.train.hooks import PeriodicHooks, TrainView

GRID_COLUMNS = ("source", "reference", "mask", "target", "edited")
# (name, function of ([0, 1] prediction, [0, 1] target) -> (B,), higher is better)
METRICS: tuple[tuple[str, Callable, bool], ...] = (
    ("L1", pixel_metrics.l1, False),
    ("PSNR", lambda p, t: pixel_metrics.psnr(p, t, 1.0), True),
    ("SSIM", lambda p, t: pixel_metrics.ssim(p, t, 1.0), True),
)
BASELINE = "do-nothing"
MODEL = "model"


def _to_unit(images: jax.Array) -> jax.Array:
    """[-1, 1] -> [0, 1], float32."""
    return (jnp.asarray(images, jnp.float32) + 1.0) / 2.0


def image_grid(columns: list[np.ndarray]) -> np.ndarray:
    """Tiles equally long lists of images into one uint8 picture: one row per example, one column per input.
    Images are (N, H, W, 3) in [-1, 1] or masks (N, H, W, 1) in [0, 1]."""
    tiles = []
    for images in columns:
        images = np.asarray(images, np.float32)
        if images.shape[-1] == 1:
            images = np.repeat(images * 2.0 - 1.0, 3, axis=-1)
        tiles.append(np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8))
    rows = [np.concatenate([column[i] for column in tiles], axis=1) for i in range(len(tiles[0]))]
    return np.concatenate(rows, axis=0)


def score_edits(eval_sets: Mapping[str, Batch], edited: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """Per set: {"model": {metric: mean}, "do-nothing": {metric: mean}} on [0, 1] images."""
    scores = {}
    for name, batch in eval_sets.items():
        target = _to_unit(batch["target"])
        candidates = {MODEL: _to_unit(edited[name]), BASELINE: _to_unit(batch["source"])}
        scores[name] = {who: {metric: float(jnp.mean(fn(images, target))) for metric, fn, _ in METRICS}
                        for who, images in candidates.items()}
    return scores


def markdown_tables(scores: Mapping[str, dict], step: int) -> str:
    """Single tasks and combinations (names with '+') as two tables: rows = methods, columns = set x metric;
    the better of the two rows is in bold."""
    text = [f"# Evaluation at step {step}\n"]
    arrows = {metric: ("↑" if higher else "↓") for metric, _, higher in METRICS}
    groups = (("Single tasks", [n for n in scores if "+" not in n]),
              ("Combinations of tasks", [n for n in scores if "+" in n]))
    for title, names in groups:
        if not names:
            continue
        header = [""] + [f"{n} {m}{arrows[m]}" for n in names for m, _, _ in METRICS]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for who, other in ((BASELINE, MODEL), (MODEL, BASELINE)):
            cells = [who]
            for n in names:
                for metric, _, higher in METRICS:
                    value, rival = scores[n][who][metric], scores[n][other][metric]
                    best = value > rival if higher else value < rival
                    cells.append(f"**{value:.4f}**" if best else f"{value:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        text += [f"## {title}\n", *lines, ""]
    return "\n".join(text)


class EditReports(PeriodicHooks):
    """Sample grids (`on_sample`) and evaluation tables (`on_eval`) on fixed evaluation sets."""

    def __init__(self, eval_sets: Mapping[str, Batch], *, seed: int, grid_per_set: int = 2):
        self.eval_sets = {name: {k: np.asarray(v) for k, v in batch.items()} for name, batch in eval_sets.items()}
        self.names = list(self.eval_sets)
        self.sizes = [len(batch["target"]) for batch in self.eval_sets.values()]
        keys = set.intersection(*(set(batch) for batch in self.eval_sets.values()))
        self.batch = {k: np.concatenate([self.eval_sets[n][k] for n in self.names]) for k in keys}
        self.grid_per_set = grid_per_set
        self.rng = jax.random.key(seed)
        self._sample = None
        self._edited_at: tuple[int, dict[str, np.ndarray]] | None = None

    def edited(self, step: int, method: Method, model: nnx.Module) -> dict[str, np.ndarray]:
        """Edited images (N, H, W, 3) in [-1, 1] per set name; sampled once per step."""
        if self._edited_at is None or self._edited_at[0] != step:
            graphdef, params, frozen = nnx.split(model, method.trainable, ...)
            if self._sample is None:  # compiled once: the graph is the same at every call

                def sample(params, frozen, batch, rng):
                    return method.sample(nnx.merge(graphdef, params, frozen), batch, rng)

                self._sample = jax.jit(sample)
            edited = np.asarray(jax.device_get(self._sample(params, frozen, self.batch, self.rng)))
            self._edited_at = (step, dict(zip(self.names, np.split(edited, np.cumsum(self.sizes)[:-1]))))
        return self._edited_at[1]

    def on_sample(self, view: TrainView, batch: Batch) -> None:
        self.write_grid(view.step, view.workdir, view.writer, view.method, view.model(ema=True))

    def on_eval(self, view: TrainView) -> None:
        self.write_tables(view.step, view.workdir, view.writer, view.method, view.model(ema=True))

    def write_grid(self, step: int, workdir: str, writer: metric_writers.MetricWriter, method: Method,
                   model: nnx.Module) -> str:
        """Samples with `model`; process 0 writes WORKDIR/samples/step_N.png; returns that path."""
        edited = self.edited(step, method, model)
        path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
        if jax.process_index() != 0:
            return path
        k = self.grid_per_set
        columns = [np.concatenate([edited[n][:k] if c == "edited" else self.eval_sets[n][c][:k] for n in self.names])
                   for c in GRID_COLUMNS]
        grid = image_grid(columns)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(grid).save(path)
        writer.write_images(step, {"samples": grid[None]})
        return path

    def write_tables(self, step: int, workdir: str, writer: metric_writers.MetricWriter, method: Method,
                     model: nnx.Module) -> dict[str, dict]:
        """Scores `model`; process 0 writes WORKDIR/eval/step_N.{json,md} and the scalars; returns the scores."""
        scores = score_edits(self.eval_sets, self.edited(step, method, model))
        if jax.process_index() != 0:
            return scores
        stem = os.path.join(workdir, "eval", f"step_{step:07d}")
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        with open(stem + ".json", "w") as f:
            json.dump({"step": step, "scores": scores}, f, indent=2)
        with open(stem + ".md", "w") as f:
            f.write(markdown_tables(scores, step))
        writer.write_scalars(step, {f"eval/{name}/{who}/{metric}": value
                                    for name, by_who in scores.items()
                                    for who, values in by_who.items() for metric, value in values.items()})
        return scores
