"""The glyph cache draws the pixels matplotlib's Agg renderer draws, from its kept glyphs too."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from texwatch._glyph_cache import GlyphCacheCanvas


def _figure(canvas: type, shift: float) -> Figure:
    """Texts of several sizes, angles, fonts and positions within the pixel, some repeated."""
    fig = Figure(figsize=(4.0, 3.0), dpi=100)
    canvas(fig)
    ax = fig.add_axes((0.15, 0.2, 0.8, 0.7))
    ax.plot([0.0, 1.0], [0.0, 1.0], label="ring energy")
    ax.set_xlabel("radius (N / period px)")
    ax.set_ylabel("lag y (px)")  # turned 90°
    ax.set_yscale("log")  # mathtext tick labels
    ax.set_ylim(1e-2, 1e3)
    ax.legend(loc="upper left", fontsize=7)
    for i, text in enumerate(("0.1234", "nan", "0.1234", "f* = 32.0", "Wäll $5")):
        fig.text(0.2 + shift + 0.013 * i, 0.1 + 0.17 * i, text, fontsize=6 + i, rotation=15 * i)
    fig.text(0.6, 0.5, "fixed width 12", family="monospace", fontsize=7)
    return fig


def _pixels(fig: Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.array(fig.canvas.buffer_rgba())


def test_cached_text_is_matplotlibs_bit_for_bit() -> None:
    for shift in (0.0, 0.00137):
        want = _pixels(_figure(FigureCanvasAgg, shift))
        fig = _figure(GlyphCacheCanvas, shift)
        first = _pixels(fig)
        renderer = fig.canvas.get_renderer()
        kept = len(renderer.glyphs)
        again = _pixels(fig)  # every glyph from the cache
        assert kept > 0 and len(renderer.glyphs) == kept
        assert np.array_equal(first, want) and np.array_equal(again, want)
        fig.canvas.forget_glyphs()
        assert not renderer.glyphs and not renderer.layouts
        assert np.array_equal(_pixels(fig), want)
