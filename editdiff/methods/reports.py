"""How every method's evaluators write their results, so that all results read alike.

- Scores: `WORKDIR/eval/step_NNNNNNN.json` = `{"step": N, "scores": {SET: {ARM: {METRIC: value}}}}` plus the
  same as markdown tables (`.md`: rows = arms, columns = set x metric, the best arm of each column in bold) and
  the scalars `eval/SET/ARM/METRIC` to the metric writer. Several evaluators of one step merge into one file.
  Every table carries a do-nothing or frozen-model arm beside the model, so a reader sees whether it helps.
- Sample grids: labelled PNGs (a header per column, a label per row) under `WORKDIR/NAME/step_NNNNNNN.png`,
  and the same image to the writer.
- `ModelFunction`: a function of a model compiled once per model graph (evaluators call it every period);
  `chunks`: fixed-size padded chunks of an evaluation set, so that one compiled program serves them all.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from clu import metric_writers
from flax import nnx
from PIL import Image, ImageDraw, ImageFont

Scores = Mapping[str, Mapping[str, Mapping[str, float]]]  # SET -> ARM -> METRIC -> value


class ModelFunction:
    """`fn(model, *args)` under `jax.jit`, traced once per model graph: the model enters as its state, so a
    model restored or updated with the same structure reuses the compiled program. `traces` counts traces."""

    def __init__(self, fn: Callable[..., Any]):
        self._fn = fn
        self._compiled: dict[nnx.GraphDef, Callable] = {}
        self.traces = 0

    def __call__(self, model: nnx.Module, *args):
        graphdef, state = nnx.split(model)
        compiled = self._compiled.get(graphdef)
        if compiled is None:
            def run(state, *args):
                self.traces += 1
                return self._fn(nnx.merge(graphdef, state), *args)

            compiled = self._compiled[graphdef] = jax.jit(run)
        return compiled(state, *args)


def chunks(images: np.ndarray, size: int):
    """(count, (size, ...) chunk) over `images`, the last padded by repeating its final image (one program)."""
    for start in range(0, len(images), size):
        chunk = images[start:start + size]
        yield len(chunk), np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])


def step_stem(workdir: str, folder: str, step: int) -> str:
    return os.path.join(workdir, folder, f"step_{step:07d}")


def markdown_tables(scores: Scores, step: int, higher_is_better: Mapping[str, bool],
                    groups: Sequence[tuple[str, Sequence[str]]] | None = None) -> str:
    """One table per group (title, set names; default: one table of every set): rows = arms, columns = set x
    metric with an arrow for the better direction; the best arm of each column in bold."""
    text = [f"# Evaluation at step {step}\n"]
    groups = groups or (("Scores", list(scores)),)
    for title, names in groups:
        names = [n for n in names if n in scores]
        if not names:
            continue
        columns = [(n, m) for n in names for m in next(iter(scores[n].values()))]
        arms = list(dict.fromkeys(arm for n in names for arm in scores[n]))
        header = [""] + [f"{n} {m}{'↑' if higher_is_better.get(m, True) else '↓'}" for n, m in columns]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        best = {}
        for n, m in columns:
            values = [scores[n][a][m] for a in arms if a in scores[n] and m in scores[n][a]]
            finite = [v for v in values if np.isfinite(v)]
            if len(finite) > 1:
                best[n, m] = max(finite) if higher_is_better.get(m, True) else min(finite)
        for arm in arms:
            cells = [arm]
            for n, m in columns:
                value = scores[n].get(arm, {}).get(m)
                if value is None:
                    cells.append("–")
                else:
                    cells.append(f"**{value:.4f}**" if best.get((n, m)) == value else f"{value:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
        text += [f"## {title}\n", *lines, ""]
    return "\n".join(text)


def write_scores(workdir: str, step: int, scores: Scores, *, higher_is_better: Mapping[str, bool],
                 writer: metric_writers.MetricWriter | None = None,
                 groups: Sequence[tuple[str, Sequence[str]]] | None = None) -> str:
    """Merges `scores` into `WORKDIR/eval/step_N.json`, rewrites its markdown twin from the merged scores and
    writes the scalars; process 0 only. Returns the JSON path."""
    stem = step_stem(workdir, "eval", step)
    if jax.process_index() != 0:
        return stem + ".json"
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    merged: dict = {}
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json") as f:
            merged = json.load(f)["scores"]
    merged.update({name: {arm: dict(values) for arm, values in by_arm.items()} for name, by_arm in scores.items()})
    with open(stem + ".json", "w") as f:
        json.dump({"step": step, "scores": merged}, f, indent=2)
    with open(stem + ".md", "w") as f:
        f.write(markdown_tables(merged, step, higher_is_better, groups))
    if writer is not None:
        writer.write_scalars(step, {f"eval/{name}/{arm}/{metric}": value for name, by_arm in scores.items()
                                    for arm, values in by_arm.items() for metric, value in values.items()})
    return stem + ".json"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) in [-1, 1], or masks (N, H, W, 1) in [0, 1], as (N, H, W, 3) uint8."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] == 1:
        images = np.repeat(images * 2.0 - 1.0, 3, axis=-1)
    return np.clip((images + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


_BACKGROUND, _INK, _GAP = (235, 235, 235), (20, 20, 20), 2


def labelled_grid(columns: Sequence[tuple[str, np.ndarray]], row_labels: Sequence[str]) -> np.ndarray:
    """One picture (H, W, 3) uint8: a header per column (its name), one row per example with its label on the
    left. Each column is (name, images (N, H, W, 3) in [-1, 1] or masks (N, H, W, 1) in [0, 1]), all of the
    same N = len(row_labels) and tile size."""
    font = ImageFont.load_default()
    tiles = [to_uint8(images) for _, images in columns]
    n, h, w, _ = tiles[0].shape
    if any(t.shape[:3] != (n, h, w) for t in tiles) or len(row_labels) != n:
        raise ValueError("labelled_grid: every column needs len(row_labels) images of one size")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    label_width = max([text_size(label)[0] for label in row_labels] + [0]) + 2 * _GAP
    column_widths = [max(w, text_size(name)[0] + 2 * _GAP) for name, _ in columns]
    header_height = max(text_size(name)[1] for name, _ in columns) + 3 * _GAP
    width = label_width + sum(column_widths) + _GAP * len(columns)
    canvas = Image.new("RGB", (width, header_height + n * (h + _GAP)), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = label_width
    for (name, _), tile, column_width in zip(columns, tiles, column_widths):
        draw.text((x + _GAP, _GAP), name, fill=_INK, font=font)
        for row in range(n):
            canvas.paste(Image.fromarray(tile[row]), (x + (column_width - w) // 2, header_height + row * (h + _GAP)))
        x += column_width + _GAP
    for row, label in enumerate(row_labels):
        y = header_height + row * (h + _GAP) + (h - text_size(label)[1]) // 2
        draw.text((_GAP, y), label, fill=_INK, font=font)
    return np.asarray(canvas)


def write_grid(workdir: str, step: int, grid: np.ndarray, *, folder: str = "samples",
               writer: metric_writers.MetricWriter | None = None) -> str:
    """Writes the picture as `WORKDIR/FOLDER/step_N.png` (and to the writer) on process 0; returns the path."""
    path = step_stem(workdir, folder, step) + ".png"
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(grid).save(path)
        if writer is not None:
            writer.write_images(step, {folder: grid[None]})
    return path
