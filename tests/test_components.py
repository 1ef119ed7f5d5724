"""Connected regions (scipy.ndimage) against counts known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from texwatch._components import regions
from texwatch.spectral import sobel_anomalies


def _mortar_grid(size: int = 512, brick: tuple[int, int] = (24, 56), mortar: int = 4):
    """A running-bond brick wall: (mask, bricks). ``mask`` is True on the mortar; ``bricks``
    lists every brick's half-open box (y0, x0, y1, x1), clipped to the image, by construction."""
    bh, bw = brick
    mask = np.ones((size, size), dtype=bool)
    bricks = []
    for row, y in enumerate(range(0, size, bh + mortar)):
        shift = 0 if row % 2 == 0 else -(bw + mortar) // 2  # every other course offset by half
        for x in range(shift, size, bw + mortar):
            y0, x0, y1, x1 = y, max(x, 0), min(y + bh, size), min(x + bw, size)
            if y1 > y0 and x1 > x0:
                mask[y0:y1, x0:x1] = False
                bricks.append((y0, x0, y1, x1))
    return mask, bricks


def test_mortar_grid_bricks_are_counted_and_boxed() -> None:
    mask, bricks = _mortar_grid()
    found = regions(~mask)  # the bricks: each a region of its own
    assert len(found.boxes) == len(bricks) > 100
    assert sorted(found.boxes) == sorted(bricks)
    assert sorted(found.areas.tolist()) == sorted(
        (y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in bricks
    )
    assert list(found.areas) == sorted(found.areas, reverse=True)  # largest first
    # The mortar is one region spanning the wall.
    mortar = regions(mask)
    assert len(mortar.boxes) == 1 and mortar.boxes == ((0, 0, 512, 512),)
    assert int(mortar.areas[0]) == int(mask.sum())


def test_min_area_drops_small_regions_and_ties_keep_raster_order() -> None:
    hot = np.zeros((20, 20), dtype=bool)
    hot[1:3, 10:12] = True  # 4 px, first in raster order among the 4-px regions
    hot[5, 5] = True  # 1 px
    hot[8:10, 1:3] = True  # 4 px
    hot[12:18, 12:14] = True  # 12 px
    found = regions(hot, min_area=4)
    assert found.boxes == ((12, 12, 18, 14), (1, 10, 3, 12), (8, 1, 10, 3))
    assert found.areas.tolist() == [12, 4, 4]
    assert len(regions(hot).boxes) == 4
    assert len(regions(np.zeros((8, 8), dtype=bool)).boxes) == 0


def test_diagonal_neighbours_are_one_region_eight_connectivity() -> None:
    # Pixels that touch only at a corner: 8-connectivity (the one used) joins them; counted by
    # hand, 4-connectivity would see every pixel of this checkerboard as a region of its own.
    hot = np.add.outer(np.arange(6), np.arange(6)) % 2 == 0
    found = regions(hot)
    assert len(found.boxes) == 1 and found.boxes == ((0, 0, 6, 6),) and found.areas[0] == 18
    diagonal = np.zeros((5, 5), dtype=bool)
    diagonal[1, 1] = diagonal[2, 2] = diagonal[3, 3] = True  # a diagonal line
    diagonal[0, 4] = True  # alone: its nearest pixel is 2 px away
    found = regions(diagonal)
    assert len(found.boxes) == 2 and found.boxes == ((1, 1, 4, 4), (0, 4, 1, 5))


def test_sobel_anomalies_regions_on_a_brick_wall() -> None:
    # Bright bricks on dark mortar, noise-free: the median Sobel magnitude is 0, so every pixel
    # the 3 × 3 kernel sees an edge from is anomalous, i.e. the pixels within one px (corners
    # included) of a brick's outline. Bricks are 4 px apart, so each brick is one region whose
    # box is the brick's grown by one px on every side, clipped to the image.
    size = 256
    mask, bricks = _mortar_grid(size=size)
    image = torch.from_numpy(np.where(mask, 0.2, 0.8).astype(np.float32))[None, None]
    got = sobel_anomalies(image, threshold=1.0)[0]
    grown = [
        (max(y0 - 1, 0), max(x0 - 1, 0), min(y1 + 1, size), min(x1 + 1, size))
        for y0, x0, y1, x1 in bricks
    ]
    assert got.count == len(bricks)
    assert sorted(got.boxes) == sorted(grown)


@pytest.mark.parametrize("shape", [(1, 16), (16, 1), (1, 1)])
def test_thin_maps(shape: tuple[int, int]) -> None:
    hot = np.ones(shape, dtype=bool)
    found = regions(hot)
    assert len(found.boxes) == 1 and found.boxes == ((0, 0, *shape),)


def test_scipy_is_imported_only_when_regions_are_counted() -> None:
    import subprocess
    import sys

    code = "import sys, texwatch.client, texwatch.spectral; print('scipy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
