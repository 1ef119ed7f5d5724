"""The reusable diagnose figure draws what the panel functions draw, image after image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from _textures import grating, smooth_noise
from PIL import Image

from texwatch import plots, spectral
from texwatch._diagnosis_figure import DiagnosisFigure


def _inputs(x: torch.Tensor, first: torch.Tensor | None, ref_radius: float | None = None):
    metrics = {k: float(v[0]) for k, v in spectral.texture_metrics(x, bands=True).items()}
    metrics["anomalies"] = 3  # an int row, as diagnose shows the count
    boxes = spectral.sobel_anomalies(x)[0].boxes
    heat = None if first is None else spectral.diff_heatmap(x, first, scale=4.0)[0].numpy()
    panel = plots.spectrum_panel(x, ref_radius=ref_radius)
    return panel, metrics, boxes, heat


def _pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        return np.asarray(img.convert("RGB")).astype(int)


def _panel_functions(x, panel, metrics, boxes, heat) -> np.ndarray:
    """The figure as diagnose drew it before: the draw_* functions on a new figure."""
    fig = plots.new_figure(15.0, 9.0)
    axes = plots.axes_grid(fig, 2, 3)
    plots.draw_anomalies(axes[0, 0], x[0], boxes, title=f"image, {len(boxes)} Sobel anomalies")
    plots.draw_log_spectrum(axes[0, 1], panel)
    plots.draw_radial_profile(axes[0, 2], panel)
    plots.draw_acf(axes[1, 0], panel)
    if heat is not None:
        plots.draw_heatmap(axes[1, 1], heat, title="heat")
    else:
        axes[1, 1].set_axis_off()
        axes[1, 1].set_title("no difference heatmap (first image, or other size)", fontsize=9)
    plots.draw_text_table(axes[1, 2], metrics, title="metrics")
    plots.set_title(fig, "title $1")
    return _pixels(plots.figure_png(fig))


def _reused(figure, x, panel, metrics, boxes, heat) -> np.ndarray:
    png = figure.render(
        x[0],
        panel,
        boxes=boxes,
        heat=heat,
        heat_title="heat",
        metrics=metrics,
        title="title $1",
        image_title=f"image, {len(boxes)} Sobel anomalies",
    )
    return _pixels(png)


@pytest.fixture(scope="module")
def cases() -> list[tuple]:
    first = grating(size=128)
    checker = grating(size=128, checker=0.15, seed=3)
    checker[..., 40:50, 60:75] = 1.0  # anomalies to box
    noise = smooth_noise(size=128)
    return [
        (first, *_inputs(first, None, ref_radius=8.0)),  # periodic, no heatmap, a reference
        (checker, *_inputs(checker, first)),
        (noise, *_inputs(noise, first)),  # no period: no rings, no f* lines
        (grating(32, size=128), *_inputs(grating(32, size=128), None)),
    ]


def test_reused_figure_draws_what_the_panel_functions_draw(cases: list[tuple]) -> None:
    figure = DiagnosisFigure()
    for case in cases:
        want = _panel_functions(*case)
        got = _reused(figure, *case)
        assert got.shape == want.shape == (900, 1500, 3)
        diff = np.abs(got - want).max(axis=2)
        # Antialiasing only: text and ticks land within a fraction of a pixel of matplotlib's.
        assert diff.max() <= 40, np.argwhere(diff == diff.max())[:5]
        assert (diff > 0).mean() < 0.01


def test_frames_do_not_leak_into_each_other(cases: list[tuple]) -> None:
    figure = DiagnosisFigure()
    first = [_reused(figure, *case) for case in cases]
    again = [_reused(figure, *case) for case in reversed(cases)][::-1]  # from what was kept
    figure.start_batch()  # and from nothing kept
    fresh = [_reused(figure, *case) for case in cases]
    for a, b, c in zip(first, again, fresh, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_png_rgb_round_trips() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(plots.png_rgb(rgb))) as img:
        assert img.mode == "RGB" and np.array_equal(np.asarray(img), rgb)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    with Image.open(io.BytesIO(plots.png_rgb(rgba[:, :, :3]))) as img:  # a strided view
        assert np.array_equal(np.asarray(img), rgb)


def test_fit_pixels_reduces_by_whole_blocks() -> None:
    a = np.arange(100.0).reshape(10, 10)
    same, k = plots.fit_pixels(a, 6, 6)
    assert k == 1 and same is a  # under twice the panel: left to imshow
    mean, k = plots.fit_pixels(a, 4, 4)
    assert k == 2 and mean.shape == (5, 5) and mean[0, 0] == np.mean([0, 1, 10, 11])
    peak = np.zeros((9, 9))
    peak[8, 8] = 1.0
    top, k = plots.fit_pixels(peak, 2, 2, how="max")
    assert k == 4 and top.shape == (3, 3) and top[2, 2] == 1.0  # edge block, padded


def test_a_large_heatmap_keeps_a_one_pixel_difference() -> None:
    x = grating(size=1024)
    y = x.clone()
    y[..., 700, 300] = 1.0 - y[..., 700, 300]
    figure = DiagnosisFigure()
    heat = spectral.diff_heatmap(y, x, scale=4.0)[0].numpy()
    figure.render_pixels(
        y[0],
        plots.spectrum_panel(y),
        boxes=[],
        heat=heat,
        heat_title="heat",
        metrics={"a": 1.0},
        title="big",
        image_title="image",
    )
    shown = np.asarray(figure._heat.get_array())
    assert shown.shape[0] < 1024 / 2 and shown.max() == heat.max() > 0
