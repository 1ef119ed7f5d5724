"""Matplotlib figures shared by the daemon's snapshots, ``texwatch report`` and ``diagnose``.

Every figure is a :class:`matplotlib.figure.Figure` on its own Agg canvas: nothing here touches
``pyplot``, so no global figure registry grows and no GUI backend is ever loaded, which keeps the
daemon's long-lived process and threaded callers safe. Panels (``draw_*``) draw onto one
``Axes`` from plain numpy arrays; figure builders lay panels out; :func:`figure_png` turns a
figure into PNG bytes. The spectrum markers are the same everywhere: f* (red, solid),
2f* (orange, dashed), f*/2 (violet, dashed) and the reference's f (black, dotted).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, cast

import numpy as np
import torch
from matplotlib import colormaps, font_manager, rcParams
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.gridspec import GridSpec, SubplotSpec
from matplotlib.patches import Circle, Ellipse, Rectangle
from PIL import Image, ImageDraw, ImageFont

from texwatch import spectral
from texwatch._images import to_display

__all__ = [
    "MARKERS",
    "SpectrumPanel",
    "draw_acf",
    "draw_anomalies",
    "draw_heatmap",
    "draw_image_grid",
    "draw_log_spectrum",
    "draw_loss",
    "draw_radial_profile",
    "draw_series",
    "draw_text_table",
    "axes_grid",
    "axes_pixels",
    "fast_png",
    "figure_png",
    "fit_pixels",
    "grid_spec",
    "image_grid",
    "literal",
    "new_figure",
    "png_rgb",
    "set_title",
    "snapshot_figure",
    "spectrum_panel",
]

MARKERS: dict[str, tuple[str, str]] = {
    "f*": ("tab:red", "-"),
    "2f*": ("tab:orange", "--"),
    "f*/2": ("tab:purple", "--"),
    "ref": ("black", ":"),
}
"""Colour and line style of each spectral marker, shared by every panel and the report's legend."""


@dataclass(frozen=True)
class SpectrumPanel:
    """What the spectrum, radial-profile and ACF panels draw for one image.

    Radii are :mod:`texwatch.spectral`'s radius units: ``r = N·√((kx/W)² + (ky/H)²)`` with
    ``N = max(H, W)``, so a period of T px sits at ``r = N/T`` at every angle.

    Attributes:
        log_power: (H, W) centred ``ln`` power spectrum, DC at ``(H // 2, W // 2)``.
        radii: (R,) centre of each radial bin, radius units.
        profile: (R,) ring sums of the power.
        floor: (R,) ring sums of the noise floor the f* search compares against.
        acf: (H, W) centred autocorrelation, 1 at lag 0 (at ``(H // 2, W // 2)``).
        f_star: fundamental radius f*; NaN when the image holds no periodic texture (the
            ``periodic`` metric of :func:`texwatch.spectral.texture_metrics`), as in the metrics.
        acf_period: the ACF's first-peak period in px; NaN likewise.
        ref_radius: the reference's f, or ``None`` without a reference.
    """

    log_power: np.ndarray
    radii: np.ndarray
    profile: np.ndarray
    floor: np.ndarray
    acf: np.ndarray
    f_star: float
    acf_period: float
    ref_radius: float | None = None

    @property
    def n(self) -> int:
        """N = max(H, W): radius units per cycle per pixel."""
        return max(self.log_power.shape)

    @property
    def fft_period(self) -> float:
        """The period in px that f* stands for, N / f* (NaN without f*)."""
        return self.n / self.f_star if _finite(self.f_star) and self.f_star > 0 else math.nan


def literal(text: str) -> str:
    """``text`` as matplotlib must draw it literally: ``$`` escaped, so a run name or a path
    holding dollar signs is never parsed as mathtext (which can fail at draw time)."""
    return text.replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches on its own Agg canvas (never pyplot).

    No layout engine: :func:`axes_grid` sets fixed margins in inches, which costs a fraction of
    constrained layout's text measuring on figures with dozens of axes.
    """
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def grid_spec(fig: Figure, rows: int, cols: int, *, title: bool = True) -> GridSpec:
    """A rows × cols grid filling ``fig`` with margins in inches (room for titles and labels)."""
    width, height = fig.get_size_inches()
    top = (0.8 if title else 0.3) / height
    cell_w = (width - 0.9) / cols
    cell_h = (height - 0.55 - top * height) / rows
    return fig.add_gridspec(
        rows,
        cols,
        left=0.6 / width,
        right=1 - 0.3 / width,
        bottom=0.55 / height,
        top=1 - top,
        wspace=min(0.9 / max(cell_w - 0.9, 0.5), 1.0),
        hspace=min(0.75 / max(cell_h - 0.75, 0.5), 1.0),
    )


def set_title(fig: Figure, text: str, *, fontsize: float = 11) -> None:
    """The figure's title, 0.12 in below its top edge (in the room :func:`grid_spec` leaves)."""
    height = fig.get_size_inches()[1]
    fig.suptitle(text, fontsize=fontsize, y=1 - 0.12 / height, va="top")


def axes_grid(fig: Figure, rows: int, cols: int, *, title: bool = True) -> np.ndarray:
    """A (rows, cols) array of axes on :func:`grid_spec`."""
    spec = grid_spec(fig, rows, cols, title=title)
    return np.array([[fig.add_subplot(spec[r, c]) for c in range(cols)] for r in range(rows)])


def figure_png(fig: Figure, *, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def spectrum_panel(
    x: np.ndarray | torch.Tensor,
    *,
    mask: np.ndarray | torch.Tensor | None = None,
    ref_radius: float | None = None,
    window: str = "hann",
    r_bins: int = 256,
) -> SpectrumPanel:
    """The spectrum views of the first image of ``x`` (B, C, H, W), for the panels.

    f* and the ACF period are NaN when the image holds no periodic texture (as
    :func:`texwatch.spectral.spectrum_views` gives them), so no panel marks a period the metrics
    call NaN.

    Args:
        x: the images; only ``x[0]`` is drawn (one image reads better than a blurred mean).
        mask: optional (B|1, 1, H, W) mask, as for :func:`texwatch.spectral.texture_metrics`.
        ref_radius: the reference's f, marked on the spectrum and the profile.
        window: apodization window (:data:`texwatch.spectral.WINDOWS`).
        r_bins: number of radial bins.
    """
    t = torch.as_tensor(_as_numpy(x)).float()
    if t.ndim != 4:
        raise ValueError(f"x has shape {tuple(t.shape)}, expected (B, C, H, W)")
    m = None if mask is None else torch.as_tensor(_as_numpy(mask)).float()[:1]
    views = spectral.spectrum_views(t[:1], mask=m, window=window, r_bins=r_bins)
    return _views_panel(views, ref_radius)


def _views_panel(views: spectral.SpectrumViews, ref_radius: float | None) -> SpectrumPanel:
    """The panel of the first image of ``views`` (as :func:`spectrum_panel` draws it)."""
    return SpectrumPanel(
        log_power=_as_numpy(views.log_power[0]),
        radii=_as_numpy(views.radii),
        profile=_as_numpy(views.radial_profile[0]),
        floor=_as_numpy(views.radial_floor[0]),
        acf=_as_numpy(views.acf_image[0]),
        f_star=float(views.fundamental_radius[0]),
        acf_period=float(views.acf_period[0]),
        ref_radius=ref_radius if ref_radius is not None and _finite(ref_radius) else None,
    )


def image_grid(
    images: np.ndarray | torch.Tensor, *, max_images: int = 16, gap: int = 2
) -> np.ndarray:
    """Tile up to ``max_images`` images (N, C, H, W) into one displayable (H', W'[, 3]) array."""
    arr = _as_numpy(images)
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise ValueError(f"images has shape {arr.shape}, expected (N, C, H, W) with N >= 1")
    tiles = [to_display(a) for a in arr[:max_images]]
    n = len(tiles)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = tiles[0].shape[:2]
    colour = any(t.ndim == 3 for t in tiles)
    shape = (rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap) + ((3,) if colour else ())
    out = np.ones(shape)
    for i, tile in enumerate(tiles):
        if colour and tile.ndim == 2:
            tile = np.repeat(tile[:, :, None], 3, axis=2)
        r, c = divmod(i, cols)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tile
    return out


def draw_image_grid(
    ax: Axes, images: np.ndarray | torch.Tensor, *, title: str = "samples", max_images: int = 16
) -> None:
    """Draw a grid of the first ``max_images`` images (N, C, H, W)."""
    grid = image_grid(images, max_images=max_images)
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _marker_radii(f_star: float, ref_radius: float | None) -> list[tuple[str, float]]:
    marks: list[tuple[str, float]] = []
    if _finite(f_star) and f_star > 0:
        marks += [("f*", f_star), ("2f*", 2.0 * f_star), ("f*/2", 0.5 * f_star)]
    if ref_radius is not None and _finite(ref_radius) and ref_radius > 0:
        marks.append(("ref", ref_radius))
    return marks


class _View(NamedTuple):
    """The part of a centred (H, W) map that a panel shows, and where it sits in the axes."""

    crop: np.ndarray
    extent: tuple[float, float, float, float]  # (left, right, bottom, top), imshow's order
    clim: tuple[float, float]
    marks: list  # the spectrum's (name, radius) markers, or the ACF's periods (px)


def _spectrum_view(panel: SpectrumPanel) -> _View:
    """The log spectrum zoomed around the markers (FFT indices) and its 5–99.9 % colour range."""
    lp = panel.log_power
    h, w = lp.shape
    cy, cx = h // 2, w // 2
    n = panel.n
    marks = _marker_radii(panel.f_star, panel.ref_radius)
    reach = max([r for _, r in marks], default=n / 4)
    half_x = int(min(max(1.3 * reach * w / n, 10.0), w / 2))
    half_y = int(min(max(1.3 * reach * h / n, 10.0), h / 2))
    y0, y1 = max(cy - half_y, 0), min(cy + half_y + 1, h)
    x0, x1 = max(cx - half_x, 0), min(cx + half_x + 1, w)
    crop = lp[y0:y1, x0:x1]
    finite = crop[np.isfinite(crop)]
    vmin, vmax = np.percentile(finite, [5.0, 99.9]) if finite.size else (0.0, 1.0)
    extent = (x0 - cx - 0.5, x1 - cx - 0.5, y1 - cy - 0.5, y0 - cy - 0.5)
    return _View(crop, extent, (float(vmin), float(vmax)), marks)


def _acf_view(panel: SpectrumPanel) -> _View:
    """The centre of the ACF, 2.2 periods around lag 0 (px), and the periods it rings."""
    acf = panel.acf
    h, w = acf.shape
    cy, cx = h // 2, w // 2
    periods = [p for p in (panel.acf_period, panel.fft_period) if _finite(p) and p > 0]
    reach = 2.2 * max(periods) if periods else min(h, w) / 8
    half = int(min(max(reach, 8.0), min(h, w) / 2))
    crop = acf[cy - half : cy + half + 1, cx - half : cx + half + 1]
    extent = (-half - 0.5, half + 0.5, half + 0.5, -half - 0.5)
    return _View(crop, extent, (-1.0, 1.0), periods)


def draw_log_spectrum(ax: Axes, panel: SpectrumPanel, *, title: str = "log power spectrum") -> None:
    """Draw the centred log spectrum, zoomed around the markers, with f*, 2f*, f*/2, ref rings.

    Axes are FFT indices (kx, ky); on a non-square image a radius is an ellipse there.
    """
    view = _spectrum_view(panel)
    crop, extent, (vmin, vmax), marks = view.crop, view.extent, view.clim, view.marks
    h, w = panel.log_power.shape
    n = panel.n
    ax.imshow(
        crop,
        cmap="viridis",
        vmin=vmin,
        vmax=vmax,
        extent=extent,
        interpolation="nearest",
        aspect="auto",
    )
    for name, r in marks:
        colour, style = MARKERS[name]
        ax.add_patch(
            Ellipse(
                (0.0, 0.0),
                2 * r * w / n,
                2 * r * h / n,
                fill=False,
                color=colour,
                ls=style,
                lw=1.2,
                label=name,
            )
        )
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("kx (FFT index)", fontsize=8)
    ax.set_ylabel("ky (FFT index)", fontsize=8)
    ax.tick_params(labelsize=7)
    if marks:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.6)


def draw_radial_profile(ax: Axes, panel: SpectrumPanel, *, title: str = "radial profile") -> None:
    """Draw the ring energy and its noise floor with f*, 2f*, f*/2 and ref lines."""
    radii, prof, floor = panel.radii, panel.profile, panel.floor
    good = np.isfinite(prof) & (prof > 0)
    ax.plot(radii[good], prof[good], color="tab:blue", lw=1.0, label="ring energy")
    fgood = np.isfinite(floor) & (floor > 0)
    if fgood.any():
        ax.plot(radii[fgood], floor[fgood], color="gray", lw=0.8, ls="--", label="noise floor")
    if good.any():
        ax.set_yscale("log")
        beyond = prof[good & (radii >= 3.0)]
        if beyond.size:  # the DC lobe's near-zero rings would squash the scale
            ax.set_ylim(bottom=0.2 * float(np.percentile(beyond, 1.0)))
    for name, r in _marker_radii(panel.f_star, panel.ref_radius):
        colour, style = MARKERS[name]
        ax.axvline(r, color=colour, ls=style, lw=1.1, label=f"{name} = {r:.1f}")
    if radii.size:
        ax.set_xlim(0.0, float(radii[-1]))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("radius (N / period px)", fontsize=8)
    ax.set_ylabel("energy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right", framealpha=0.6)


def draw_acf(ax: Axes, panel: SpectrumPanel, *, title: str = "autocorrelation") -> None:
    """Draw the centre of the 2-D ACF with rings at the ACF period and at the FFT period N/f*."""
    view = _acf_view(panel)
    periods = view.marks
    ax.imshow(
        view.crop,
        cmap="RdBu_r",
        vmin=-1.0,
        vmax=1.0,
        extent=view.extent,
        interpolation="nearest",
    )
    if _finite(panel.acf_period) and panel.acf_period > 0:
        ax.add_patch(
            Circle(
                (0.0, 0.0),
                panel.acf_period,
                fill=False,
                color="tab:green",
                lw=1.4,
                label=f"ACF period {panel.acf_period:.1f} px",
            )
        )
    if _finite(panel.fft_period):
        ax.add_patch(
            Circle(
                (0.0, 0.0),
                panel.fft_period,
                fill=False,
                color=MARKERS["f*"][0],
                ls="--",
                lw=1.0,
                label=f"FFT period N/f* {panel.fft_period:.1f} px",
            )
        )
    if periods:
        ax.legend(fontsize=7, loc="upper right", framealpha=0.6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("lag x (px)", fontsize=8)
    ax.set_ylabel("lag y (px)", fontsize=8)
    ax.tick_params(labelsize=7)


def draw_loss(
    ax: Axes,
    steps: np.ndarray,
    loss: np.ndarray,
    *,
    ema: np.ndarray | None = None,
    spike_steps: Sequence[int] = (),
    warn_steps: Sequence[int] = (),
    title: str = "loss",
) -> None:
    """Draw the loss, its EMA, alarms (red triangles) and warnings (orange triangles)."""
    steps = np.asarray(steps)
    loss = np.asarray(loss, dtype=np.float64)
    ax.plot(steps, loss, color="tab:blue", lw=0.7, alpha=0.6, label="loss")
    if ema is not None:
        ax.plot(steps, np.asarray(ema, dtype=np.float64), color="black", lw=1.2, label="EMA")
    for marks, colour, label in (
        (warn_steps, "tab:orange", "warning"),
        (spike_steps, "tab:red", "spike"),
    ):
        idx = np.nonzero(np.isin(steps, np.asarray(list(marks), dtype=np.int64)))[0]
        if idx.size:
            ax.scatter(steps[idx], loss[idx], marker="v", color=colour, s=28, zorder=3, label=label)
    finite = loss[np.isfinite(loss)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="upper right")


def draw_series(
    ax: Axes,
    steps: np.ndarray,
    series: Mapping[str, np.ndarray],
    *,
    title: str,
    ylabel: str = "",
    hlines: Mapping[str, float] | None = None,
    logy: bool = False,
    marker: str | None = None,
) -> None:
    """Draw several named series over the same steps, with optional labelled threshold lines."""
    steps = np.asarray(steps)
    for name, values in series.items():
        ax.plot(
            steps, np.asarray(values, dtype=np.float64), lw=1.0, marker=marker, ms=3, label=name
        )
    for name, y in (hlines or {}).items():
        ax.axhline(y, color="gray", ls="--", lw=0.9, label=name)
    if logy:
        ax.set_yscale("symlog", linthresh=1e-6)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if series or hlines:
        ax.legend(fontsize=7, loc="upper left", framealpha=0.6)


def draw_heatmap(ax: Axes, heat: np.ndarray, *, title: str = "|difference|") -> None:
    """Draw an (H, W) difference heatmap with its colour bar."""
    im = ax.imshow(np.asarray(heat, dtype=np.float64), cmap="magma", interpolation="nearest")
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.8)
    bar.ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def draw_anomalies(
    ax: Axes,
    image: np.ndarray | torch.Tensor,
    boxes: Sequence[Sequence[float]],
    *,
    title: str = "Sobel anomalies",
) -> None:
    """Draw one (C, H, W) image with each anomaly box ``(y0, x0, y1, x1)`` outlined in red."""
    ax.imshow(
        to_display(_as_numpy(image)), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    for y0, x0, y1, x1 in boxes:
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", lw=1.0)
        )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _table_text(rows: Mapping[str, object]) -> str:
    """``name: value`` lines, floats to 4 significant digits."""
    lines = []
    for name, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{name:<26} {shown}")
    return "\n".join(lines)


def draw_text_table(ax: Axes, rows: Mapping[str, object], *, title: str = "metrics") -> None:
    """Draw ``name: value`` pairs as a monospaced table (floats to 4 significant digits)."""
    ax.text(
        0.0,
        1.0,
        literal(_table_text(rows)),
        va="top",
        ha="left",
        family="monospace",
        fontsize=7,
        transform=ax.transAxes,
    )
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def snapshot_figure(
    *,
    images: np.ndarray | torch.Tensor,
    loss_steps: np.ndarray,
    loss: np.ndarray,
    loss_ema: np.ndarray | None = None,
    spike_steps: Sequence[int] = (),
    warn_steps: Sequence[int] = (),
    target: np.ndarray | torch.Tensor | None = None,
    ref_radius: float | None = None,
    heatmap_scale: float = 4.0,
    metrics: Mapping[str, object] | None = None,
    title: str = "",
    dpi: int = 100,
) -> bytes:
    """The daemon's snapshot for one run and interval, as PNG bytes (16 × 8 in at ``dpi``).

    Top row: sample grid of ``images``, log spectrum, radial profile (f*, 2f*, f*/2 and
    ``ref_radius`` marked) and ACF of ``images[0]``. Bottom row: loss with EMA and spike marks,
    the |images − target| heatmap when ``target`` (same shape) is given, and ``metrics``.
    Only the profile and the loss are matplotlib axes; the image panels are composed as pixels
    (colour maps and marker rings in numpy) and pasted 1:1, and their labels and the metrics
    are drawn by Pillow: axes and text layout are most of a matplotlib figure's cost.

    Args:
        images: (N, C, H, W) rows of the stream to show (pred, else latents).
        loss_steps: (S,) steps of the loss series.
        loss: (S,) loss values.
        loss_ema: (S,) EMA of the loss, or ``None``.
        spike_steps: steps flagged as spikes (alarm).
        warn_steps: steps flagged as warnings.
        target: (N, C, H, W) targets matching ``images``; enables the diff heatmap.
        ref_radius: the reference's f in FFT bins, or ``None``.
        heatmap_scale: gain of the diff heatmap (``texwatch diagnose --heatmap-scale``).
        metrics: name → value shown as a table (the interval's derived metrics).
        title: the figure's title (run name and step), drawn literally (``$`` included).
        dpi: pixels per inch of the PNG.
    """
    imgs = _as_numpy(images)
    heat = None
    if target is not None:
        tgt = _as_numpy(target)
        if tgt.shape != imgs.shape:
            raise ValueError(f"target has shape {tgt.shape}, expected images' shape {imgs.shape}")
        heat = _as_numpy(
            spectral.diff_heatmap(
                torch.as_tensor(imgs[:1]), torch.as_tensor(tgt[:1]), scale=heatmap_scale
            )
        )
    panel = spectrum_panel(imgs, ref_radius=ref_radius)
    fig = new_figure(16.0, 8.0)
    fig.set_dpi(dpi)
    grid = grid_spec(fig, 2, 4)
    layer = _Overlay(fig)
    layer.panel(grid[0, 0], image_grid(imgs), "samples", _as_rgb)
    _spectrum_pixels(layer, grid[0, 1], panel)
    draw_radial_profile(fig.add_subplot(grid[0, 2]), panel)
    _acf_pixels(layer, grid[0, 3], panel)
    draw_loss(
        fig.add_subplot(grid[1, :2]),
        np.asarray(loss_steps),
        np.asarray(loss),
        ema=loss_ema,
        spike_steps=spike_steps,
        warn_steps=warn_steps,
    )
    if heat is not None:
        plane = heat.reshape(heat.shape[-2:]).astype(np.float64)
        finite = plane[np.isfinite(plane)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        layer.panel(
            grid[1, 2],
            plane,
            f"|pred − target| × {heatmap_scale:g}: {low:.3g} to {high:.3g}",
            lambda a: _colour(a, "magma", low, high),
        )
    layer.table(grid[1, 3], metrics or {})
    if title:
        set_title(fig, literal(title))
    return layer.png()


class _Ring(NamedTuple):
    """An ellipse marked on a pixel panel: semi-axes in data units, colour, style, width."""

    a: float
    b: float
    colour: str
    style: str
    width: float  # points
    label: str


class _Label(NamedTuple):
    """Text drawn by Pillow at (x, y) pixels from the top left, with a Pillow anchor."""

    x: float
    y: float
    text: str
    points: float
    colour: str = "black"
    anchor: str = "la"
    mono: bool = False
    backdrop: bool = False  # a white, 60 % opaque box behind it, as a legend's


class _Overlay:
    """Pixel panels and labels laid over ``fig``'s grid cells after matplotlib draws it."""

    def __init__(self, fig: Figure) -> None:
        self._fig = fig
        self._width, self._height = int(fig.bbox.width), int(fig.bbox.height)
        self._pastes: list[tuple[np.ndarray, int, int]] = []  # pixels, left, top
        self._labels: list[_Label] = []

    def _box(self, cell: SubplotSpec) -> tuple[float, float, float, float]:
        """``cell``'s left, top, width and height in pixels from the top left."""
        box = cell.get_position(self._fig)
        w, h = self._width, self._height
        return box.x0 * w, (1 - box.y1) * h, box.width * w, box.height * h

    def panel(
        self,
        cell: SubplotSpec,
        data: np.ndarray,
        title: str,
        to_rgb: Callable[[np.ndarray], np.ndarray],
        *,
        extent: tuple[float, float, float, float] | None = None,
        rings: Sequence[_Ring] = (),
        how: str = "mean",
    ) -> None:
        """Show ``data`` (H, W[, 3]) in ``cell``, its aspect kept, with a title above.

        ``data`` is resampled to the pixels it covers (whole blocks reduced by ``how``, the
        rest nearest) before ``to_rgb`` colours it; ``rings`` are drawn on it in ``extent``'s
        data units (imshow's order: left, right, bottom, top) and listed at its top right.
        """
        left, top, width, height = self._box(cell)
        h, w = data.shape[:2]
        scale = min(width / w, height / h)
        out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
        rgb = to_rgb(_resample(data, out_h, out_w, how))
        if rings and extent is not None:
            _draw_rings(rgb, extent, rings, self._fig.dpi / 72.0)
        x0, y0 = round(left + (width - out_w) / 2), round(top + (height - out_h) / 2)
        self._pastes.append((rgb, x0, y0))
        self._labels.append(_Label(x0 + out_w / 2, y0 - 4, title, 9, anchor="ms"))
        line = 7 * 1.35 * self._fig.dpi / 72  # one 7 pt legend line
        for i, ring in enumerate(rings):
            y = y0 + 3 + i * line
            self._labels.append(
                _Label(x0 + out_w - 3, y, ring.label, 7, ring.colour, "ra", backdrop=True)
            )

    def table(self, cell: SubplotSpec, rows: Mapping[str, object]) -> None:
        """:func:`draw_text_table`'s table in ``cell``: a title, then monospaced rows."""
        left, top, width, _ = self._box(cell)
        self._labels.append(_Label(left + width / 2, top - 4, "metrics", 9, anchor="ms"))
        self._labels.append(_Label(left, top, _table_text(rows), 7, mono=True))

    def png(self) -> bytes:
        """Draw the figure, paste the panels, draw the labels: PNG bytes (:func:`png_rgb`)."""
        canvas = cast(FigureCanvasAgg, self._fig.canvas)
        canvas.draw()
        rgb = np.array(np.asarray(canvas.buffer_rgba())[:, :, :3])
        for pixels, x, y in self._pastes:
            rgb[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        image = Image.fromarray(rgb)
        draw = ImageDraw.Draw(image, "RGBA")
        for label in self._labels:
            font = _font(label.mono, max(1, round(label.points * self._fig.dpi / 72)))
            xy = (label.x, label.y)
            if label.backdrop:
                box = draw.textbbox(xy, label.text, font=font, anchor=label.anchor)
                draw.rectangle(box, fill=(255, 255, 255, 153))
            colour = tuple(round(255 * c) for c in to_rgb(label.colour))
            draw.multiline_text(xy, label.text, fill=colour, font=font, anchor=label.anchor)
        return png_rgb(np.asarray(image))


@lru_cache(maxsize=16)
def _font(mono: bool, pixels: int) -> ImageFont.FreeTypeFont:
    """matplotlib's own sans or monospaced font (DejaVu by default), ``pixels`` high."""
    family = "monospace" if mono else rcParams["font.family"]
    return ImageFont.truetype(font_manager.findfont(FontProperties(family=family)), pixels)


def _as_rgb(a: np.ndarray) -> np.ndarray:
    """(H, W) grey or (H, W, 3) RGB in [0, 1] -> (H, W, 3) uint8, as ``imshow`` shows them."""
    out = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2) if out.ndim == 2 else out


def _colour(a: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) values through a colour map between ``vmin`` and ``vmax``: (H, W, 3) uint8;
    NaN white."""
    span = vmax - vmin if vmax > vmin else 1.0
    index = np.clip(np.floor((np.nan_to_num(a, nan=vmin) - vmin) * (256 / span)), 0, 255)
    out = _lut(cmap)[index.astype(np.intp)]
    out[np.isnan(a)] = 255
    return out


@lru_cache(maxsize=8)
def _lut(cmap: str) -> np.ndarray:
    lut: np.ndarray = colormaps[cmap](np.linspace(0.0, 1.0, 256), bytes=True)[:, :3]
    return lut


def _resample(a: np.ndarray, out_h: int, out_w: int, how: str) -> np.ndarray:
    """``a`` (H, W[, C]) at out_h × out_w: each pixel shows the k × k block (``how``: mean or
    max; k the whole reduction) holding its source pixel."""
    h, w = a.shape[:2]
    reduced, k = fit_pixels(a, out_h, out_w, how=how)
    rows = ((np.arange(out_h) + 0.5) * (h / out_h)).astype(np.intp) // k
    cols = ((np.arange(out_w) + 0.5) * (w / out_w)).astype(np.intp) // k
    return reduced[rows[:, None], cols[None, :]]


_DASHES = {"-": None, "--": (3.7, 1.6), ":": (1.0, 1.65)}  # matplotlib's, in line widths


def _draw_rings(
    rgb: np.ndarray, extent: tuple[float, float, float, float], rings: Sequence[_Ring], px: float
) -> None:
    """Draw each ring on ``rgb`` (H, W, 3), whose pixels span ``extent``; ``px`` pixels a
    point."""
    h, w = rgb.shape[:2]
    left, right, bottom, top = extent
    x = left + (np.arange(w) + 0.5) * ((right - left) / w)
    y = top + (np.arange(h) + 0.5) * ((bottom - top) / h)
    per_unit = math.sqrt(abs(w / (right - left) * h / (bottom - top)))
    for ring in rings:
        u, v = x[None, :] / ring.a, y[:, None] / ring.b
        rho = np.sqrt(u * u + v * v)
        radius = math.sqrt(ring.a * ring.b) * per_unit  # pixels
        line = max(ring.width * px, 1.0)
        on = np.abs(rho - 1.0) * radius <= line / 2
        dashes = _DASHES.get(ring.style)
        if dashes is not None:
            arc = (np.arctan2(v, u) + math.pi) * radius
            on &= arc % ((dashes[0] + dashes[1]) * line) < dashes[0] * line
        rgb[on] = np.round(np.asarray(to_rgb(ring.colour)) * 255.0).astype(np.uint8)


def _spectrum_pixels(layer: _Overlay, cell: SubplotSpec, panel: SpectrumPanel) -> None:
    """:func:`draw_log_spectrum`'s panel as pixels: the zoomed log spectrum and its rings."""
    view = _spectrum_view(panel)
    h, w = panel.log_power.shape
    n = panel.n
    rings = [
        _Ring(r * w / n, r * h / n, *MARKERS[name], 1.2, f"{name} = {r:.1f}")
        for name, r in view.marks
    ]
    left, right, bottom, top = view.extent
    layer.panel(
        cell,
        view.crop,
        f"log power spectrum, kx ±{(right - left) / 2:.0f}, ky ±{(bottom - top) / 2:.0f}",
        lambda a: _colour(a, "viridis", *view.clim),
        extent=view.extent,
        rings=rings,
        how="max",
    )


def _acf_pixels(layer: _Overlay, cell: SubplotSpec, panel: SpectrumPanel) -> None:
    """:func:`draw_acf`'s panel as pixels: the ACF's centre, rings at its periods."""
    view = _acf_view(panel)
    rings = []
    if _finite(panel.acf_period) and panel.acf_period > 0:
        p = panel.acf_period
        rings.append(_Ring(p, p, "tab:green", "-", 1.4, f"ACF period {p:.1f} px"))
    if _finite(panel.fft_period):
        p = panel.fft_period
        rings.append(_Ring(p, p, MARKERS["f*"][0], "--", 1.0, f"FFT period N/f* {p:.1f} px"))
    half = (view.extent[1] - view.extent[0]) / 2
    layer.panel(
        cell,
        view.crop,
        f"autocorrelation, lags ±{half:.0f} px",
        lambda a: _colour(a, "RdBu_r", *view.clim),
        extent=view.extent,
        rings=rings,
    )


def _reduce(a: np.ndarray, k: int, how: str) -> np.ndarray:
    """``a`` (H, W[, C]) reduced by k × k blocks (``"mean"`` or ``"max"``), edges repeated."""
    if k <= 1:
        return a
    h, w = a.shape[:2]
    ph, pw = -h % k, -w % k
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2), mode="edge")
    blocks = a.reshape(a.shape[0] // k, k, a.shape[1] // k, k, *a.shape[2:])
    return blocks.max(axis=(1, 3)) if how == "max" else blocks.mean(axis=(1, 3))


def fit_pixels(
    a: np.ndarray, height: float, width: float, *, how: str = "mean"
) -> tuple[np.ndarray, int]:
    """``a`` (H, W[, C]) reduced by whole k × k blocks to between 1 and 2 times ``height`` ×
    ``width`` pixels, and k (1: unchanged, when ``a`` is smaller than twice that). What
    ``imshow`` shows of a large image in a small panel, at a fraction of its resampling cost;
    the last blocks repeat the edge, so the result covers k·ceil(H/k) × k·ceil(W/k) source px."""
    a = np.asarray(a)
    k = int(min(a.shape[0] / max(height, 1.0), a.shape[1] / max(width, 1.0)))
    return (_reduce(a, k, how), k) if k > 1 else (a, 1)


def axes_pixels(ax: Axes) -> tuple[float, float]:
    """(height, width) of ``ax`` in pixels at its figure's dpi."""
    fig = cast(Figure, ax.get_figure(root=True))
    box = ax.get_position()
    w_in, h_in = fig.get_size_inches()
    return box.height * h_in * fig.dpi, box.width * w_in * fig.dpi


def fast_png(fig: Figure) -> bytes:
    """Draw ``fig`` (opaque) on its Agg canvas and encode it with :func:`png_rgb`: as
    :func:`figure_png` at the figure's dpi, in a fraction of the encoding time."""
    canvas = cast(FigureCanvasAgg, fig.canvas)
    canvas.draw()
    return png_rgb(np.asarray(canvas.buffer_rgba()))


def png_rgb(rgb: np.ndarray, *, level: int = 1) -> bytes:
    """Encode an (H, W, 3) uint8 array as an RGB PNG: no row filter, zlib ``level``. An
    (H, W, 4) array is taken as opaque RGBA: its alpha is dropped.

    Figures are mostly flat colour, which deflate packs well without PNG's row filters; Pillow's
    adaptive filtering costs more time than the encoding itself and gives larger files here.
    """
    import struct
    import zlib

    h, w = rgb.shape[:2]
    rows = np.empty((h, 1 + 3 * w), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:].reshape(h, w, 3)[...] = rgb[:, :, :3]  # one copy, also from RGBA

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(data, zlib.crc32(kind))
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
            chunk(b"IDAT", zlib.compress(rows.data, level)),
            chunk(b"IEND", b""),
        )
    )
