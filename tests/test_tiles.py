"""Overlapping tiles of --mode=edit: they cover the image, and stitching unchanged tiles gives the image back."""
import numpy as np
import pytest

from editdiff.methods import tiles


@pytest.mark.parametrize("shape, tile, overlap", [((40, 28), (16, 16), 4), ((16, 16), (16, 16), 4),
                                                   ((33, 70), (16, 32), 8)])
def test_stitching_unchanged_tiles_returns_the_image(shape, tile, overlap):
    image = np.random.default_rng(0).random((*shape, 3)).astype(np.float32)
    pieces, positions = tiles.split(image, tile, overlap)
    assert pieces.shape[1:3] == tile
    np.testing.assert_allclose(tiles.stitch(pieces, positions, shape, overlap), image, rtol=1e-6)


def test_tiles_cover_every_pixel_and_overlap_by_at_least_the_overlap():
    starts = tiles.tile_starts(40, 16, 4)
    assert starts[0] == 0 and starts[-1] == 40 - 16
    assert all(b - a <= 16 - 4 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="cannot cover"):
        tiles.tile_starts(10, 16, 4)


def test_seams_cross_fade():
    """Two constant tiles of 0 and 1 meet in a linear ramp across their overlap, not a step."""
    pieces = np.stack([np.zeros((4, 8, 1)), np.ones((4, 8, 1))]).astype(np.float32)
    row = tiles.stitch(pieces, [(0, 0), (0, 4)], (4, 12), 4)[0, :, 0]
    assert row[0] == 0 and row[-1] == 1
    assert np.all(np.diff(row) >= 0) and np.max(np.diff(row)) < 0.5
