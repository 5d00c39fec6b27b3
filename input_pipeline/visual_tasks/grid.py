"""The GENIE 2 x 2 visual prompt: [[x_r, y_r], [x_q, ?]] with the answer cell masked.

`assemble_grid(reference_input, reference_output, query, answer=None)` takes four `(H, W, C)` cells (any range;
the example function gives [-1, 1]) and returns

    hint         (2H, 2W, C)  [[x_r, y_r], [x_q, HINT_FILL]]: the answer quadrant is the constant HINT_FILL = 0
                              (mid grey on the [-1, 1] scale, like the holes of the multitask pipeline's source),
                              whatever the answer, so the answer never leaks into the hint.
    target       (2H, 2W, C)  [[x_r, y_r], [x_q, y_q]], or None when `answer` is None (inference).
    answer_mask  (2H, 2W, 1)  1 on the answer (bottom-right) quadrant, 0 elsewhere; `1 - answer_mask` is the
                              keep mask in input_pipeline's inpainting convention (1 keep, 0 hole).

Cells of different shapes are a ValueError. `check_grid(cell_size, factor)` raises a ValueError when the grid
does not fit an autoencoder of downsampling `factor`: the cell side (not only the grid side) must be divisible
by it, so that the answer quadrant starts on a latent pixel and the latent mask is exactly that quadrant.
"""
from __future__ import annotations

import tensorflow as tf

HINT_FILL = 0.0


def check_grid(cell_size: int | tuple[int, int], factor: int) -> None:
    """ValueError unless both sides of the `cell_size` (int or (H, W)) cell are multiples of `factor`."""
    height, width = (cell_size, cell_size) if isinstance(cell_size, int) else tuple(cell_size)
    if height % factor or width % factor:
        raise ValueError(f"visual prompt grid: cells of {height}x{width} px (grid {2 * height}x{2 * width} px) are "
                         f"not divisible by the autoencoder factor {factor}; use a cell size that is a multiple "
                         f"of {factor}")


def assemble_grid(reference_input: tf.Tensor, reference_output: tf.Tensor, query: tf.Tensor,
                  answer: tf.Tensor | None = None, *, factor: int | None = None) -> dict[str, tf.Tensor | None]:
    """{'hint', 'target', 'answer_mask'} of the module docstring; `factor` also runs `check_grid`."""
    cells = {"reference_input": reference_input, "reference_output": reference_output, "query": query}
    if answer is not None:
        cells["answer"] = answer
    shapes = {name: tuple(cell.shape) for name, cell in cells.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"visual prompt grid: the cells differ in shape: {shapes}")
    height, width, channels = shapes["query"]
    if factor is not None:
        check_grid((height, width), factor)
    top = tf.concat([reference_input, reference_output], axis=1)
    masked = tf.fill([height, width, channels], tf.constant(HINT_FILL, query.dtype))
    hint = tf.concat([top, tf.concat([query, masked], axis=1)], axis=0)
    target = None if answer is None else tf.concat([top, tf.concat([query, answer], axis=1)], axis=0)
    answer_mask = tf.pad(tf.ones([height, width, 1], query.dtype), [[height, 0], [width, 0], [0, 0]])
    return {"hint": hint, "target": target, "answer_mask": answer_mask}
