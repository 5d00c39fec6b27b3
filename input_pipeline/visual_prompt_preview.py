"""A PNG of the visual-prompt grids: one row per synthesisable task on the bundled photos, hint | target.

    python -m input_pipeline.visual_prompt_preview --out grid.png [--cell 96] [--seed 0] [--index 0]

Each row shows the 2 x 2 hint [[x_r, y_r], [x_q, masked]] (answer cell at HINT_FILL, mid grey) next to the
target [[x_r, y_r], [x_q, y_q]], both from example `--index` of that task alone (in-distribution tasks first,
then the out-of-distribution ones, marked OOD).
"""
from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from input_pipeline.sources import BundledSource
from input_pipeline.visual_tasks import OOD_TASKS, SYNTHESISABLE_TASKS, assemble_grid, visual_prompt_example_fn

LABEL_WIDTH = 130
HEADER_HEIGHT = 18
GUTTER = 6


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return ((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


def task_grids(task: str, cell: int, seed: int, index: int) -> dict[str, np.ndarray]:
    """Hint and target grids `(2 cell, 2 cell, 3)` in [-1, 1] of example `index` of `task` alone."""
    make = visual_prompt_example_fn(BundledSource("train"), cell, seed, (task,))
    example = next(iter(tf.data.Dataset.from_tensors(tf.constant(index, tf.int64)).map(make)))
    grid = assemble_grid(example["reference_input"], example["reference_output"], example["query"],
                         example["answer"])
    return {"hint": grid["hint"].numpy(), "target": grid["target"].numpy()}


def render(rows: dict[str, dict[str, np.ndarray]], cell: int) -> Image.Image:
    """The rows side by side (hint, target) under a header, each labelled with its task name."""
    side = 2 * cell
    canvas = Image.new("RGB", (LABEL_WIDTH + 2 * (side + GUTTER), HEADER_HEIGHT + len(rows) * (side + GUTTER)),
                       (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, title in enumerate(("hint [[x_r, y_r], [x_q, masked]]", "target [[x_r, y_r], [x_q, y_q]]")):
        draw.text((LABEL_WIDTH + column * (side + GUTTER) + 4, 3), title, fill="black")
    for row, (task, grids) in enumerate(rows.items()):
        top = HEADER_HEIGHT + row * (side + GUTTER)
        draw.text((4, top + 4), task + (" (OOD)" if task in OOD_TASKS else ""), fill="black")
        for column, field in enumerate(("hint", "target")):
            canvas.paste(Image.fromarray(_to_uint8(grids[field])), (LABEL_WIDTH + column * (side + GUTTER), top))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--cell", type=int, default=96, help="cell side in pixels (a multiple of 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", type=int, default=0, help="example index shown for every task")
    args = parser.parse_args(argv)
    rows = {task: task_grids(task, args.cell, args.seed, args.index) for task in SYNTHESISABLE_TASKS}
    render(rows, args.cell).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
