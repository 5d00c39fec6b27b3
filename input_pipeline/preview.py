"""A PNG gallery of the evaluation sets: per task set, source / reference / mask / target of a few examples.

    python -m input_pipeline.preview --config configs/multitask.py --out grid.png [--examples 2]

`--config` is any Python file whose `get_config()` returns a ConfigDict with a `.data` field
(`path.py:arg` passes `arg` to `get_config`).

The other methods' data have galleries of their own:

    python -m input_pipeline.degradation_preview --out grid.png     # Diff-Plugin's eight degradations
    python -m input_pipeline.visual_prompt_preview --out grid.png   # visual prompting: hint and target grids
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline.config import validate_data_config
from input_pipeline.pipeline import create_eval_sets

COLUMNS = ("source", "reference", "mask", "target")
LABEL_WIDTH = 150
HEADER_HEIGHT = 18
MIN_TILE = 128


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Runs `get_config([arg])` of the config file `path[:arg]`."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _to_uint8(field: str, image: np.ndarray) -> np.ndarray:
    if field == "mask":
        return np.repeat((image * 255).astype(np.uint8), 3, axis=-1)
    return ((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


def render_gallery(eval_sets: dict[str, dict[str, np.ndarray]], examples: int) -> Image.Image:
    """One row per task set; `examples` groups of the four COLUMNS, tiles upscaled to >= MIN_TILE px."""
    crop = next(iter(eval_sets.values()))["source"].shape[1]
    scale = max(1, -(-MIN_TILE // crop))
    tile = crop * scale + 2  # a 2 px gutter between tiles
    width = LABEL_WIDTH + examples * len(COLUMNS) * tile
    # Grey background, so a mask of ones (white) is still seen as a tile.
    canvas = Image.new("RGB", (width, HEADER_HEIGHT + len(eval_sets) * tile), (190, 190, 190))
    draw = ImageDraw.Draw(canvas)
    for e in range(examples):
        for c, field in enumerate(COLUMNS):
            draw.text((LABEL_WIDTH + (e * len(COLUMNS) + c) * tile + 4, 3), field, fill="black")
    for row, (name, batch) in enumerate(eval_sets.items()):
        top = HEADER_HEIGHT + row * tile
        vector = ", ".join(f"{v:.3g}" for v in batch["edit_vector"][0][:4])
        draw.text((4, top + 4), name, fill="black")
        draw.text((4, top + 20), f"C[:4] = {vector}", fill="grey")
        for e in range(examples):
            for c, field in enumerate(COLUMNS):
                image = Image.fromarray(_to_uint8(field, batch[field][e]))
                image = image.resize((tile - 2, tile - 2), Image.Resampling.NEAREST)
                canvas.paste(image, (LABEL_WIDTH + (e * len(COLUMNS) + c) * tile, top))
    return canvas


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="config file (path.py or path.py:arg) with a .data field")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--examples", type=int, default=2, help="examples shown per task set")
    args = parser.parse_args(argv)
    data_config = load_config(args.config).data
    with data_config.unlocked():
        data_config.eval.size = args.examples
    validate_data_config(data_config)
    render_gallery(create_eval_sets(data_config), args.examples).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
