"""Overlapping tiles for `--mode=edit` on images larger than a model takes at once, stitched back with feathered
seams: each output pixel is the weighted mean of the tiles covering it, a tile's weight ramping linearly from
its edges over the overlap, so neighbouring tiles cross-fade instead of meeting at a hard line."""
from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """The first rows (or columns) of tiles of `tile` px covering `length` px, consecutive tiles sharing at least
    `overlap` px; the last tile ends at the border. length >= tile > overlap >= 0."""
    if not length >= tile > overlap >= 0:
        raise ValueError(f"tiles of {tile} px overlapping by {overlap} px cannot cover {length} px")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride)) + [length - tile]
    return sorted(set(starts))


def split(image: np.ndarray, tile: tuple[int, int], overlap: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(H, W, C) -> tiles (N, th, tw, C) and their (top, left) positions, row by row."""
    positions = [(top, left) for top in tile_starts(image.shape[0], tile[0], overlap)
                 for left in tile_starts(image.shape[1], tile[1], overlap)]
    return np.stack([image[t:t + tile[0], l:l + tile[1]] for t, l in positions]), positions


def _ramp(size: int, overlap: int) -> np.ndarray:
    """(size,) weights: 1 in the middle, falling linearly to 1 / (overlap + 1) at both ends."""
    i = np.arange(size, dtype=np.float32)
    return np.minimum(1.0, np.minimum(i + 1, size - i) / (overlap + 1))


def stitch(tiles: np.ndarray, positions: list[tuple[int, int]], shape: tuple[int, int], overlap: int) -> np.ndarray:
    """The inverse of `split` for edited tiles (N, th, tw, C): the (H, W, C) feathered mean (float32)."""
    _, th, tw, c = tiles.shape
    weight = (_ramp(th, overlap)[:, None] * _ramp(tw, overlap)[None, :])[..., None]
    total = np.zeros((*shape, c), np.float32)
    norm = np.zeros((*shape, 1), np.float32)
    for tile, (top, left) in zip(tiles, positions):
        total[top:top + th, left:left + tw] += weight * tile
        norm[top:top + th, left:left + tw] += weight
    return total / norm
