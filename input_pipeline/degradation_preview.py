"""A PNG grid of the eight Diff-Plugin degradations: one row per bundled photo, columns clean + each task.

    python -m input_pipeline.degradation_preview --out grid.png [--size 192] [--seed 0]

The photos are the scikit-image ones the bundled source serves (train and held-out splits), centre-cropped to
squares of `--size` px; row r uses the example seed `example_seed(--seed, r)`, and the degradations run inside
`tf.data.Dataset.map`, as in training.
"""
from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from input_pipeline.degradations import DEGRADATIONS, degrade
from input_pipeline.images import resize_short_side
from input_pipeline.randomness import example_seed
from input_pipeline.sources import BundledSource

COLUMNS = ("clean", *DEGRADATIONS)
LABEL_WIDTH = 150
HEADER_HEIGHT = 18


def bundled_photos(size: int) -> tuple[list[str], np.ndarray]:
    """Names and `(N, size, size, 3)` float32 centre crops in [0, 1] of every bundled photo."""
    names, crops = [], []
    for split in ("train", "heldout"):
        source = BundledSource(split)
        for index, name in enumerate(source.ids):
            photo = resize_short_side(source.load(index)[0], size)
            top, left = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2
            names.append(name)
            crops.append(photo[top:top + size, left:left + size])
    return names, np.stack(crops)


def degrade_all(photos: np.ndarray, seed: int) -> np.ndarray:
    """`(N, 1 + 8, S, S, 3)`: each photo, then its eight degradations (in `DEGRADATIONS` order)."""
    def row(index, photo):
        example = example_seed(seed, index)
        return tf.stack([photo] + [degrade(task, photo, example) for task in DEGRADATIONS])

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(photos), dtype=tf.int64), photos)).map(row)
    return np.stack(list(dataset.as_numpy_iterator()))


def render_grid(names: list[str], rows: np.ndarray) -> Image.Image:
    """Labelled grid of `rows` `(N, C, S, S, 3)` in [0, 1]: photo names on the left, COLUMNS on top."""
    size = rows.shape[2]
    tile = size + 2  # a 2 px gutter
    canvas = Image.new("RGB", (LABEL_WIDTH + len(COLUMNS) * tile, HEADER_HEIGHT + len(rows) * tile),
                       (190, 190, 190))
    draw = ImageDraw.Draw(canvas)
    for c, column in enumerate(COLUMNS):
        draw.text((LABEL_WIDTH + c * tile + 4, 3), column, fill="black")
    for r, (name, images) in enumerate(zip(names, rows)):
        top = HEADER_HEIGHT + r * tile
        draw.text((4, top + 4), name, fill="black")
        for c, image in enumerate(images):
            canvas.paste(Image.fromarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)),
                         (LABEL_WIDTH + c * tile, top))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--size", type=int, default=192, help="side of each square tile in pixels")
    parser.add_argument("--seed", type=int, default=0, help="run seed of the per-row example seeds")
    args = parser.parse_args(argv)
    names, photos = bundled_photos(args.size)
    render_grid(names, degrade_all(photos, args.seed)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
