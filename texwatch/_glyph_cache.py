"""An Agg canvas that lays out each text and renders each glyph once per batch of figures.

Matplotlib 3.11 lays out text with FreeType and then renders it one glyph at a time from
Python, setting the font's size and transform before each: about half of a ``texwatch
diagnose`` frame. The six panels of one image and the next image's share most strings (tick
labels, legend entries, axis labels) and most glyphs at the same position within the pixel.
:class:`GlyphCacheCanvas` keeps each string's layout and each rendered glyph bitmap, keyed by
everything that makes FreeType's output differ, and blends a kept bitmap onto the canvas with
the very call matplotlib uses: the pixels are the ones matplotlib draws, bit for bit.
With a matplotlib whose Agg renderer draws text otherwise (before 3.11) it draws as Agg does.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg

__all__ = ["GlyphCacheCanvas"]

_MAX_ENTRIES = 8192  # per cache; a batch of diagnose figures holds about 1,100 glyphs

# The per-glyph text path of matplotlib >= 3.11 that this cache stands in for.
_PER_GLYPH = hasattr(RendererAgg, "_draw_text_glyphs_and_boxes") and hasattr(
    backend_agg, "RenderMode"
)


class GlyphCacheCanvas(FigureCanvasAgg):
    """A ``FigureCanvasAgg`` whose renderer keeps text layouts and glyph bitmaps."""

    def get_renderer(self) -> RendererAgg:
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if self._lastKey != key:
            self.renderer = _GlyphCacheRenderer(w, h, self.figure.dpi)
            self._lastKey = cast(Any, key)  # as FigureCanvasAgg keeps it
        return self.renderer

    def forget_glyphs(self) -> None:
        """Drop the kept layouts and bitmaps: a new batch of figures starts from none."""
        renderer = getattr(self, "renderer", None)
        if isinstance(renderer, _GlyphCacheRenderer):
            renderer.layouts.clear()
            renderer.glyphs.clear()


class _GlyphCacheRenderer(RendererAgg):
    """``RendererAgg`` with its text layouts and glyph bitmaps kept (matplotlib >= 3.11)."""

    def __init__(self, width: float, height: float, dpi: float) -> None:
        super().__init__(width, height, dpi)
        self.layouts: dict[tuple, tuple] = {}
        self.glyphs: dict[tuple, tuple[Any, np.ndarray, int, int]] = {}

    def draw_text(
        self,
        gc: Any,
        x: float,
        y: float,
        s: str,
        prop: Any,
        angle: float,
        ismath: Any = False,
        mtext: Any = None,
    ) -> None:
        if ismath or not _PER_GLYPH:  # mathtext: matplotlib keeps its parses itself
            super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
            return
        features = mtext.get_fontfeatures() if mtext is not None else None
        language = mtext.get_language() if mtext is not None else None
        flags = backend_agg.get_hinting_flag()
        key = (s, prop, None if features is None else tuple(features), language, flags)
        glyphs = self.layouts.get(key)
        if glyphs is None:
            font = self._prepare_font(prop)
            items = font._layout(s, flags=flags, features=features, language=language)
            size = prop.get_size_in_points()
            glyphs = tuple(
                (item.ft_object, size, item.glyph_index, 0, 1, item.x, item.y) for item in items
            )
            if len(self.layouts) >= _MAX_ENTRIES:
                self.layouts.clear()
            self.layouts[(s, prop.copy(), *key[2:])] = glyphs
        self._draw_text_glyphs_and_boxes(gc, x, y, angle, glyphs, [])

    def _draw_text_glyphs_and_boxes(
        self, gc: Any, x: float, y: float, angle: float, glyphs: Any, boxes: Any
    ) -> None:
        """As ``RendererAgg`` draws glyphs (y downwards), each glyph's bitmap rendered once per
        font, size, transform and position within the pixel (FreeType's 1/64 px)."""
        cos = math.cos(math.radians(angle))
        sin = math.sin(math.radians(angle))
        flags = backend_agg.get_hinting_flag()
        antialiased = bool(gc.get_antialiased())
        mode = backend_agg.RenderMode.NORMAL if antialiased else backend_agg.RenderMode.MONO
        height = self.height
        draw = self._renderer.draw_text_image
        for font, size, glyph_index, slant, extend, dx, dy in glyphs:  # dy is upwards
            px = round(0x40 * (x + dx * cos - dy * sin))
            py = round(0x40 * (height - y + dx * sin + dy * cos))  # FreeType's y is upwards
            sub = (px & 63, py & 63)  # the position within the pixel, 1/64 px
            key = (id(font), size, glyph_index, slant, extend, angle, sub, flags, antialiased)
            found = self.glyphs.get(key)
            if found is None:
                font.set_size(size, self.dpi)
                font._set_transform(
                    (
                        0x10000
                        * np.array([[cos, -sin], [sin, cos]])
                        @ [[extend, extend * slant], [0, 1]]
                    )
                    .round()
                    .astype(int),
                    list(sub),  # the rest moves the bitmap by whole pixels
                )
                bitmap = font._render_glyph(glyph_index, flags, mode)
                buffer = np.array(bitmap.buffer)
                if not antialiased:
                    buffer *= 0xFF
                if len(self.glyphs) >= _MAX_ENTRIES:
                    self.glyphs.clear()
                # the font is kept with its bitmaps so that its id is not reused
                found = self.glyphs[key] = (font, buffer, bitmap.left, bitmap.top)
            _, buffer, left, top = found
            # draw_text_image's y is downwards & the bitmap bottom side
            draw(buffer, (px >> 6) + left, int(height) - ((py >> 6) + top) + buffer.shape[0], 0, gc)
        if boxes:
            super()._draw_text_glyphs_and_boxes(gc, x, y, angle, (), boxes)
