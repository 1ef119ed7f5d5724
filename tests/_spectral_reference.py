"""Straightforward per-image numpy implementation of the texwatch spectral definitions.

Written from the definitions in the ``texwatch.spectral`` module docstring, independently of
its code: full complex FFT planes instead of half planes, explicit loops over rings, lags,
peaks and windows, float64 throughout, and its own antialiased bicubic resampler (PIL's
algorithm, Keys a = -0.5). The tests compare every metric against it, and
``benchmarks/spectral_throughput.py`` uses it as the per-image baseline.
"""

from __future__ import annotations

import math

import numpy as np

LUMA = np.array([0.2126, 0.7152, 0.0722])
LOBE = 2.5
PROMINENCE = 10**0.7
GAMMA = 0.5772156649015329
ACF_PROMINENCE = 0.1
ACF_RELATIVE = 0.5
ACF_OVERLAP = 0.1
MIN_RING_BINS = 8
AGREEMENT = 0.08
STRIP_PERIODS = 4.0
BAND_OCTAVES = 0.4
ALIAS_PROMINENCE = 100.0
ALIAS_GAIN = 10.0


def channels(img: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (C', H, W): luma for RGB, the channels otherwise."""
    img = np.asarray(img, dtype=np.float64)
    if img.shape[0] == 3:
        return np.tensordot(LUMA, img, axes=1)[None]
    return img


def window_1d(kind: str, n: int) -> np.ndarray:
    t = np.arange(n) / n
    if kind == "hann":
        return 0.5 - 0.5 * np.cos(2 * np.pi * t)
    if kind == "tukey":
        w = np.ones(n)
        for i in range(n):
            if t[i] < 0.25:
                w[i] = 0.5 - 0.5 * np.cos(2 * np.pi * t[i] / 0.5)
            elif t[i] > 0.75:
                w[i] = 0.5 - 0.5 * np.cos(2 * np.pi * (1 - t[i]) / 0.5)
        return w
    return np.ones(n)


def periodic_component(u: np.ndarray) -> np.ndarray:
    """Moisan's periodic component of one (H, W) plane, with full 2-D FFTs."""
    h, w = u.shape
    v = np.zeros_like(u)
    v[0, :] += u[-1, :] - u[0, :]
    v[-1, :] += u[0, :] - u[-1, :]
    v[:, 0] += u[:, -1] - u[:, 0]
    v[:, -1] += u[:, 0] - u[:, -1]
    q = np.arange(h)[:, None]
    r = np.arange(w)[None, :]
    lap = 2 * np.cos(2 * np.pi * q / h) + 2 * np.cos(2 * np.pi * r / w) - 4
    lap[0, 0] = 1.0
    s_hat = np.fft.fft2(v) / lap
    s_hat[0, 0] = 0.0
    return u - np.real(np.fft.ifft2(s_hat))


def prepare(ch: np.ndarray, mask: np.ndarray | None, window: str) -> np.ndarray:
    """Weighted-mean removal, mask and window of each channel plane."""
    c, h, w = ch.shape
    weight = np.ones((h, w)) if mask is None else np.asarray(mask, dtype=np.float64)
    if window in ("hann", "tukey"):
        weight = weight * np.outer(window_1d(window, h), window_1d(window, w))
    out = np.empty_like(ch)
    for i in range(c):
        total = weight.sum()
        mean = (ch[i] * weight).sum() / total if total > 0 else 0.0
        out[i] = (ch[i] - mean) * weight
        if window == "periodic_smooth":
            out[i] = periodic_component(out[i])
    if np.abs(out).max() <= 64 * np.finfo(np.float64).eps * np.abs(ch).max():
        out[:] = 0.0  # blank: only rounding error of the mean removal is left
    return out


def power(y: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Full-plane power (FFT order), mean over channels."""
    return np.mean([np.abs(np.fft.fft2(p, s=shape)) ** 2 for p in y], axis=0)


def freq_index(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ky = np.array([k if k <= (h - 1) // 2 else k - h for k in range(h)], dtype=np.float64)
    kx = np.array([k if k <= (w - 1) // 2 else k - w for k in range(w)], dtype=np.float64)
    return np.meshgrid(ky, kx, indexing="ij")


def radius_grid(h: int, w: int) -> np.ndarray:
    ky, kx = freq_index(h, w)
    n = max(h, w)
    return n * np.sqrt((kx / w) ** 2 + (ky / h) ** 2)


def lobe_mask(h: int, w: int) -> np.ndarray:
    ky, kx = freq_index(h, w)
    return kx**2 + ky**2 < LOBE**2


def prominence_map(p: np.ndarray, r_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """S/9F and S − 9F of every bin of a full-plane spectrum (S/9F = 0, S − 9F = −inf where no
    peak can be: the lobe, rings of fewer than 8 bins)."""
    h, w = p.shape
    radius = radius_grid(h, w)
    lobe = lobe_mask(h, w)
    r_max = max(h, w) / math.sqrt(2)
    width = max(r_max / r_bins, 1.0)
    n_rings = int(r_max // width) + 1
    ring = np.minimum(np.floor(radius / width + 1e-9).astype(int), n_rings - 1)
    eps = 1e-9 * p[~lobe].mean() + np.finfo(np.float64).tiny
    logp = np.log(p + eps)
    floor = np.full_like(p, np.inf)  # lobe-only and sparse rings: never a peak
    for k in range(n_rings):
        members = (ring == k) & ~lobe
        if members.sum() >= MIN_RING_BINS:
            floor[members] = math.exp(logp[members].mean() + GAMMA)
    kept = np.where(lobe, 0.0, p)
    box = np.zeros_like(p)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            box += np.roll(kept, shift=(-dy, -dx), axis=(0, 1))
    return box / (9 * floor), box - 9 * floor


def peak(p: np.ndarray, r_bins: int) -> tuple[float, float, float, float]:
    """f* (radius units), the peak frequency (fx, fy) in cycles/px and the prominence (ratio)
    of one full-plane spectrum; f*, fx, fy NaN without a significant bin."""
    h, w = p.shape
    ky, kx = freq_index(h, w)
    lobe = lobe_mask(h, w)
    n = max(h, w)
    if p[~lobe].sum() <= 0:
        return math.nan, math.nan, math.nan, math.nan
    prominence, excess = prominence_map(p, r_bins)
    significant = prominence >= PROMINENCE
    if not significant.any():
        return math.nan, math.nan, math.nan, float(prominence.max())
    best = int(np.argmax(np.where(significant, excess, -np.inf)))
    iy, ix = (int(i) for i in np.unravel_index(best, p.shape))
    eps = 1e-9 * p[~lobe].mean() + np.finfo(np.float64).tiny

    def vertex(left: float, centre: float, right: float) -> float:
        curvature = left - 2 * centre + right
        if curvature >= 0:
            return 0.0
        return float(np.clip(0.5 * (left - right) / curvature, -1.0, 1.0))

    def lp(y: int, x: int) -> float:
        return float(np.log(p[y % h, x % w] + eps))

    offset_x = vertex(lp(iy, ix - 1), lp(iy, ix), lp(iy, ix + 1))
    offset_y = vertex(lp(iy - 1, ix), lp(iy, ix), lp(iy + 1, ix))
    fx = float(kx[iy, ix] + offset_x) / w
    fy = float(ky[iy, ix] + offset_y) / h
    return n * math.hypot(fx, fy), fx, fy, float(prominence[iy, ix])


def bilinear(img: np.ndarray, y: float, x: float) -> float:
    h, w = img.shape
    y0 = math.floor(y)
    x0 = math.floor(x)
    wy = y - y0
    wx = x - x0
    return (
        (1 - wy) * (1 - wx) * img[y0 % h, x0 % w]
        + (1 - wy) * wx * img[y0 % h, (x0 + 1) % w]
        + wy * (1 - wx) * img[(y0 + 1) % h, x0 % w]
        + wy * wx * img[(y0 + 1) % h, (x0 + 1) % w]
    )


def prominence_at(a: list[float], j: int) -> float:
    """Topographic prominence of a[j] (a is the valid part of the profile)."""
    left = j
    base_left = a[j]
    while left > 0 and a[left - 1] <= a[j]:
        left -= 1
        base_left = min(base_left, a[left])
    if left > 0:
        base_left = min(base_left, a[left - 1])
    right = j
    base_right = a[j]
    while right < len(a) - 1 and a[right + 1] <= a[j]:
        right += 1
        base_right = min(base_right, a[right])
    return a[j] - max(base_left, base_right)


def acf_period(
    ppad: np.ndarray, weight: np.ndarray, fx: float, fy: float, relative: float = ACF_RELATIVE
) -> float:
    """ACF period (px) along the direction (fx, fy): the first prominent peak at least
    ``relative`` × as high as the highest prominent one."""
    if not (math.isfinite(fx) and math.isfinite(fy)) or fx == 0 and fy == 0:
        return math.nan
    h2, w2 = ppad.shape
    acf = np.real(np.fft.ifft2(ppad))
    wacf = np.real(np.fft.ifft2(np.abs(np.fft.fft2(weight, s=(h2, w2))) ** 2))
    norm = math.hypot(fx, fy)
    ux, uy = fx / norm, fy / norm
    length = int(math.ceil(math.hypot(h2, w2) / 4)) + 2
    w0 = wacf[0, 0]
    if w0 <= 0 or acf[0, 0] <= 0:
        return math.nan
    a0 = acf[0, 0] / w0
    profile: list[float] = []
    for t in range(length):
        wt = bilinear(wacf, t * uy, t * ux)
        if wt / w0 < ACF_OVERLAP:
            break
        profile.append(bilinear(acf, t * uy, t * ux) / wt / a0)
    peaks = [
        j
        for j in range(1, len(profile) - 1)
        if profile[j] > profile[j - 1]
        and profile[j] >= profile[j + 1]
        and prominence_at(profile, j) >= ACF_PROMINENCE
    ]
    if not peaks:
        return math.nan
    highest = max(profile[j] for j in peaks)
    j = next(j for j in peaks if relative == 0 or profile[j] >= relative * highest)
    left, centre, right = profile[j - 1], profile[j], profile[j + 1]
    curvature = left - 2 * centre + right
    offset = 0.0
    if curvature < 0:
        offset = float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))
    return j + offset


def agree(period: float, radius: float, n: int) -> bool:
    """Whether an ACF period and f* describe one periodic texture (k = T·f*/N near 1, 2 or 3)."""
    k = period * radius / n
    if not math.isfinite(k):
        return False
    nearest = min(max(round(k), 1), 3)
    return abs(k / nearest - 1) <= AGREEMENT


def weight_of(mask: np.ndarray | None, window: str, h: int, w: int) -> np.ndarray:
    weight = np.ones((h, w)) if mask is None else np.asarray(mask, dtype=np.float64)
    if window in ("hann", "tukey"):
        weight = weight * np.outer(window_1d(window, h), window_1d(window, w))
    return weight


def analyse(
    ch: np.ndarray, mask: np.ndarray | None, window: str, r_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float, float, float]:
    """Spectrum, padded spectrum, weight, gated f*, fx, fy, ACF period and the prominence."""
    _, h, w = ch.shape
    y = prepare(ch, mask, window)
    p = power(y)
    ppad = power(y, shape=(2 * h, 2 * w))
    weight = weight_of(mask, window, h, w)
    f, fx, fy, prominence = peak(p, r_bins)
    period = acf_period(ppad, weight, fx, fy)
    if not agree(period, f, max(h, w)):
        f = fx = fy = period = math.nan
    return p, ppad, weight, f, fx, fy, period, prominence


def strip_periods(
    ch: np.ndarray, mask: np.ndarray | None, fx: float, fy: float, size: int, axis: int
) -> list[float]:
    """ACF period of each strip ``size`` px across (axis 1: rows, 2: columns), stride size//4."""
    _, h, w = ch.shape
    extent = h if axis == 1 else w
    out = []
    for start in range(0, extent - size + 1, max(1, size // 4)):
        cut = slice(start, start + size)
        strip = ch[:, cut, :] if axis == 1 else ch[:, :, cut]
        strip_mask = None
        if mask is not None:
            strip_mask = mask[cut, :] if axis == 1 else mask[:, cut]
            if strip_mask.mean() < 0.3:
                out.append(math.nan)
                continue
        sh, sw = strip.shape[1:]
        ppad = power(prepare(strip, strip_mask, "none"), shape=(2 * sh, 2 * sw))
        # a strip's own period is its first prominent peak, however low
        out.append(acf_period(ppad, weight_of(strip_mask, "none", sh, sw), fx, fy, relative=0.0))
    return out


def band_reading(
    ch: np.ndarray,
    mask: np.ndarray | None,
    period: float,
    fx: float,
    fy: float,
    base: float | None = None,
) -> tuple[float, float, float]:
    """(band share, longest run in px, base) of strips 4 periods across, against ``base`` or
    their own median."""
    _, h, w = ch.shape
    if not all(math.isfinite(v) for v in (period, fx, fy)):
        return math.nan, math.nan, math.nan
    if base is not None and not math.isfinite(base):
        return math.nan, math.nan, math.nan
    size = int(min(max(round(STRIP_PERIODS * period / 8) * 8, 8), min(h, w)))
    axes = [strip_periods(ch, mask, fx, fy, size, axis) for axis in (1, 2)]
    if base is None:
        values = sorted(v for a in axes for v in a if math.isfinite(v))
        base = values[(len(values) - 1) // 2] if values else math.nan
    shares, runs = [], []
    for periods in axes:
        doubled = [
            math.isfinite(v) and abs(math.log2(v / base) - 1) <= BAND_OCTAVES for v in periods
        ]
        banded = [
            d and ((i > 0 and doubled[i - 1]) or (i + 1 < len(doubled) and doubled[i + 1]))
            for i, d in enumerate(doubled)
        ]
        valid = sum(math.isfinite(v) for v in periods)
        shares.append(sum(banded) / max(valid, 1))
        run = best = 0
        for b in banded:
            run = run + 1 if b else 0
            best = max(best, run)
        runs.append((best - 1) * max(1, size // 4) + size if best else 0)
    return max(shares), float(max(runs)), base


def rings(h: int, w: int, r_bins: int) -> np.ndarray:
    """The noise-floor ring of every bin of a full plane."""
    r_max = max(h, w) / math.sqrt(2)
    width = max(r_max / r_bins, 1.0)
    n_rings = int(r_max // width) + 1
    return np.minimum(np.floor(radius_grid(h, w) / width + 1e-9).astype(int), n_rings - 1)


def alias_share(
    p: np.ndarray, prominence: np.ndarray, ref_prominence: np.ndarray, r_bins: int
) -> float:
    """Share of the non-lobe power in strong peaks 10 dB above the reference's strongest peak in
    the same ring or the two next to it."""
    h, w = p.shape
    ring = rings(h, w, r_bins)
    strongest = np.zeros(ring.max() + 1)
    for k in range(ring.max() + 1):
        members = ref_prominence[ring == k]
        strongest[k] = members.max() if members.size else 0.0
    around = np.array([strongest[max(k - 1, 0) : k + 2].max() for k in range(strongest.size)])[ring]
    spurious = (prominence >= ALIAS_PROMINENCE) & (prominence >= ALIAS_GAIN * around)
    total = p[~lobe_mask(h, w)].sum()
    return float(p[spurious].sum() / total) if total > 0 else math.nan


def ring_sum(p: np.ndarray, r: float, ring_width: float) -> tuple[float, float]:
    """Gaussian ring sum E(r) over non-lobe bins, and its part on the axes."""
    h, w = p.shape
    if not math.isfinite(r):
        return math.nan, math.nan
    ky, kx = freq_index(h, w)
    d = radius_grid(h, w) - r
    sigma = ring_width / (2 * math.sqrt(2 * math.log(2)))
    g = np.exp(-(d**2) / (2 * sigma**2)) * (np.abs(d) <= ring_width) * ~lobe_mask(h, w)
    axis = (kx == 0) | (ky == 0)
    return float((p * g).sum()), float((p * g * axis).sum())


def cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1,
        (a + 2) * x**3 - (a + 3) * x**2 + 1,
        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0),
    )


def resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bicubic resampling as a matrix (PIL's algorithm)."""
    scale = n_in / n_out
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        js = np.arange(lo, hi)
        weights = cubic((js - centre + 0.5) / stretch)
        m[i, lo:hi] = weights / weights.sum()
    return m


def down_up(ch: np.ndarray) -> np.ndarray:
    c, h, w = ch.shape
    dy, dx = resample_matrix(h, h // 2), resample_matrix(w, w // 2)
    uy, ux = resample_matrix(h // 2, h), resample_matrix(w // 2, w)
    return np.stack([uy @ (dy @ plane @ dx.T) @ ux.T for plane in ch])


def weighted_mse(diff_sq: np.ndarray, weight: np.ndarray) -> float:
    total = weight.sum() * diff_sq.shape[0]
    return float((diff_sq * weight).sum() / total) if total > 0 else math.nan


def metrics(
    img: np.ndarray,
    mask: np.ndarray | None = None,
    ref: np.ndarray | float | None = None,
    ref_mask: np.ndarray | None = None,
    window: str = "hann",
    r_bins: int = 256,
    ring_width: float = 6.0,
    bands: bool = False,
) -> dict[str, float]:
    """All metrics of one image (C, H, W); ``ref`` an image (C', H', W') or a radius."""
    img = np.asarray(img, dtype=np.float64)
    keys = [
        "fundamental_radius_bin",
        "periodic",
        "peak_prominence",
        "acf_first_peak_radius_bin",
        "tile_scale",
        "axis_ratio_at_f",
        "shift_mse_dx1",
        "shift_mse_dy1",
        "resize_mse_downUp",
        "alias_score",
        "ref_radius_bin",
        "checkerboard_energy",
    ]
    if bands:
        keys += ["band_score", "band_max_run"]
    if not np.isfinite(img).all():
        return {k: math.nan for k in keys}
    ch = channels(img)
    _, h, w = ch.shape
    n = max(h, w)
    p, ppad, weight, f, fx, fy, period, prominence = analyse(ch, mask, window, r_bins)
    out = {
        "fundamental_radius_bin": f,
        "periodic": float(math.isfinite(f)),
        "peak_prominence": 10 * math.log10(prominence) if prominence > 0 else math.nan,
        "acf_first_peak_radius_bin": period,
        "tile_scale": math.nan,
        "alias_score": math.nan,
    }

    ref_bands: tuple[float, float, float, float, float] | None = None
    if ref is None:
        ref_radius = math.nan
        centre = f
    elif isinstance(ref, (int, float)):
        ref_radius = centre = float(ref)
        out["tile_scale"] = period / (n / ref_radius)
    else:
        rch = channels(ref)
        rh, rw = rch.shape[1:]
        rp, _, _, rf, rfx, rfy, rperiod, _ = analyse(rch, ref_mask, window, r_bins)
        ref_radius = centre = rf * n / max(rh, rw)
        out["tile_scale"] = period / rperiod
        if (rh, rw) == (h, w):
            out["alias_score"] = alias_share(
                p, prominence_map(p, r_bins)[0], prominence_map(rp, r_bins)[0], r_bins
            )
        if bands:
            share, _, base = band_reading(rch, ref_mask, rperiod, rfx, rfy)
            ref_bands = (share, base, rperiod, rfx, rfy)
    e_f, e_axis = ring_sum(p, centre, ring_width)
    ok = math.isfinite(e_f) and e_f > 0
    out["axis_ratio_at_f"] = e_axis / e_f if ok else math.nan
    out["ref_radius_bin"] = ref_radius

    m = np.ones((h, w)) if mask is None else np.asarray(mask, dtype=np.float64)
    b = 2
    core = ch[:, b : h - b, b : w - b]
    mc = m[b : h - b, b : w - b]
    out["shift_mse_dx1"] = weighted_mse(
        (core[:, :, 1:] - core[:, :, :-1]) ** 2, mc[:, 1:] * mc[:, :-1]
    )
    out["shift_mse_dy1"] = weighted_mse(
        (core[:, 1:, :] - core[:, :-1, :]) ** 2, mc[1:, :] * mc[:-1, :]
    )
    resized = down_up(ch)
    out["resize_mse_downUp"] = weighted_mse((resized[:, b : h - b, b : w - b] - core) ** 2, mc)

    ky, kx = freq_index(h, w)
    nyquist = (np.abs(kx) >= w // 2 - 1) | (np.abs(ky) >= h // 2 - 1)
    everything = p.sum() - p[0, 0]
    out["checkerboard_energy"] = float(p[nyquist].sum() / everything) if everything > 0 else 0.0

    if bands:
        if ref_bands is None:
            out["band_score"], out["band_max_run"], _ = band_reading(ch, mask, period, fx, fy)
        else:
            ref_share, base, rperiod, rfx, rfy = ref_bands
            norms = math.hypot(fx, fy) * math.hypot(rfx, rfy)
            aligned = abs(fx * rfx + fy * rfy) >= math.cos(math.radians(18.0)) * norms
            share, run, _ = band_reading(ch, mask, rperiod, rfx, rfy, base)
            ok = aligned and math.isfinite(ref_share) and math.isfinite(share)
            out["band_score"] = max(share - ref_share, 0.0) if ok else math.nan
            out["band_max_run"] = run if aligned else math.nan
    return out


def health(values: np.ndarray, clip_range: float = 3.0) -> dict[str, float]:
    """Latent health of one image's values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        nan = math.nan
        return {
            "mean": nan,
            "std": nan,
            "min": nan,
            "max": nan,
            "nonfinite": float(v.size),
            "clip_fraction": nan,
            "clip_excess": nan,
        }
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "nonfinite": float(v.size - finite.size),
        "clip_fraction": float((np.abs(finite) > clip_range).mean()),
        "clip_excess": float(np.maximum(np.abs(finite) - clip_range, 0).mean() / clip_range),
    }
