"""``texwatch diagnose``'s figure, drawn many times on one reused matplotlib figure.

:func:`diagnosis_figure` gives this thread's :class:`DiagnosisFigure`; its
:meth:`~DiagnosisFigure.render_pixels` draws one image's 2 × 3 panels — the image with its
anomaly boxes, log spectrum, radial profile, ACF, difference heatmap and metric table — as
:func:`texwatch.plots.draw_anomalies`, :func:`~texwatch.plots.draw_log_spectrum`,
:func:`~texwatch.plots.draw_radial_profile`, :func:`~texwatch.plots.draw_acf`,
:func:`~texwatch.plots.draw_heatmap` and :func:`~texwatch.plots.draw_text_table` draw them on a
new figure (``tests/test_diagnosis_figure.py`` holds the two to within antialiasing), in a
fraction of the time. Nothing here touches pyplot.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, cast

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle, Ellipse

from texwatch._glyph_cache import GlyphCacheCanvas
from texwatch._image_picks import ImagePicks
from texwatch._images import to_display
from texwatch.plots import (
    MARKERS,
    SpectrumPanel,
    _acf_view,
    _as_numpy,
    _finite,
    _marker_radii,
    _spectrum_view,
    axes_grid,
    axes_pixels,
    fit_pixels,
    literal,
    new_figure,
    png_rgb,
)

__all__ = ["DiagnosisFigure", "diagnosis_figure"]

_FIGURES = threading.local()


def diagnosis_figure() -> DiagnosisFigure:
    """This thread's :class:`DiagnosisFigure`, made on first use and kept for later calls.

    A new figure costs as much as several frames: its axes, and matplotlib's caches of text
    metrics and parsed math, which belong to one canvas. ``texwatch diagnose`` draws every
    image, in every call, on the same one; it keeps about 30 MB (the canvas and up to four saved
    backgrounds of 1500 × 900 RGBA).
    """
    fig = getattr(_FIGURES, "figure", None)
    if fig is None:
        fig = _FIGURES.figure = DiagnosisFigure()
    return fig


class DiagnosisFigure:
    """``texwatch diagnose``'s figure of one image, built once and redrawn for every image.

    The layout is the one :func:`draw_anomalies`, :func:`draw_log_spectrum`,
    :func:`draw_radial_profile`, :func:`draw_acf`, :func:`draw_heatmap` and
    :func:`draw_text_table` give on a 2 × 3 grid, and the figure shows what they draw. What makes
    it cheaper to draw many times:

    - one figure on one Agg canvas: its axes and artists are made once; a frame swaps the data
      of the images, lines and patches, and reuses a legend whose labels it has drawn before;
    - what does not change from image to image (the panels' fixed titles, the metric names) is
      drawn once and restored from a saved background at the start of each frame;
    - ticks are one line collection per axis (:class:`_LeanTicks`) instead of tick artists of
      five parts each, and tick labels, values, titles and axis labels are drawn straight
      through the renderer (:class:`_Stamp`), measured once per string; axis labels are placed
      by arithmetic on the tick label widths instead of matplotlib's search through their boxes;
    - an image more than twice its panel's size in pixels is first reduced by whole blocks:
      the image and the ACF by their mean, the spectrum and the difference heatmap by their
      maximum (so a spectral peak or a one-pixel difference still shows); the image goes in as
      RGBA bytes, the heatmap as float32;
    - the images are drawn from the source pixels matplotlib picks for each screen pixel,
      asked once per geometry (:class:`~texwatch._image_picks.ImagePicks`);
    - the canvas keeps text layouts and glyph bitmaps for the batch of figures
      (:class:`~texwatch._glyph_cache.GlyphCacheCanvas`); :meth:`start_batch` drops them, the
      picks and the legends;
    - the anomaly boxes are one collection.

    Not thread-safe: use one per thread (:func:`diagnosis_figure`).
    """

    _TABLE_COLUMN = 26  # names are padded to this width, as draw_text_table pads them
    _FIRST, _PITCH = 0.923, 1.263  # first baseline and row pitch, in font sizes (as before)

    def __init__(self, *, width: float = 15.0, height: float = 9.0, dpi: int = 100) -> None:
        from matplotlib.collections import PolyCollection

        fig = new_figure(width, height)
        GlyphCacheCanvas(fig)  # each string laid out, each glyph rendered once per batch
        fig.set_dpi(dpi)
        self.figure = fig
        ax = axes_grid(fig, 2, 3)
        self._ax = ax
        # As set_title places it, in the room grid_spec leaves.
        self._title = fig.text(0.5, 1 - 0.12 / height, "", fontsize=11, ha="center", va="top")

        a = ax[0, 0]
        self._image = a.imshow(np.zeros((1, 1, 3), np.uint8), interpolation="nearest")
        self._boxes = PolyCollection(
            [], facecolors="none", edgecolors="red", linewidths=1.0, joinstyle="miter"
        )
        a.add_collection(self._boxes, autolim=False)
        a.set_title("", fontsize=9, y=1.0)
        a.set_axis_off()

        a = ax[0, 1]
        self._spectrum = a.imshow(
            np.zeros((2, 2)), cmap="viridis", interpolation="nearest", aspect="auto"
        )
        self._rings = {}
        for name in ("f*", "2f*", "f*/2", "ref"):
            colour, style = MARKERS[name]
            ring = Ellipse((0.0, 0.0), 1.0, 1.0, fill=False, color=colour, ls=style, lw=1.2)
            ring.set_label(name)
            self._rings[name] = a.add_patch(ring)
        a.set_aspect("equal")
        self._labels(a, "log power spectrum", "kx (FFT index)", "ky (FFT index)")

        a = ax[0, 2]
        (self._profile,) = a.plot([], [], color="tab:blue", lw=1.0, label="ring energy")
        (self._floor,) = a.plot([], [], color="gray", lw=0.8, ls="--", label="noise floor")
        self._lines = {}
        for name in ("f*", "2f*", "f*/2", "ref"):
            colour, style = MARKERS[name]
            self._lines[name] = a.axvline(0.0, color=colour, ls=style, lw=1.1)
        self._labels(a, "radial profile", "radius (N / period px)", "energy")

        a = ax[1, 0]
        self._acf = a.imshow(
            np.zeros((2, 2)), cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest"
        )
        self._acf_ring = a.add_patch(Circle((0.0, 0.0), 1.0, fill=False, color="tab:green", lw=1.4))
        self._fft_ring = a.add_patch(
            Circle((0.0, 0.0), 1.0, fill=False, color=MARKERS["f*"][0], ls="--", lw=1.0)
        )
        self._labels(a, "autocorrelation", "lag x (px)", "lag y (px)")

        a = ax[1, 1]
        self._heat_full = a.get_position()
        self._heat = a.imshow(np.zeros((2, 2)), cmap="magma", interpolation="nearest")
        self._bar = fig.colorbar(self._heat, ax=a, shrink=0.8)
        self._bar.ax.tick_params(labelsize=7)
        self._heat_shrunk = a.get_position()
        a.set_title("", fontsize=9, y=1.0)
        a.set_axis_off()

        a = ax[1, 2]
        a.set_title("metrics", fontsize=9, y=1.0)
        a.set_axis_off()
        # Drawn straight through the renderer (see _Stamp): the figure's title, the titles that
        # change and the x axis labels.
        text_color = mpl.rcParams["text.color"]
        title_color = mpl.rcParams["axes.titlecolor"]
        self._heading = _Stamp(fig, size=11, color=text_color)
        self._heads = _Stamp(
            fig, size=9, color=text_color if title_color == "auto" else title_color
        )
        self._xlabels = _Stamp(fig, size=8, color=mpl.rcParams["axes.labelcolor"])
        self._title_pad = float(mpl.rcParams["axes.titlepad"])
        self._xlabel_at: dict[Axes, tuple[float, float]] = {}
        self._ylabel_at: dict[Axes, tuple[float, float]] = {}
        self._legends: dict[tuple, Any] = {}  # (axes, labels) → Legend, least recent first
        self._legend_of: dict[Axes, Any] = {}  # this frame's legend of each axes
        self._rows: list[Any] = []  # the table's name texts (static)
        self._values: list[tuple[int, str]] = []  # (row, value) drawn per frame
        self._mono = _Stamp(fig, size=7.0, family="monospace", color=mpl.rcParams["text.color"])

        self._ticks = {
            a: (_LeanTicks(a.xaxis, labelsize=7), _LeanTicks(a.yaxis, labelsize=7))
            for a in (ax[0, 1], ax[0, 2], ax[1, 0])
        }
        # Drawn once into the background: the fixed titles and the metric names.
        self._static = {ax[i, j].title for i, j in ((0, 1), (0, 2), (1, 0), (1, 2))}
        self._backgrounds: dict[str, Any] = {}  # table names → the static part's pixels
        # drawn from the source pixels matplotlib picks, asked once per geometry
        self._picks = ImagePicks()
        self._picked = {self._image, self._spectrum, self._acf, self._heat}

    def start_batch(self) -> None:
        """Start a new batch of figures: drop the legends, text sizes, layouts and glyph bitmaps
        and the image pixel picks kept so far, so a batch gains only from what its own figures
        share."""
        self._legends.clear()
        for stamp in (self._heading, self._heads, self._xlabels, self._mono):
            stamp.forget()
        for ticks in self._ticks.values():
            for t in ticks:
                t.stamp.forget()
        cast(GlyphCacheCanvas, self.figure.canvas).forget_glyphs()
        self._picks.forget()

    @staticmethod
    def _labels(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
        ax.set_title(title, fontsize=9, y=1.0)  # fixed: no search for tick labels above
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)

    def _fit(
        self, ax: Axes, a: np.ndarray, extent: tuple[float, float, float, float], how: str
    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """``a`` (its pixels on ``extent``) block-reduced to the panel's size, and its extent."""
        h, w = a.shape[:2]
        fitted, k = fit_pixels(a, *axes_pixels(ax), how=how)
        if k == 1:
            return a, extent
        left, right, bottom, top = extent
        sx, sy = (right - left) / w, (bottom - top) / h  # data units per source pixel
        return fitted, (left, left + fitted.shape[1] * k * sx, top + fitted.shape[0] * k * sy, top)

    def _show(self, im: Any, ax: Axes, a: np.ndarray, extent: Any, how: str) -> None:
        """Show ``a`` (its pixels on ``extent``) in ``im``, block-reduced to the panel's size."""
        a, extent = self._fit(ax, a, extent, how)
        im.set_data(a)
        im.set_extent(extent)

    def render_pixels(
        self,
        image: np.ndarray | torch.Tensor,
        panel: SpectrumPanel,
        *,
        boxes: Sequence[Sequence[float]],
        heat: np.ndarray | None,
        heat_title: str,
        metrics: Mapping[str, object],
        title: str,
        image_title: str,
    ) -> np.ndarray:
        """Draw one image's figure and return its pixels, (H, W, 4) uint8 RGBA, opaque (a copy;
        :func:`texwatch.plots.png_rgb` encodes it).

        Args:
            image: the (C, H, W) image (shown as :func:`texwatch._images.to_display` shows it).
            panel: its :func:`spectrum_panel`.
            boxes: anomaly boxes ``(y0, x0, y1, x1)``, half-open, in pixels.
            heat: (H, W) difference heatmap, or ``None`` (the panel then says there is none).
            heat_title: the heatmap panel's title.
            metrics: ``name: value`` rows of the table (floats to 4 significant digits).
            title: the figure's title, drawn literally.
            image_title: the image panel's title.
        """
        return np.array(
            self._frame(
                image,
                panel,
                boxes=boxes,
                heat=heat,
                heat_title=heat_title,
                metrics=metrics,
                title=title,
                image_title=image_title,
            )
        )

    def render(
        self, image: np.ndarray | torch.Tensor, panel: SpectrumPanel, **kwargs: Any
    ) -> bytes:
        """:meth:`render_pixels`, encoded as PNG (:func:`png_rgb`)."""
        return png_rgb(self._frame(image, panel, **kwargs))

    def _frame(
        self,
        image: np.ndarray | torch.Tensor,
        panel: SpectrumPanel,
        *,
        boxes: Sequence[Sequence[float]],
        heat: np.ndarray | None,
        heat_title: str,
        metrics: Mapping[str, object],
        title: str,
        image_title: str,
    ) -> np.ndarray:
        """Set every panel and draw: the canvas' RGBA pixels (a view, valid until the next draw)."""
        self._title.set_text(title)  # drawn as plain text (a _Stamp), "$" and all
        self._set_image(image, boxes, image_title)
        self._set_spectrum(panel)
        self._set_profile(panel)
        self._set_acf(panel)
        self._set_heat(heat, heat_title)
        self._set_table(metrics)
        return self._draw()

    def _set_image(
        self, image: np.ndarray | torch.Tensor, boxes: Sequence[Sequence[float]], title: str
    ) -> None:
        a = self._ax[0, 0]
        raw = _as_numpy(image)
        h, w = raw.shape[-2:]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
        if (
            raw.shape[0] in (1, 3)
            and fit_pixels(raw[0], *axes_pixels(a))[1] == 1
            and 0 <= lo <= hi <= 1
        ):
            # Grey or RGB in [0, 1] at the panel's size: what to_display shows, quantized as
            # imshow quantizes floats, without the float64 round trip.
            shown = (raw * 255.0).astype(np.uint8).transpose(1, 2, 0)
            fitted = extent
        else:
            shown, fitted = self._fit(a, to_display(raw), extent, "mean")
            shown = (shown * 255.0).astype(np.uint8)
        # Opaque RGBA, which imshow takes as it is (RGB or grey it converts first).
        rgba = np.empty((shown.shape[0], shown.shape[1], 4), np.uint8)
        rgba[:, :, :3] = shown.reshape(shown.shape[0], shown.shape[1], -1)
        rgba[:, :, 3] = 255
        self._image.set_data(rgba)
        self._image.set_extent(fitted)
        a.set_xlim(extent[0], extent[1])
        a.set_ylim(extent[2], extent[3])
        self._boxes.set_verts(
            [
                [
                    (x0 - 0.5, y0 - 0.5),
                    (x1 - 0.5, y0 - 0.5),
                    (x1 - 0.5, y1 - 0.5),
                    (x0 - 0.5, y1 - 0.5),
                ]
                for y0, x0, y1, x1 in boxes
            ]
        )
        a.title.set_text(title)  # drawn as plain text

    def _set_spectrum(self, panel: SpectrumPanel) -> None:
        a = self._ax[0, 1]
        view = _spectrum_view(panel)
        self._show(self._spectrum, a, view.crop, view.extent, "max")
        self._spectrum.set_clim(*view.clim)
        a.set_xlim(view.extent[0], view.extent[1])
        a.set_ylim(view.extent[2], view.extent[3])
        h, w = panel.log_power.shape
        n = panel.n
        marked = dict(view.marks)
        for name, ring in self._rings.items():
            ring.set_visible(name in marked)
            if name in marked:
                ring.set_width(2 * marked[name] * w / n)
                ring.set_height(2 * marked[name] * h / n)
        self._legend(a, [self._rings[name] for name, _ in view.marks])

    def _set_profile(self, panel: SpectrumPanel) -> None:
        a = self._ax[0, 2]
        radii, prof, floor = panel.radii, panel.profile, panel.floor
        good = np.isfinite(prof) & (prof > 0)
        fgood = np.isfinite(floor) & (floor > 0)
        self._profile.set_data(radii[good], prof[good])
        self._floor.set_data(radii[fgood], floor[fgood])
        self._floor.set_visible(bool(fgood.any()))
        scale = "log" if good.any() else "linear"
        if a.get_yscale() != scale:
            a.set_yscale(scale)
        a.set_autoscaley_on(True)
        a.relim(visible_only=True)
        a.autoscale_view(scalex=False)
        if good.any():
            beyond = prof[good & (radii >= 3.0)]
            if beyond.size:  # the DC lobe's near-zero rings would squash the scale
                a.set_ylim(bottom=0.2 * float(np.percentile(beyond, 1.0)))
        marks = dict(_marker_radii(panel.f_star, panel.ref_radius))
        for name, line in self._lines.items():
            line.set_visible(name in marks)
            if name in marks:
                line.set_xdata([marks[name], marks[name]])
                line.set_label(f"{name} = {marks[name]:.1f}")
        if radii.size:
            a.set_xlim(0.0, float(radii[-1]))
        handles = [self._profile] + ([self._floor] if fgood.any() else [])
        self._legend(a, handles + [self._lines[name] for name in marks])

    def _set_acf(self, panel: SpectrumPanel) -> None:
        a = self._ax[1, 0]
        view = _acf_view(panel)
        self._show(self._acf, a, view.crop, view.extent, "mean")
        a.set_xlim(view.extent[0], view.extent[1])
        a.set_ylim(view.extent[2], view.extent[3])
        handles = []
        for ring, period, label in (
            (self._acf_ring, panel.acf_period, "ACF period {:.1f} px"),
            (self._fft_ring, panel.fft_period, "FFT period N/f* {:.1f} px"),
        ):
            on = _finite(period) and period > 0
            ring.set_visible(on)
            if on:
                ring.set_radius(period)
                ring.set_label(label.format(period))
                handles.append(ring)
        self._legend(a, handles)

    def _set_heat(self, heat: np.ndarray | None, title: str) -> None:
        a = self._ax[1, 1]
        self._heat.set_visible(heat is not None)
        self._bar.ax.set_visible(heat is not None)
        if heat is None:
            a.set_position(self._heat_full)
            a.set_aspect("auto")  # an empty panel fills its cell, as with no draw_heatmap
            a.title.set_text("no difference heatmap (first image, or other size)")
            return
        hm = np.asarray(heat, dtype=np.float32)  # imshow resamples float32 at half the cost
        a.set_position(self._heat_shrunk)
        a.set_aspect("equal")
        h, w = hm.shape
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)
        self._show(self._heat, a, hm, extent, "max")
        finite = hm[np.isfinite(hm)]  # imshow's own colour range: the data's
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        self._heat.set_clim(lo, hi)
        a.set_xlim(extent[0], extent[1])
        a.set_ylim(extent[2], extent[3])
        a.title.set_text(title)

    def _set_table(self, metrics: Mapping[str, object]) -> None:
        """One row per metric: the name (kept in the background) and its value.

        The rows sit at a fixed pitch, both columns on the same baselines, with the values at
        column 27 of the monospaced font, where :func:`draw_text_table`'s padded lines put them.
        """
        from matplotlib.transforms import ScaledTranslation

        a = self._ax[1, 2]
        while len(self._rows) < len(metrics):
            shift = ScaledTranslation(
                0.0, -self._baseline(len(self._rows)) / 72.0, self.figure.dpi_scale_trans
            )
            name = a.text(
                0.0,
                1.0,
                "",
                transform=a.transAxes + shift,
                va="baseline",
                ha="left",
                fontproperties=self._mono.prop,
            )
            self._static.add(name)
            self._rows.append(name)
        for name_text in self._rows[len(metrics) :]:
            name_text.set_text("")
        self._values = []
        for i, (name_text, (name, value)) in enumerate(
            zip(self._rows, metrics.items(), strict=False)
        ):
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            name = str(name)
            if len(name) > self._TABLE_COLUMN:  # a long name pushes its value right
                name_text.set_text(literal(f"{name} {shown}"))
                continue
            name_text.set_text(literal(name))
            self._values.append((i, shown))

    def _baseline(self, row: int) -> float:
        """Points from the table's top to the baseline of ``row``."""
        return (self._FIRST + row * self._PITCH) * self._mono.prop.get_size_in_points()

    def _draw_values(self, renderer: Any) -> None:
        box = self._ax[1, 2].bbox
        pt = self.figure.dpi / 72.0
        column = self._mono.width(" " * (self._TABLE_COLUMN + 1))
        for row, text in self._values:
            self._mono.draw(
                renderer, text, box.x0 + column, box.y1 - self._baseline(row) * pt, math=False
            )

    def _legend(self, ax: Axes, handles: list) -> None:
        """The legend ``ax.legend(handles=...)`` would make; kept for its labels' next use."""
        from matplotlib.legend import Legend

        if not handles:
            self._legend_of[ax] = None
            return
        key = (id(ax), *(h.get_label() for h in handles))
        legend = self._legends.pop(key, None)  # re-inserted: most recent last
        if legend is None:
            labels = [h.get_label() for h in handles]
            legend = Legend(ax, handles, labels, fontsize=7, loc="upper right", framealpha=0.6)
            if len(self._legends) >= 32:
                self._legends.pop(next(iter(self._legends)))
        self._legends[key] = legend
        self._legend_of[ax] = legend

    def _place_labels(self, ax: Axes, ticks: tuple[_LeanTicks, _LeanTicks]) -> None:
        """Put the axis labels where matplotlib's automatic placement puts them: the label pad
        below (left of) the tick labels, measured from their strings instead of their boxes."""
        dpi = self.figure.dpi
        box = ax.bbox
        xticks, yticks = ticks
        pad = ax.xaxis.labelpad * dpi / 72.0
        below = xticks.reach + xticks.stamp.height() if xticks.shown else 0.0
        ax.xaxis.set_label_coords(0.5, -(below + pad) / box.height)
        self._xlabel_at[ax] = (box.x0 + box.width / 2.0, box.y0 - below - pad)
        pad = ax.yaxis.labelpad * dpi / 72.0
        widest = max((yticks.stamp.width(s) for s in yticks.shown), default=0.0)
        left = yticks.reach + widest if yticks.shown else 0.0
        ax.yaxis.set_label_coords(-(left + pad) / box.width, 0.5)
        self._ylabel_at[ax] = (box.x0 - left - pad, box.y0 + box.height / 2.0)

    def _dynamic(self, ax: Axes) -> list[Any]:
        """The artists of ``ax`` drawn per frame, in drawing order."""
        skip = {ax.patch, ax.xaxis, ax.yaxis, *self._static}  # axes: drawn by _LeanTicks
        if not ax.axison:  # as Axes.draw: no spines either
            skip |= set(ax.spines.values())
        children = [c for c in ax.get_children() if c not in skip]
        return sorted(children, key=lambda c: c.get_zorder())

    def _draw(self) -> np.ndarray:
        """Draw the frame on the canvas and return its RGBA pixels (a view of the canvas)."""
        canvas = cast(FigureCanvasAgg, self.figure.canvas)
        key = "\n".join(name.get_text() for name in self._rows)
        dynamic = [a for ax in self._ax.flat for a in self._dynamic(ax)]
        dynamic += [self._bar.ax, self._title]
        background = self._backgrounds.get(key)
        if background is None:
            shown = [a for a in dynamic if a.get_visible()]
            axes = [
                (axis, axis.get_visible()) for ax in self._ax.flat for axis in (ax.xaxis, ax.yaxis)
            ]
            for artist in shown:
                artist.set_visible(False)
            for axis, _ in axes:
                axis.set_visible(False)
            canvas.draw()  # only what is static: the background
            for artist in shown:
                artist.set_visible(True)
            for axis, visible in axes:
                axis.set_visible(visible)
            if len(self._backgrounds) >= 4:  # a few tables (with and without a diff row)
                self._backgrounds.pop(next(iter(self._backgrounds)))
            self._backgrounds[key] = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(background)
        renderer = canvas.get_renderer()
        for ax in self._ax.flat:
            ax.apply_aspect()
        pt = self.figure.dpi / 72.0
        for ax in self._ax.flat:
            for artist in self._dynamic(ax):
                if not artist.get_visible() or artist is ax.title:
                    continue
                if artist in self._picked:
                    self._picks.draw(artist, renderer)
                else:
                    artist.draw(renderer)
            if ax.title not in self._static:  # centred, the title pad above the axes
                box = ax.bbox
                x, y = box.x0 + box.width / 2.0, box.y1 + self._title_pad * pt
                self._heads.draw(renderer, ax.title.get_text(), x, y, ha="center", math=False)
            legend = self._legend_of.get(ax)
            if legend is not None:
                legend.draw(renderer)
            ticks = self._ticks.get(ax)
            if ticks is not None:
                for t in ticks:
                    t.draw(renderer)
                self._place_labels(ax, ticks)
                x, y = self._xlabel_at[ax]
                self._xlabels.draw(
                    renderer, ax.xaxis.label.get_text(), x, y, ha="center", va="top", math=False
                )
                x, y = self._ylabel_at[ax]
                self._xlabels.draw_vertical(renderer, ax.yaxis.label.get_text(), x, y)
        self._draw_values(renderer)
        if self._bar.ax.get_visible():
            self._bar.ax.draw(renderer)
        width, height = self.figure.bbox.width, self.figure.bbox.height
        self._heading.draw(
            renderer,
            self._title.get_text(),
            width / 2.0,
            height - 0.12 * self.figure.dpi,
            ha="center",
            va="top",
            math=False,
        )
        return np.asarray(canvas.buffer_rgba())


class _Stamp:
    """One-line texts of one font and colour, drawn straight through the renderer.

    ``Text.draw`` lays its text out anew on every draw. Labels that come back from frame to
    frame (tick labels, table values, titles) are measured here once per string, by a probe
    ``Text`` (so by matplotlib's own layout rules), and drawn at the baseline that layout gives
    them.
    """

    def __init__(
        self, figure: Figure, *, size: float, color: Any, family: str | None = None
    ) -> None:
        from matplotlib.font_manager import FontProperties
        from matplotlib.text import Text
        from matplotlib.transforms import IdentityTransform

        self.figure = figure
        self.prop = FontProperties(size=size, family=family)
        self.color = color
        self._antialiased = mpl.rcParams["text.antialiased"]
        self._probe = Text(0.0, 0.0, "", fontproperties=self.prop, va="baseline", ha="left")
        self._probe.set_transform(IdentityTransform())
        self._probe.set_figure(figure)
        self._metrics: dict[tuple[str, bool], tuple[float, float, float]] = {}

    def forget(self) -> None:
        """Drop the measured strings."""
        self._metrics.clear()

    def _measure(self, text: str, math: bool = False) -> tuple[float, float, float]:
        """(width, ascent, descent) of ``text``'s box about its baseline, in pixels."""
        found = self._metrics.get((text, math))
        if found is None:
            if len(self._metrics) > 4096:
                self._metrics.clear()
            self._probe.set_parse_math(math)
            self._probe.set_text(text)
            renderer = cast(FigureCanvasAgg, self.figure.canvas).get_renderer()
            box = self._probe.get_window_extent(renderer)
            found = self._metrics[(text, math)] = (box.width, box.y1, -box.y0)
        return found

    def width(self, text: str) -> float:
        """Width in pixels of ``text`` as a ``Text`` would draw it (mathtext if it holds $...$)."""
        from matplotlib.cbook import is_math_text

        return self._measure(text, is_math_text(text))[0]

    def height(self) -> float:
        """Height of a one-line label's box (font metrics: the same for every digit string)."""
        _, ascent, descent = self._measure("0")
        return ascent + descent

    def draw(
        self,
        renderer: Any,
        text: str,
        x: float,
        y: float,
        *,
        ha: str = "left",
        va: str = "baseline",
        math: bool | None = None,
    ) -> None:
        """Draw ``text`` anchored at display point (x, y) as a ``Text`` with ``ha``, ``va``.

        ``math`` None: mathtext when ``text`` holds a ``$...$`` pair, as ``Text`` decides;
        False: plain text, drawn as it is.
        """
        from matplotlib.cbook import is_math_text

        if not text:
            return
        if math is None:
            math = is_math_text(text)
            if not math:
                text = text.replace(r"\$", "$")
        width, ascent, _ = self._measure(text, math)
        x -= {"left": 0.0, "center": width / 2.0, "right": width}[ha]
        y -= {"baseline": 0.0, "top": ascent, "center_baseline": ascent / 2.0}[va]
        gc = renderer.new_gc()
        gc.set_foreground(self.color)
        gc.set_antialiased(self._antialiased)
        _, height = renderer.get_canvas_width_height()
        renderer.draw_text(gc, x, height - y, text, self.prop, 0.0, ismath=math)
        gc.restore()

    def draw_vertical(self, renderer: Any, text: str, x: float, y: float) -> None:
        """Draw plain ``text`` turned 90° as an axis' y label: its bottom edge (before the
        turn) centred on (x, y), as ``Text(ha="center", va="bottom", rotation=90,
        rotation_mode="anchor")`` draws it."""
        if not text:
            return
        width, _, descent = self._measure(text)
        gc = renderer.new_gc()
        gc.set_foreground(self.color)
        gc.set_antialiased(self._antialiased)
        _, height = renderer.get_canvas_width_height()
        # The baseline's start, (-width/2, descent) from the anchor, turned 90°.
        renderer.draw_text(gc, x - descent, height - (y - width / 2.0), text, self.prop, 90.0)
        gc.restore()


class _LeanTicks:
    """The ticks of one axis as one line collection and a text per label.

    Matplotlib's own ticks are artists of five parts each (two marks, two labels, a grid line)
    that copy their properties and lay themselves out on every draw: most of a frame's time
    here. These marks and labels sit where matplotlib's would: the axis' own locators and
    formatters choose them (major and minor, minor ones that fall on major ones dropped, those
    outside the view dropped), with the rcParams' tick sizes, widths, pads and colours. The
    axis itself is not drawn; the caller draws its label.
    """

    def __init__(self, axis: Any, *, labelsize: float) -> None:
        from matplotlib.collections import LineCollection
        from matplotlib.transforms import IdentityTransform

        self.axis = axis
        name = axis.axis_name
        rc: Any = mpl.rcParams
        sign = {"out": (0.0, -1.0), "in": (0.0, 1.0), "inout": (-0.5, 0.5)}[
            rc[f"{name}tick.direction"]
        ]
        self._style = {}
        for which in ("major", "minor"):
            size = rc[f"{name}tick.{which}.size"]
            out = size * max(-sign[0], -sign[1], 0.0)  # how far the mark reaches outwards
            self._style[which] = (
                size,
                rc[f"{name}tick.{which}.width"],
                out + rc[f"{name}tick.{which}.pad"],
            )
        self._sign = sign
        self._color = rc[f"{name}tick.color"]
        label_color = rc[f"{name}tick.labelcolor"]
        self._label_color = self._color if label_color == "inherit" else label_color
        self.stamp = _Stamp(
            axis.axes.get_figure(root=True), size=labelsize, color=self._label_color
        )
        self.prop = self.stamp.prop
        self.reach = 0.0  # px from the spine to the labels' near edge, set per frame
        self.shown: list[str] = []  # this frame's non-empty labels
        self._marks = LineCollection([], colors=self._color, snap=True, capstyle="butt")
        self._marks.set_transform(IdentityTransform())
        self._marks.set_clip_on(False)
        self._marks.set_figure(axis.axes.get_figure(root=True))

    def _locs(self) -> list[tuple[np.ndarray, list[str], str]]:
        """(locations, labels, "major"/"minor") of the ticks in view, as Axis._update_ticks."""
        from matplotlib.ticker import NullLocator

        axis = self.axis
        transform = axis.get_transform()
        lo, hi = sorted(axis.get_view_interval())
        tlo, thi = sorted(transform.transform([lo, hi]))
        tol = (thi - tlo) * 1e-10
        major = np.asarray(axis.get_major_locator()(), dtype=float)
        out = []
        minor_locator = axis.get_minor_locator()
        minor = np.zeros(0)
        if not isinstance(minor_locator, NullLocator):
            minor = np.asarray(minor_locator(), dtype=float)
            if axis.remove_overlapping_locs and minor.size and major.size:
                close = (thi - tlo) * 1e-5
                tmin, tmaj = transform.transform(minor), transform.transform(major)
                near = np.isclose(tmin[:, None], tmaj[None, :], atol=close, rtol=0).any(1)
                minor = minor[~near]
        for locs, formatter, which in (
            (major, axis.get_major_formatter(), "major"),
            (minor, axis.get_minor_formatter(), "minor"),
        ):
            if not locs.size:
                continue
            labels = formatter.format_ticks(locs)
            t = transform.transform(locs)
            inside = (t >= tlo - tol) & (t <= thi + tol)
            kept = [s for s, k in zip(labels, inside, strict=True) if k]
            out.append((locs[inside], kept, which))
        return out

    def draw(self, renderer: Any) -> None:
        axis = self.axis
        ax = axis.axes
        fig = ax.get_figure(root=True)
        pt = fig.dpi / 72.0
        box = ax.bbox
        is_x = axis.axis_name == "x"
        segments, widths, labels = [], [], []
        self.shown = []
        for locs, texts, which in self._locs():
            size, width, reach = self._style[which]
            if is_x:
                px = ax.transData.transform(np.column_stack([locs, np.zeros_like(locs)]))[:, 0]
            else:
                px = ax.transData.transform(np.column_stack([np.zeros_like(locs), locs]))[:, 1]
            a, b = self._sign[0] * size * pt, self._sign[1] * size * pt
            # Agg puts a tick marker's origin on the spine rounded half up, as here.
            spine = math.floor((box.y0 if is_x else box.x0) + 0.5)
            for p, text in zip(px, texts, strict=True):
                if is_x:
                    segments.append(((p, spine + a), (p, spine + b)))
                else:
                    segments.append(((spine + a, p), (spine + b, p)))
                widths.append(width)
                if text:
                    labels.append((p, text, reach * pt))
                    self.shown.append(text)
        self.reach = max((r for _, _, r in labels), default=0.0)
        self._marks.set_segments(segments)
        self._marks.set_linewidth(widths)
        self._marks.draw(renderer)
        for p, text, reach in labels:
            if is_x:
                self.stamp.draw(renderer, text, p, box.y0 - reach, ha="center", va="top")
            else:
                self.stamp.draw(renderer, text, box.x0 - reach, p, ha="right", va="center_baseline")
        offset = axis.get_major_formatter().get_offset()
        if offset:  # as matplotlib places the offset text: past the axis' far end
            axis.offsetText.set_text(offset)
            if is_x:
                lowest = box.y0 - (self.reach + self.stamp.height() if labels else 0.0)
                axis.offsetText.set_position((1.0, lowest - axis.OFFSETTEXTPAD * pt))
            else:
                axis.offsetText.set_position((0.0, box.y1 + axis.OFFSETTEXTPAD * pt))
            axis.offsetText.draw(renderer)
