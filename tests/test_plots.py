"""plots: the shared figures draw what they claim and never touch pyplot's global state."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from _textures import PERIOD, SIZE, grating, smooth_noise
from matplotlib.patches import Circle, Ellipse
from PIL import Image

from texwatch import spectral
from texwatch.plots import (
    MARKERS,
    axes_grid,
    draw_acf,
    draw_log_spectrum,
    draw_loss,
    draw_radial_profile,
    image_grid,
    new_figure,
    snapshot_figure,
    spectrum_panel,
)


def _loss(n: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.arange(n)
    loss = 1.0 + 0.02 * np.random.default_rng(0).standard_normal(n)
    loss[min(150, n - 1)] = 6.0
    return steps, loss, np.convolve(loss, np.ones(9) / 9, mode="same")


def test_snapshot_is_a_png_and_leaves_pyplot_alone() -> None:
    before = plt.get_fignums()
    steps, loss, ema = _loss()
    png = snapshot_figure(
        images=torch.cat([grating(), grating(seed=1)]),
        target=torch.cat([grating(seed=2), grating(seed=3)]),
        loss_steps=steps,
        loss=loss,
        loss_ema=ema,
        spike_steps=[150],
        warn_steps=[40],
        ref_radius=SIZE / PERIOD,
        metrics={"tile_scale": 1.0},
        title="run · step 200",
        dpi=50,
    )
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == (800, 400)
    without_target = snapshot_figure(images=grating(), loss_steps=steps, loss=loss, dpi=50)
    assert without_target[:8] == b"\x89PNG\r\n\x1a\n"
    assert plt.get_fignums() == before  # nothing registered with pyplot


def test_snapshot_rejects_a_target_of_another_shape() -> None:
    steps, loss, _ = _loss(10)
    with pytest.raises(ValueError, match="target has shape"):
        snapshot_figure(images=grating(), target=grating(size=64), loss_steps=steps, loss=loss)


def test_spectrum_panel_carries_the_spectral_views() -> None:
    x = grating()
    panel = spectrum_panel(x, ref_radius=8.0)
    views = spectral.spectrum_views(x)
    assert panel.f_star == pytest.approx(float(views.fundamental_radius[0]))
    assert panel.acf_period == pytest.approx(float(views.acf_period[0]))
    assert panel.fft_period == pytest.approx(SIZE / panel.f_star)
    assert panel.log_power.shape == (SIZE, SIZE) and panel.acf.shape == (SIZE, SIZE)
    np.testing.assert_allclose(panel.profile, views.radial_profile[0].numpy())


def test_a_non_periodic_image_gets_no_period_markers() -> None:
    x = smooth_noise()
    assert float(spectral.texture_metrics(x)["periodic"][0]) == 0.0
    panel = spectrum_panel(x, ref_radius=8.0)
    assert np.isnan(panel.f_star) and np.isnan(panel.acf_period) and np.isnan(panel.fft_period)
    fig = new_figure(8, 3)
    ax_spec, ax_prof, ax_acf = axes_grid(fig, 1, 3)[0]
    draw_log_spectrum(ax_spec, panel)
    assert [p.get_label() for p in ax_spec.patches if isinstance(p, Ellipse)] == ["ref"]
    draw_acf(ax_acf, panel)
    assert not [p for p in ax_acf.patches if isinstance(p, Circle)]


def test_markers_sit_at_f_2f_half_f_and_ref() -> None:
    panel = spectrum_panel(grating(), ref_radius=10.0)
    fig = new_figure(8, 3)
    ax_spec, ax_prof, ax_acf = axes_grid(fig, 1, 3)[0]
    draw_radial_profile(ax_prof, panel)
    lines = {
        ln.get_label().split(" = ")[0]: ln.get_xdata()[0]
        for ln in ax_prof.get_lines()
        if " = " in ln.get_label()
    }
    f = panel.f_star
    assert lines == pytest.approx({"f*": f, "2f*": 2 * f, "f*/2": f / 2, "ref": 10.0})
    colours = {ln.get_label().split(" = ")[0]: ln.get_color() for ln in ax_prof.get_lines()}
    assert colours["ref"] == MARKERS["ref"][0]
    draw_log_spectrum(ax_spec, panel)
    rings = {p.get_label(): p.width / 2 for p in ax_spec.patches if isinstance(p, Ellipse)}
    assert rings == pytest.approx({"f*": f, "2f*": 2 * f, "f*/2": f / 2, "ref": 10.0})
    draw_acf(ax_acf, panel)
    radii = sorted(p.radius for p in ax_acf.patches if isinstance(p, Circle))
    assert radii == pytest.approx(sorted([panel.acf_period, panel.fft_period]))


def test_rings_are_ellipses_on_non_square_images() -> None:
    x = grating(size=128)[..., :64, :]  # 64 × 128: N = 128
    panel = spectrum_panel(x)
    fig = new_figure(4, 4)
    ax = axes_grid(fig, 1, 1)[0, 0]
    draw_log_spectrum(ax, panel)
    ring = next(p for p in ax.patches if p.get_label() == "f*")
    assert ring.width == pytest.approx(2 * panel.f_star)  # along kx: W / N = 1
    assert ring.height == pytest.approx(panel.f_star)  # along ky: H / N = 1/2


def test_loss_panel_marks_spikes_and_warnings() -> None:
    steps, loss, ema = _loss()
    fig = new_figure(6, 3)
    ax = axes_grid(fig, 1, 1)[0, 0]
    draw_loss(ax, steps, loss, ema=ema, spike_steps=[150], warn_steps=[40, 41])
    marks = {c.get_label(): c.get_offsets() for c in ax.collections}
    assert marks["spike"].tolist() == [[150, 6.0]]
    assert [p[0] for p in marks["warning"].tolist()] == [40, 41]


def test_image_grid_tiles_grey_colour_and_latents() -> None:
    grid = image_grid(torch.cat([grating(size=16)] * 5), gap=2)
    assert grid.shape == (2 * 16 + 2, 3 * 16 + 2 * 2, 3)  # 5 images: 2 rows of 3
    latents = image_grid(np.random.default_rng(0).standard_normal((2, 4, 8, 8)))
    assert latents.shape == (8, 18, 3) and latents.min() >= 0 and latents.max() <= 1
    grey = image_grid(np.full((1, 1, 4, 4), 0.5))
    assert grey.shape == (4, 4) and np.all(grey == 0.5)
    with pytest.raises(ValueError, match="expected"):
        image_grid(np.zeros((0, 3, 4, 4)))


def test_snapshot_pixel_panels_mark_f_star_and_the_acf_period() -> None:
    steps, loss, _ = _loss(50)
    png = snapshot_figure(images=grating(), loss_steps=steps, loss=loss, dpi=50)
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB"))
    top = rgb[: rgb.shape[0] // 2]
    quarter = rgb.shape[1] // 4

    def has(colour: tuple[int, int, int], part: np.ndarray) -> bool:
        return bool(np.all(part == colour, axis=-1).any())

    red, green = (214, 39, 40), (44, 160, 44)  # tab:red (f*), tab:green (ACF period)
    spectrum, acf = top[:, quarter : 2 * quarter], top[:, 3 * quarter :]
    assert has(red, spectrum) and not has(green, spectrum)
    assert has(green, acf) and has(red, acf)  # the ACF period, and the FFT period N/f*
