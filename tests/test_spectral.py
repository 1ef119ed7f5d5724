"""texwatch.spectral against references nobody here tuned: gratings of known period, bricks,
Odena's checkerboards, exact ring-sum ratios, the FFT axis cross, aliasing, and an independent
numpy implementation of every definition (tests/_spectral_reference.py)."""

from __future__ import annotations

import math

import _spectral_reference as reference
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from texwatch import alarms
from texwatch.spectral import (
    BAND_KEYS,
    HEALTH_KEYS,
    METRIC_KEYS,
    AnomalyRegions,
    diff_heatmap,
    latent_health,
    local_period_map,
    power_spectrum,
    ring_energy,
    sobel_anomalies,
    sobel_magnitude,
    spectrum_views,
    texture_metrics,
)

PERIODS = (4, 6, 8, 12, 16, 24, 32, 48, 64)
ANGLES = (0.0, 30.0, 45.0)


def coords(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    return yy, xx


def grating(h: int, w: int, period: float, angle: float, *, square: bool = False) -> torch.Tensor:
    """Cosine (or square-wave tile) grating in [0.25, 0.75], float64 (H, W)."""
    yy, xx = coords(h, w)
    t = xx * math.cos(math.radians(angle)) + yy * math.sin(math.radians(angle))
    wave = torch.cos(2 * math.pi * t / period)
    if square:
        wave = torch.sign(wave)
    return 0.5 + 0.25 * wave


def bin_width(h: int, w: int, r_bins: int = 256) -> float:
    return max(h, w) / math.sqrt(2) / r_bins


# ----------------------------------------------------------------------------- known periods


@pytest.mark.parametrize("shape", [(256, 256), (384, 512)])
def test_gratings_and_tiles_give_their_period(shape: tuple[int, int]) -> None:
    h, w = shape
    gen = torch.Generator().manual_seed(h)
    cases = [(p, a, False) for p in PERIODS for a in ANGLES] + [(p, 0.0, True) for p in (8, 16, 32)]
    images = torch.stack(
        [
            grating(h, w, p, a, square=sq)
            + 0.1 * torch.randn(h, w, generator=gen, dtype=torch.float64)
            for p, a, sq in cases
        ]
    )
    rgb = images[:, None].expand(-1, 3, -1, -1).float()  # grey RGB: exercises the luma path
    m = texture_metrics(rgb)
    n = max(h, w)
    f_star = m["fundamental_radius_bin"]
    period = m["acf_first_peak_radius_bin"]
    for i, (p, a, sq) in enumerate(cases):
        assert abs(float(f_star[i]) - n / p) <= bin_width(h, w), (p, a, sq, float(f_star[i]))
        assert abs(float(period[i]) - p) <= 1.0, (p, a, sq, float(period[i]))


def bricks(h: int, w: int, *, noise: float = 0.05) -> torch.Tensor:
    """Running-bond bricks 32×16 px, 2-px mortar, rows offset by half a brick."""
    yy, xx = coords(h, w)
    row = torch.div(yy, 16, rounding_mode="floor")
    x_in_brick = torch.remainder(xx + row.remainder(2) * 16, 32)
    mortar = (yy.remainder(16) < 2) | (x_in_brick < 2)
    gen = torch.Generator().manual_seed(7)
    return torch.where(mortar, 0.8, 0.3) + noise * torch.randn(
        h, w, generator=gen, dtype=torch.float64
    )


@pytest.mark.parametrize("shape", [(256, 256), (384, 512)])
def test_bricks_give_one_of_their_lattice_periods(shape: tuple[int, int]) -> None:
    h, w = shape
    m = texture_metrics(bricks(h, w)[None, None].float())
    # Reciprocal lattice of the brick lattice a1 = (32, 0), a2 = (16, 16): b1 = (1/32, -1/32),
    # b2 = (0, 1/16); its shortest vectors give the lattice periods 16 px and 22.6 px.
    lattice = {
        math.hypot(mx / 32, (-mx + 2 * ny) / 32) for mx, ny in [(0, 1), (1, 0), (1, 1), (2, 1)]
    }
    f_star = float(m["fundamental_radius_bin"][0])
    n = max(h, w)
    assert min(abs(f_star - n * g) for g in lattice) <= bin_width(h, w)
    # Along that direction the ACF repeats at the row height or the lattice's full repeat.
    period = float(m["acf_first_peak_radius_bin"][0])
    assert min(abs(period - p) for p in (16.0, 32.0, 1 / min(lattice))) <= 1.0


def test_tile_scale_reads_a_model_on_the_wrong_harmonic() -> None:
    n = 256
    target = grating(n, n, 16, 20.0)[None, None].float()
    gen = torch.Generator().manual_seed(3)
    preds = torch.stack(
        [
            grating(n, n, p, 20.0) + 0.05 * torch.randn(n, n, generator=gen, dtype=torch.float64)
            for p in (8, 16, 32)
        ]
    )[:, None].float()
    m = texture_metrics(preds, ref=target)
    assert torch.allclose(m["ref_radius_bin"], torch.full((3,), 16.0), atol=bin_width(n, n))
    assert torch.allclose(m["tile_scale"], torch.tensor([0.5, 1.0, 2.0]), rtol=0.03)
    locks = [alarms.harmonic_lock(float(v)) for v in m["tile_scale"]]
    assert locks == ["2f", None, "half"]
    # A known radius stands for the reference's frequency (x's own direction).
    by_radius = texture_metrics(preds, ref=16.0)
    assert torch.allclose(by_radius["tile_scale"], m["tile_scale"], rtol=0.03)


def test_tile_scale_holds_on_harmonics_of_a_line_texture_and_is_gated() -> None:
    n = 256
    yy, xx = coords(n, n)

    def lines(period: float) -> torch.Tensor:  # thin bright lines: strong harmonics
        return (torch.remainder(yy, period) < period / 6).double()

    target = lines(24)[None, None].float()
    doubled = lines(48)[None, None].float()  # its 2nd harmonic sits exactly on the target's f
    blur = F.avg_pool2d(target, 3, 1, 1, count_include_pad=False)
    sharpened = (target + 1.5 * (target - blur)).clamp(0, 1)
    gen = torch.Generator().manual_seed(4)
    noise = torch.rand(1, 1, n, n, generator=gen)
    m = texture_metrics(
        torch.cat([doubled, sharpened, noise, torch.full_like(noise, 0.5)]), ref=target, bands=True
    )
    scale = m["tile_scale"]
    assert float(scale[0]) == pytest.approx(2.0, rel=0.03)
    assert float(scale[1]) == pytest.approx(1.0, rel=0.03)
    assert math.isnan(float(scale[2])) and math.isnan(float(scale[3]))  # nothing to lock onto
    assert torch.isnan(m["band_score"][2:]).all()
    # The gate: an aperiodic target has no scale to lock onto, whatever the prediction.
    aperiodic = texture_metrics(target, ref=noise)
    assert math.isnan(float(aperiodic["tile_scale"][0]))
    assert math.isnan(float(aperiodic["ref_radius_bin"][0]))
    assert math.isnan(float(texture_metrics(target)["tile_scale"][0]))  # no reference at all


def test_a_texture_turned_or_flipped_against_one_reference_tile_keeps_its_scale() -> None:
    n = 256
    gen = torch.Generator().manual_seed(8)
    tile = bricks(n, n)[None, None].float()
    turned = torch.stack(
        [
            grating(n, n, 16, a) + 0.05 * torch.randn(n, n, generator=gen, dtype=torch.float64)
            for a in (20.0, 65.0, 110.0)
        ]
    )[:, None].float()
    m = texture_metrics(turned, ref=grating(n, n, 16, 20.0)[None, None].float(), bands=True)
    assert torch.allclose(m["tile_scale"], torch.ones(3), rtol=0.03)
    assert (m["alias_score"] == 0).all()
    # bands are read only along the reference's direction: 0 at 20°, not read once turned
    assert float(m["band_score"][0]) == 0.0 and torch.isnan(m["band_score"][1:]).all()
    flipped = texture_metrics(tile.flip(-1), ref=tile, bands=True)
    assert float(flipped["tile_scale"][0]) == pytest.approx(1.0, rel=0.03)
    assert float(flipped["alias_score"][0]) == 0.0
    assert not alarms.banding(float(flipped["band_score"][0]))


def test_ring_energy_is_a_ring_sum_not_a_mean() -> None:
    n = 256
    yy, xx = coords(n, n)
    t = xx * math.cos(0.5) + yy * math.sin(0.5)
    wave = torch.cos(2 * math.pi * t / 16) + 0.5 * torch.cos(2 * math.pi * t / 32)
    energy = ring_energy(wave[None, None].float(), torch.tensor([16.0, 8.0]))[0]
    assert float(energy[1] / energy[0]) == pytest.approx(0.25, abs=2e-3)
    # The same rings divided by their weight (a ring mean) are biased by the circumference.
    p = reference.power(reference.prepare(wave[None].numpy(), None, "hann"))
    ones = np.ones_like(p)
    mean_ratio = (reference.ring_sum(p, 8.0, 6.0)[0] / reference.ring_sum(ones, 8.0, 6.0)[0]) / (
        reference.ring_sum(p, 16.0, 6.0)[0] / reference.ring_sum(ones, 16.0, 6.0)[0]
    )
    assert mean_ratio > 0.45

    square = torch.where(xx.remainder(16) < 8, 1.0, 0.0)[None, None].float()
    assert float(texture_metrics(square)["fundamental_radius_bin"][0]) == pytest.approx(
        16.0, abs=1e-3
    )
    energy = ring_energy(square, torch.tensor([16.0, 32.0, 48.0]))[0]
    assert float(energy[1] / energy[0]) < 1e-6  # a square wave has no even harmonics
    expected = (math.sin(math.pi / 16) / math.sin(3 * math.pi / 16)) ** 2  # discrete square wave
    assert float(energy[2] / energy[0]) == pytest.approx(expected, rel=1e-3)


# ----------------------------------------------------------------------------- periodicity


def power_law_noise(n: int, slope: float, seed: int) -> torch.Tensor:
    """(1, 1, n, n) noise whose power falls as 1/f^slope (0 white, 1 pink, 2 natural images)."""
    gen = torch.Generator().manual_seed(seed)
    white = torch.randn(n, n, generator=gen, dtype=torch.float64)
    k = torch.fft.fftfreq(n, dtype=torch.float64)
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    radius[0, 0] = 1.0
    shaped = torch.fft.ifft2(torch.fft.fft2(white) / radius ** (slope / 2)).real
    return shaped[None, None].float()


@pytest.mark.parametrize("n", [256, 512])
def test_noise_of_every_slope_has_no_period(n: int) -> None:
    noise = torch.cat([power_law_noise(n, slope, seed) for slope in (0, 1, 2) for seed in range(4)])
    m = texture_metrics(noise, ref=noise, bands=True)
    for key in ("fundamental_radius_bin", "acf_first_peak_radius_bin", "tile_scale", "band_score"):
        assert torch.isnan(m[key]).all(), key
    assert (m["periodic"] == 0).all()
    assert (m["peak_prominence"] < 10).all() and (m["peak_prominence"] > 3).all()
    # The lone corner bin of a ring too small for a noise floor used to win on white noise.
    torch.manual_seed(4)
    assert math.isnan(float(texture_metrics(torch.rand(1, 1, 256, 256))["fundamental_radius_bin"]))


def test_a_periodic_texture_reports_its_peak_prominence_in_db() -> None:
    n = 256
    gen = torch.Generator().manual_seed(6)
    x = grating(n, n, 16, 30.0) + 0.1 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    m = texture_metrics(x[None, None].float())
    assert float(m["periodic"][0]) == 1.0
    spectrum = reference.power(reference.prepare(x[None].numpy(), None, "hann"))
    prominence = reference.peak(spectrum, 256)[3]  # S/9F of the f* bin
    assert float(m["peak_prominence"][0]) == pytest.approx(10 * math.log10(prominence), abs=0.01)
    assert float(m["peak_prominence"][0]) > 30  # a clean grating stands far above its floor
    view = spectrum_views(x[None, None].float())
    assert float(view.fundamental_radius[0]) == pytest.approx(16.0, abs=bin_width(n, n))


def axis_share(p: torch.Tensor) -> float:
    """Share of the non-DC power on the two axes of a centred spectrum."""
    p = p.double()
    cy, cx = p.shape[0] // 2, p.shape[1] // 2
    on_axes = p[cy, :].sum() + p[:, cx].sum() - 2 * p[cy, cx]
    return float(on_axes / (p.sum() - p[cy, cx]))


def test_axis_cross_and_the_windows_that_remove_it() -> None:
    n = 256
    gen = torch.Generator().manual_seed(0)
    _, xx = coords(n, n)
    ramp = (xx / n + 0.05 * torch.randn(n, n, generator=gen, dtype=torch.float64))[None, None]
    shares = {
        w: axis_share(power_spectrum(ramp, window=w)[0])
        for w in ("none", "hann", "periodic_smooth")
    }
    assert shares["none"] == pytest.approx(0.97, abs=0.01)
    assert shares["hann"] == pytest.approx(0.59, abs=0.02)
    assert shares["periodic_smooth"] == pytest.approx(0.008, abs=0.002)
    white = torch.randn(1, 1, n, n, generator=gen, dtype=torch.float64)
    assert axis_share(power_spectrum(white, window="none")[0]) == pytest.approx(2 / n, abs=0.001)


def test_aliasing_moves_f_star_and_the_alias_score_sees_it() -> None:
    n = 256
    _, xx = coords(n, n)
    # A coarse texture (period 32) under a stronger fine one (period 2.4 px) that no 2x
    # downsample can represent.
    image = (0.5 * torch.cos(2 * math.pi * xx / 32) + torch.cos(2 * math.pi * xx / 2.4))[
        None, None
    ].float()
    naive = image[..., ::2, ::2]
    smooth = F.interpolate(image, scale_factor=0.5, mode="bicubic", antialias=True)
    half = n // 2
    f_naive = float(texture_metrics(naive)["fundamental_radius_bin"][0])
    f_smooth = float(texture_metrics(smooth)["fundamental_radius_bin"][0])
    assert f_smooth == pytest.approx(half / 16, abs=bin_width(half, half))  # the true texture
    assert f_naive == pytest.approx(
        half / 6, abs=bin_width(half, half)
    )  # moire: 1 - 1/1.2 cycles/px
    # Against the antialiased image the moire is a strong peak the reference lacks.
    score = texture_metrics(torch.cat([naive, smooth]), ref=smooth)["alias_score"]
    assert alarms.aliasing(float(score[0])) and float(score[1]) == 0.0
    # Without a reference of the same size there is nothing to compare with.
    assert math.isnan(float(texture_metrics(naive, ref=image)["alias_score"][0]))
    assert math.isnan(float(texture_metrics(naive)["alias_score"][0]))


# ----------------------------------------------------------------------------- checkerboard


def test_odena_checkerboards() -> None:
    ones = torch.ones(1, 1, 64, 64)
    k3 = nn.ConvTranspose2d(1, 1, 3, stride=2, bias=False)
    k4 = nn.ConvTranspose2d(1, 1, 4, stride=2, bias=False)
    conv = nn.Conv2d(1, 1, 3, bias=False)
    for layer in (k3, k4, conv):
        nn.init.ones_(layer.weight)
    with torch.no_grad():
        out3 = k3(ones)[..., 1:-2, 1:-2]  # even-sized interior, away from the borders
        out4 = k4(ones)[..., 2:-2, 2:-2]
        resize_conv = conv(F.interpolate(ones, scale_factor=2, mode="nearest"))
    assert set(out3.unique().tolist()) == {1.0, 2.0, 4.0}
    assert float(texture_metrics(out3)["checkerboard_energy"][0]) == pytest.approx(1.0, abs=1e-6)
    assert float(texture_metrics(out4)["checkerboard_energy"][0]) == 0.0
    assert float(texture_metrics(resize_conv)["checkerboard_energy"][0]) == 0.0

    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)
    upconv = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(8, 3, 3, padding=1)
    )
    gen = torch.Generator().manual_seed(1)
    latent = F.avg_pool2d(torch.randn(4, 8, 38, 38, generator=gen), 7, stride=1)
    with torch.no_grad():
        a = texture_metrics(deconv(latent))["checkerboard_energy"]
        b = texture_metrics(upconv(latent))["checkerboard_energy"]
    assert bool((a > 0.2).all() and (a > 20 * b).all()), (a, b)


# ----------------------------------------------------------------------------- the numpy reference


def random_texture(rng: np.random.Generator, c: int, h: int, w: int) -> np.ndarray:
    """A few random gratings (one dominant), a ramp and noise: textured, with a clear f*."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.zeros((c, h, w))
    for k in range(int(rng.integers(1, 4))):
        period = rng.uniform(4, min(h, w) / 4)
        angle = rng.uniform(0, np.pi)
        amp = rng.uniform(0.4, 1.0) * (1.0 if k == 0 else 0.3)
        wave = np.cos(
            2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 6)
        )
        img += amp * wave[None] * rng.uniform(0.5, 1.0, (c, 1, 1))
    return img + 0.1 * rng.standard_normal((c, h, w)) + rng.uniform(0, 1) * (xx / w)[None]


REFERENCE_CASES = [
    # (channels, H, W, window, masked, ref, bands)
    (3, 48, 64, "hann", False, None, True),
    (1, 45, 57, "tukey", True, "image", False),
    (4, 64, 64, "periodic_smooth", False, "radius", False),
    (1, 40, 72, "none", True, None, False),
    (3, 45, 57, "hann", True, "image", True),
    (4, 33, 40, "hann", False, None, False),
    (1, 64, 80, "hann", False, "same", True),
    (3, 104, 136, "tukey", True, "same", False),  # over 96 px: torch's resize kernel
]


@pytest.mark.parametrize(("c", "h", "w", "window", "masked", "ref", "bands"), REFERENCE_CASES)
def test_every_metric_matches_the_numpy_reference(
    c: int, h: int, w: int, window: str, masked: bool, ref: str | None, bands: bool
) -> None:
    rng = np.random.default_rng(h * 100 + w + c)
    batch = 2
    images = np.stack([random_texture(rng, c, h, w) for _ in range(batch)])
    mask = None
    if masked:
        _, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        edge = rng.uniform(0.2, 0.4) * w
        mask = np.stack([1 / (1 + np.exp(-(xx - edge * (1 + i * 0.3)) / 3)) for i in range(batch)])[
            :, None
        ]
    ref_value: np.ndarray | float | None = None
    if ref == "image":
        ref_value = random_texture(rng, 3, 32, 40)
    elif ref == "same":
        ref_value = random_texture(rng, c, h, w)
    elif ref == "radius":
        ref_value = 7.5
    periodic = assert_matches_reference(images, mask, ref_value, window, bands)
    assert periodic > 0  # the comparison covers the gated definitions, not only NaN


def assert_matches_reference(
    images: np.ndarray,
    mask: np.ndarray | None,
    ref: np.ndarray | float | None,
    window: str,
    bands: bool,
) -> int:
    """The one comparison helper: every key, every image, torch float32 vs numpy float64.

    Returns how many images were periodic."""
    x = torch.from_numpy(images).float()
    torch_ref = torch.from_numpy(ref).float()[None] if isinstance(ref, np.ndarray) else ref
    got = texture_metrics(
        x,
        mask=None if mask is None else torch.from_numpy(mask).float(),
        ref=torch_ref,
        window=window,
        bands=bands,
    )
    expected_keys = set(METRIC_KEYS) | (set(BAND_KEYS) if bands else set())
    assert set(got) == expected_keys
    periodic = 0
    for i in range(images.shape[0]):
        want = reference.metrics(
            images[i].astype(np.float32).astype(np.float64),
            mask=None if mask is None else mask[i, 0],
            ref=None
            if ref is None
            else np.asarray(ref, np.float32).astype(np.float64)
            if isinstance(ref, np.ndarray)
            else ref,
            window=window,
            bands=bands,
        )
        assert set(want) == expected_keys
        periodic += int(want["periodic"])
        for key, value in want.items():
            actual = float(got[key][i])
            if math.isnan(value):
                assert math.isnan(actual), (key, i, actual)
                continue
            assert actual == pytest.approx(value, rel=2e-3, abs=1e-5), (key, i, actual, value)
    return periodic


@pytest.mark.parametrize("with_ref", [False, True])
def test_the_band_scan_matches_the_numpy_reference(with_ref: bool) -> None:
    """Strips narrower than the image (the random textures above clamp to the whole image)."""
    rng = np.random.default_rng(11)
    h, w = 128, 192
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    t = xx * math.cos(0.5) + yy * math.sin(0.5)
    fine, coarse = np.cos(2 * np.pi * t / 8), np.cos(2 * np.pi * t / 16)
    images = np.stack(
        [
            np.where(xx >= edge * w, coarse, fine)[None] + 0.05 * rng.standard_normal((1, h, w))
            for edge in (0.45, 0.65)
        ]
    )
    ref = fine[None] + 0.05 * rng.standard_normal((1, h, w)) if with_ref else None
    assert assert_matches_reference(images, None, ref, "hann", True) == 2
    got = texture_metrics(torch.from_numpy(images).float(), bands=True)
    assert bool((got["band_score"] > 0.3).all())


def test_latent_health_matches_the_reference_and_counts_nonfinite_first() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 4, 64, 64, generator=gen)
    x[1, 0, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    x[2] = math.nan
    x[3] *= 2.0
    got = latent_health(x)
    assert tuple(got) == HEALTH_KEYS
    # A batch with no non-finite value at all takes a shorter path: the same statistics.
    finite = latent_health(x[[0, 3]])
    assert tuple(finite) == HEALTH_KEYS
    for i, row in [*((i, (got, i)) for i in range(4)), (0, (finite, 0)), (3, (finite, 1))]:
        want = reference.health(x[i].numpy())
        stats, j = row
        for key in HEALTH_KEYS:
            actual, value = float(stats[key][j]), want[key]
            if math.isnan(value):
                assert math.isnan(actual), key
            else:
                assert actual == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert float(got["nonfinite"][1]) == 3
    assert float(got["clip_fraction"][0]) == pytest.approx(0.0027, abs=0.0008)  # unit variance
    assert float(got["clip_fraction"][3]) > 0.1
    # Images in [0, 1] never reach the clip range: their clip statistics are skipped, still 0.
    images = torch.rand(2, 3, 32, 32, generator=gen)
    inside = latent_health(images)
    for i in range(2):
        want = reference.health(images[i].numpy())
        for key in HEALTH_KEYS:
            assert float(inside[key][i]) == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    assert float(inside["clip_fraction"].abs().sum() + inside["clip_excess"].abs().sum()) == 0.0


# ----------------------------------------------------------------------------- local period map


def test_a_band_of_doubled_period_raises_band_score() -> None:
    h, w = 256, 384
    yy, xx = coords(h, w)
    t = xx * math.cos(0.5) + yy * math.sin(0.5)
    base, doubled = torch.cos(2 * math.pi * t / 12), torch.cos(2 * math.pi * t / 24)
    gen = torch.Generator().manual_seed(2)
    images = torch.stack(
        [base, torch.where(xx >= 0.6 * w, doubled, base), torch.where(yy >= 0.6 * h, doubled, base)]
    )[:, None] + 0.05 * torch.randn(3, 1, h, w, generator=gen, dtype=torch.float64)
    x = images.float()
    m = texture_metrics(x, ref=x[:1], bands=True)
    score, run = m["band_score"], m["band_max_run"]
    assert float(score[0]) == 0.0 and float(run[0]) == 0.0
    assert [alarms.banding(float(v)) for v in score] == [False, True, True]
    assert 0.6 * (0.4 * w) <= float(run[1]) <= 1.4 * (0.4 * w)  # the band is 154 columns
    assert 0.6 * (0.4 * h) <= float(run[2]) <= 1.4 * (0.4 * h)  # and 102 rows
    # Without a reference the strips are compared with their own median period.
    own = texture_metrics(x, bands=True)["band_score"]
    assert float(own[0]) == 0.0 and float(own[1]) > 0.3 and float(own[2]) > 0.3


def test_local_period_map_reads_the_period_not_a_harmonic() -> None:
    h, w = 256, 384
    periods = local_period_map(bricks(h, w)[None, None].float())
    assert periods.shape == (1, (h - 96) // 32 + 1, (w - 96) // 32 + 1)
    # The lattice's periods along its peaks' directions (16 px rows, 22.6 px diagonals, the
    # 32 px repeat): never a half or a third of one.
    nearest = torch.stack([(periods - p).abs() for p in (16.0, 32.0, 32 / math.sqrt(2))]).amin(0)
    assert bool((nearest <= 1.0).all()), periods


def test_local_map_is_nan_where_the_mask_is_missing() -> None:
    image = grating(128, 128, 8, 0.0)[None, None].float()
    mask = torch.zeros(1, 1, 128, 128)
    mask[..., :, :64] = 1.0
    periods = local_period_map(image, mask=mask, window_size=32, stride=32)
    assert torch.isnan(periods[0, :, 2:]).all()
    assert torch.allclose(periods[0, :, :2], torch.full((4, 2), 8.0), atol=0.2)


# ----------------------------------------------------------------------------- robustness


def test_nonfinite_image_gets_nan_without_poisoning_the_batch() -> None:
    good = torch.stack([grating(64, 64, p, 0.0) for p in (8, 16)])[:, None].float()
    batch = torch.cat([good[:1], torch.full_like(good[:1], math.nan), good[1:]])
    batch[1, 0, 0, 0] = 0.0
    m = texture_metrics(batch, bands=True)
    alone = texture_metrics(good, bands=True)
    for key, value in m.items():
        assert value.dtype == torch.float32 and value.shape == (3,)
        assert math.isnan(float(value[1])), key
        both = torch.stack([value[0], value[2]])
        assert torch.allclose(both, alone[key], equal_nan=True), key


def test_half_precision_and_autocast_compute_in_float32() -> None:
    x = (grating(64, 64, 8, 30.0)[None, None] + 0.1).to(torch.bfloat16)
    base = texture_metrics(x.float())
    for value in (texture_metrics(x), texture_metrics(x.half())):
        for key in METRIC_KEYS:
            assert value[key].dtype == torch.float32
            assert torch.allclose(value[key], base[key], rtol=1e-2, atol=1e-4, equal_nan=True), key
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = texture_metrics(x.float())
    for key in METRIC_KEYS:
        assert torch.allclose(inside[key], base[key], equal_nan=True), key


def test_constant_or_empty_images_have_no_period() -> None:
    flat = torch.full((1, 1, 32, 32), 0.5)
    m = texture_metrics(flat)
    assert math.isnan(float(m["fundamental_radius_bin"][0]))
    assert math.isnan(float(m["peak_prominence"][0])) and float(m["periodic"][0]) == 0.0
    assert float(m["checkerboard_energy"][0]) == 0.0
    assert float(m["shift_mse_dx1"][0]) == 0.0
    masked = texture_metrics(
        grating(32, 32, 8, 0.0)[None, None].float(), mask=torch.zeros(1, 1, 32, 32)
    )
    assert math.isnan(float(masked["fundamental_radius_bin"][0]))
    assert math.isnan(float(masked["shift_mse_dx1"][0]))


def test_bad_inputs_raise_clear_errors() -> None:
    x = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match="`x` must have shape"):
        texture_metrics(torch.rand(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        texture_metrics(torch.ones(1, 1, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least 8x8"):
        texture_metrics(torch.rand(1, 1, 4, 32))
    with pytest.raises(ValueError, match="`mask` must have shape"):
        texture_metrics(x, mask=torch.ones(2, 3, 32, 32))
    with pytest.raises(ValueError, match="`mask` must match"):
        texture_metrics(x, mask=torch.ones(2, 1, 16, 16))
    with pytest.raises(ValueError, match="`window` must be one of"):
        texture_metrics(x, window="kaiser")
    with pytest.raises(ValueError, match="`ref` must hold 1 or 2 images"):
        texture_metrics(x, ref=torch.rand(3, 3, 32, 32))
    with pytest.raises(ValueError, match="`r_bins`"):
        texture_metrics(x, r_bins=0)
    with pytest.raises(ValueError, match="same shape"):
        diff_heatmap(x, torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="`clip_range`"):
        latent_health(x, clip_range=0.0)


# ----------------------------------------------------------------------------- views and pixels


def test_spectrum_views_agree_with_the_metrics() -> None:
    h, w = 96, 128
    x = torch.stack([grating(h, w, 8, 30.0), grating(h, w, 16, 0.0)])[:, None].float()
    views = spectrum_views(x, r_bins=128)
    m = texture_metrics(x, r_bins=128)
    assert views.log_power.shape == (2, h, w) and views.acf_image.shape == (2, h, w)
    assert views.radii.shape == (128,) and views.radial_profile.shape == (2, 128)
    assert torch.allclose(views.fundamental_radius, m["fundamental_radius_bin"])
    assert torch.allclose(views.acf_period, m["acf_first_peak_radius_bin"], equal_nan=True)
    assert torch.allclose(views.acf_image[:, h // 2, w // 2], torch.ones(2))
    strongest = views.radii[views.radial_profile.argmax(dim=1)]
    assert torch.allclose(strongest, views.fundamental_radius, atol=2 * float(views.radii[0]) + 0.5)
    assert torch.allclose(views.direction.norm(dim=1), torch.ones(2))
    assert views.acf_profile.shape == (2, views.acf_lags.shape[0])
    peak = views.log_power[1].flatten().argmax()
    assert abs(int(peak % w) - w // 2) == round(max(h, w) / 16)  # the 0° grating's peak column


def test_diff_heatmap_scales_and_clamps() -> None:
    a = torch.zeros(1, 3, 16, 16)
    b = a.clone()
    b[..., :4, :4] = 0.1
    b[..., 8:, 8:] = 1.0
    heat = diff_heatmap(a, b, scale=4.0)
    assert heat.shape == (1, 16, 16)
    assert float(heat[0, 0, 0]) == pytest.approx(0.4)
    assert float(heat[0, 10, 10]) == 1.0 and float(heat[0, 6, 6]) == 0.0


def test_sobel_magnitude_is_the_3x3_sobel_per_px() -> None:
    gen = torch.Generator().manual_seed(5)
    image = torch.rand(2, 3, 23, 31, generator=gen)
    plane = (0.2126 * image[:, 0] + 0.7152 * image[:, 1] + 0.0722 * image[:, 2])[:, None]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
    padded = F.pad(plane, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx[None, None])
    gy = F.conv2d(padded, kx.T[None, None])
    want = torch.sqrt(gx.square() + gy.square())[:, 0]
    torch.testing.assert_close(sobel_magnitude(image), want, rtol=1e-5, atol=1e-6)
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    assert sobel_magnitude(step)[0, 3].tolist() == [0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0]


def test_sobel_anomalies_find_a_planted_region() -> None:
    gen = torch.Generator().manual_seed(4)
    image = 0.5 + 0.01 * torch.randn(2, 1, 64, 64, generator=gen)
    image[0, 0, 20:30, 40:52] += 0.5
    found = sobel_anomalies(image, threshold=8.0)
    assert len(found) == 2 and isinstance(found[0], AnomalyRegions)
    assert found[0].count == 1
    y0, x0, y1, x1 = found[0].boxes[0]
    assert (y0, x0, y1, x1) == (19, 39, 31, 53)  # the step's edges, one px either side
    assert 0 < found[0].area_share < (12 * 14) / 64**2
    assert found[1].count == 0 and found[1].boxes == ()
