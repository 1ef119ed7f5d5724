"""Connected regions of a boolean map: :func:`scipy.ndimage.label` and ``find_objects``.

Used for the Sobel anomaly regions of :func:`texwatch.spectral.sobel_anomalies` (and so
``texwatch diagnose``). Regions are 8-connected: two pixels that touch only at a corner belong to
the same region. scipy is imported on first use, so nothing that only records a run
(``texwatch.client``) needs it; it comes with the ``report`` extra.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["EIGHT", "Regions", "regions"]

EIGHT = np.ones((3, 3), dtype=bool)
"""The structuring element of 8-connectivity (a pixel and its 8 neighbours)."""


class Regions(NamedTuple):
    """The regions of one map, largest first (ties in the raster order of their first pixel).

    Attributes:
        areas: (R,) pixels in each region.
        boxes: one ``(y0, x0, y1, x1)`` half-open box per region.
    """

    areas: np.ndarray
    boxes: tuple[tuple[int, int, int, int], ...]


def regions(hot: np.ndarray, *, min_area: int = 1) -> Regions:
    """The 8-connected regions of the boolean (H, W) map ``hot`` with at least ``min_area`` px."""
    from scipy import ndimage

    hot = np.asarray(hot, dtype=bool)
    if hot.ndim != 2:
        raise ValueError(f"hot has shape {hot.shape}, expected (H, W)")
    labels, n = ndimage.label(hot, structure=EIGHT)
    if n == 0:
        return Regions(np.zeros(0, np.int64), ())
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    slices = ndimage.find_objects(labels)
    keep = np.flatnonzero(areas >= min_area)
    order = keep[np.argsort(-areas[keep], kind="stable")]  # largest first, ties by label
    boxes = tuple(
        (slices[i][0].start, slices[i][1].start, slices[i][0].stop, slices[i][1].stop)
        for i in order
    )
    return Regions(areas[order], boxes)
