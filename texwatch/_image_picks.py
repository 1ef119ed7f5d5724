"""Nearest-neighbour ``imshow`` images drawn from kept pixel picks instead of a full resample.

With ``interpolation="nearest"``, every screen pixel of an image shows one source pixel.
Matplotlib finds out which by resampling the whole image (converted to float RGBA, or its data
and a mask of it) on every draw, then colours the result: about a fifth of a ``texwatch
diagnose`` frame. :class:`ImagePicks` asks matplotlib once per geometry (source size, extent,
place on the canvas), by resampling an image whose pixels hold their own numbers, and then
draws each frame by gathering and colouring the picked pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.image import AxesImage
from matplotlib.transforms import Bbox, TransformedBbox

__all__ = ["ImagePicks"]

_MAX_PIXELS = 1 << 24  # pixel numbers ride in the three colour bytes
_MAX_GEOMETRIES = 16


class ImagePicks:
    """Draws nearest-neighbour ``AxesImage`` artists from the source pixels matplotlib picks.

    The pixels drawn are matplotlib's: the same source pixel at every screen pixel (Agg's own
    choice, asked of it), coloured by the image's norm and colormap. Data images are coloured
    after the pick, as matplotlib colours them when it resamples their data; where it colours
    before resampling instead (images shown at less than three screen pixels per data pixel),
    colours may differ by one level of 255. Images that are not nearest-neighbour, have an alpha
    of their own, are not 2-D data or RGBA bytes, or hold 2²⁴ pixels or more are drawn by
    matplotlib.
    """

    def __init__(self) -> None:
        self._maps: dict[tuple, tuple[np.ndarray | None, float, float]] = {}

    def forget(self) -> None:
        """Drop the kept picks."""
        self._maps.clear()

    def draw(self, image: AxesImage, renderer: Any) -> None:
        """Draw ``image`` on ``renderer`` as ``image.draw(renderer)`` does."""
        a = image.get_array()
        if not image.get_visible() or a is None or a.size == 0:
            return
        rgba = a.ndim == 3 and a.shape[2] == 4 and a.dtype == np.uint8
        if (
            image.get_interpolation() != "nearest"
            or image.get_alpha() is not None
            or not (a.ndim == 2 or rgba)
            or a.shape[0] * a.shape[1] >= _MAX_PIXELS
        ):
            image.draw(renderer)
            return
        index, left, bottom = self._picks(image, a.shape[:2], renderer)
        if index is None:
            return
        inside = index >= 0
        at = np.where(inside, index, 0)
        if rgba:
            pixels = a.reshape(-1, 4)[at]
        else:
            values = np.ma.getdata(a).reshape(-1)[at]
            masked = np.ma.getmaskarray(a).reshape(-1)[at]
            pixels = image.to_rgba(np.ma.masked_array(values, masked), bytes=True)
        pixels[~inside] = 0
        artist: Any = image  # matplotlib's own helpers, as AxesImage.draw uses them
        gc = renderer.new_gc()
        artist._set_gc_clip(gc)
        gc.set_alpha(artist._get_scalar_alpha())
        renderer.draw_image(gc, left, bottom, pixels)
        gc.restore()

    def _picks(
        self, image: AxesImage, shape: tuple[int, int], renderer: Any
    ) -> tuple[np.ndarray | None, float, float]:
        """(H', W') source pixel numbers (-1: none) on the canvas, and where they go."""
        x1, x2, y1, y2 = image.get_extent()
        box = Bbox(np.array([[x1, y1], [x2, y2]]))
        shown = TransformedBbox(box, image.get_transform())
        artist: Any = image
        clip = (
            (artist.get_clip_box() or artist.axes.bbox)
            if artist.get_clip_on()
            else artist.get_figure(root=True).bbox
        )
        magnification = renderer.get_image_magnification()
        key = (
            shape,
            image.origin,
            magnification,
            tuple(box.extents),
            tuple(shown.extents),
            tuple(clip.extents),
        )
        found = self._maps.get(key)
        if found is None:
            h, w = shape
            numbers = np.arange(h * w, dtype="<u4").view(np.uint8).reshape(h, w, 4).copy()
            numbers[:, :, 3] = 255  # opaque: resampled as they are
            out, left, bottom, _ = artist._make_image(numbers, box, shown, clip, magnification)
            index = None
            if out is not None:
                index = out[:, :, :3].astype(np.int64) @ np.array([1, 1 << 8, 1 << 16])
                index[out[:, :, 3] == 0] = -1
            if len(self._maps) >= _MAX_GEOMETRIES:
                self._maps.pop(next(iter(self._maps)))
            found = self._maps[key] = (index, left, bottom)
        return found
