r"""Spectral texture metrics: batched torch functions on ``(B, C, H, W)`` images, any device.

Everything is computed in float32 (float64 when the input is float64), whatever the input dtype
(fp16/bf16 latents included), and returned as float32 ``(B,)`` tensors on the input's device.
An image holding a NaN or an infinity gets NaN metrics; the rest of the batch is untouched.

Definitions (enough to check any number by hand)
------------------------------------------------
**Signal.** RGB (C = 3) becomes Rec.709 luma ``0.2126 R + 0.7152 G + 0.0722 B``; any other C is
kept per channel (latents) and the *power spectra* of the channels are averaged. The mask
``m`` (``B×1×H×W`` or ``1×1×H×W``, values in [0, 1], default ones) and the window ``w`` form the
weight ``v = m·w``; ``y = (luma − mean_v(luma))·v`` where ``mean_v`` is the ``v``-weighted mean,
so ``y`` has exactly zero DC. Windows: ``"hann"`` (periodic 2-D Hann, default), ``"tukey"``
(periodic, α = 0.5), ``"none"`` (rectangular) and ``"periodic_smooth"`` (no window; Moisan's
periodic component ``p = y − s`` of ``y``, whose spectrum has no boundary "axis cross").
An image with ``max|y| ≤ 64·ε·max|luma|`` (ε of the working dtype: a constant image, an
empty mask) is *blank*: ``y = 0``, no power at all.

**Spectrum.** ``P = |FFT2(y)|²`` (mean over channels). Frequency indices ``kx ∈ [−W/2, W/2)``,
``ky ∈ [−H/2, H/2)``; the *radius* of a bin is ``r = N·√((kx/W)² + (ky/H)²)`` with
``N = max(H, W)``: FFT-index pixels, so a grating of period T px peaks at ``r = N/T`` at every
angle (on a square image, exactly the FFT index). ``r_max = N/√2`` (the corner); ``r_bins`` rings
from centre to corner (never narrower than one radius unit) carry the noise floor below, and
"one bin" means ``r_max / r_bins``. Bins within ``√(kx² + ky²) < 2.5`` of DC (the Hann main
lobe, ±2 bins, plus margin) are the *DC lobe*: excluded from every peak search and ring sum.

**f\*** (``fundamental_radius_bin``, radius units). The reference's soft-argmax of ring *means*
lands on the DC lobe; texwatch looks for 2-D peaks over a noise floor instead:

1. noise floor per ring: ``F = exp(mean(ln(P + ε)) + γ)`` over the ring's non-lobe bins
   (γ = 0.5772 is Euler's constant: for exponentially distributed noise power this is the mean
   power, while a texture's few peak bins barely move a mean of logarithms);
   ``ε = 1e-9 × mean non-lobe power``. A ring with fewer than 8 bins (counted over the full
   plane: the corners, the rings next to the lobe of a small image) has no usable floor: its
   bins never hold a peak;
2. ``S(k)`` = power summed over the 3×3 bins around ``k`` (lobe bins count as 0), which also
   undoes the scalloping of off-bin peaks; *prominence* ``S / 9F``, excess ``S − 9F``;
3. a bin is *significant* when its prominence is ≥ 10^0.7 (7 dB); the peak is the significant
   bin of largest excess. Noise reaches that too (its most prominent bin measures 7–9 dB at
   256² and 512²): what keeps noise aperiodic is the ACF agreement below. 7 dB is the lowest
   gate at which no image of white, 1/f or 1/f² noise reads periodic in
   ``benchmarks/alarm_quality.py`` (section 6: 6 dB lets 1/f² noise through); higher gates lose
   textures with about 4 periods across (coins at 256²);
4. sub-bin refinement: a parabola through ``ln P`` at the peak and its two neighbours, along
   ``kx`` and along ``ky`` separately (offsets clamped to ±1 bin);
5. ``f* = N·√((kx*/W)² + (ky*/H)²)``. Periods longer than ``N/2.5`` px cannot be seen (they sit
   in the DC lobe); a texture needs about 4 periods across the image to clear the lobe's rings.

``peak_prominence``: ``10·log10(S/9F)`` of the f\* bin, in dB; for an image without a significant
bin, that of its most prominent bin (how close it came). NaN for a blank image.

**ACF period** (``acf_first_peak_radius_bin``, in px). ``ACF = IFFT2(|FFT2(y, 2H×2W)|²)`` — the
zero-padded, linear (not circular) autocorrelation (Wiener–Khinchin) — divided by the same
autocorrelation of the weight ``v`` (so the window's decay does not pull peaks toward 0) and
normalised to 1 at lag 0. It is sampled every 1 px along the direction of the f\* peak (a radial
average fails on anisotropic textures such as bricks) while the weight's overlap stays ≥ 10 %
of its lag-0 value. The period is the first local maximum whose topographic prominence (height
above the higher of the two lowest points that separate it from higher ground) is ≥ 0.1 and
whose height is at least half the highest such maximum (a texture's sub-period bumps are not
its period), refined with a parabola through its neighbours.

**Periodicity** (``periodic``, 0 or 1). An image holds a periodic texture when it has a
significant peak *and* an ACF period ``T`` that agree: ``k = T·f*/N`` is within 8 % of 1, 2 or 3
(f\* is the fundamental or, for line-like textures, one of its first harmonics). A lone
significant peak without that agreement — an edge's streak, a scanner's or a JPEG grid's tone
on a natural image — is not a texture. When ``periodic`` is 0, f\*, the ACF period and
everything measured around f\* are NaN: never a guess.

**Tile scale** (``tile_scale``; the harmonic lock). With a reference (the target, or a reference
tile), ``tile_scale = T_x / T_ref``: x's ACF period over the reference's, each read along its
own f\* direction, so a texture turned or flipped against a single reference tile keeps its
scale. 1 is the right scale, 2 tiles twice too large (x's fundamental sits at ``f_ref/2``:
locked onto the subharmonic), ½ tiles half as large (locked onto ``2 f_ref``). Both are read
from the linear ACF, which sums every harmonic of a texture: a doubled line-like texture whose
second harmonic falls exactly on ``f_ref`` still reads 2, and sharpening, blurring, contrast or
JPEG change the harmonics' weights but not the period. NaN when the reference is not periodic
(the gate: an aperiodic target has no scale to lock onto) or x is not (noise, a flat image: no
scale at all); a number given as ``ref`` stands for ``f_ref``, with ``T_ref = N/f_ref``.
:mod:`texwatch.alarms` reads a lock at ``tile_scale ≥ 1.5`` or ``≤ 1/1.5``.

``ref_radius_bin``: the reference's f\* in *x's* radius units (``f_ref · N_x / N_ref``, i.e. the
same period in px), or the radius given directly. ``axis_ratio_at_f``: the share of the ring
energy ``E(f) = Σ_k P(k)·g(|k| − f)`` (Gaussian profile of FWHM ``ring_width``, cut at
``|d| ≤ ring_width``; f = ``ref_radius_bin`` with a reference, else f\*) in bins on the two axes
(``kx = 0`` or ``ky = 0``): the FFT boundary "axis cross".

**Bands** (``bands=True``: ``band_score``, ``band_max_run``). The image is cut into row strips
(``s × W``) and column strips (``H × s``), ``s = 4 T`` rounded to 8 px, stride ``s/4``, each with
its own mean removal, rectangular window (the longest usable lags) and mask; a strip's period is
its first prominent ACF peak (however low: a strip across a band's edge holds both periods). With
a reference, T and the direction the strips are read along are the reference's, and x's strips
are compared with the median of the reference's own strips; without one, the image's own. A
strip reads *doubled* when its period is within 0.4 octave of twice that median, and a band is
two neighbouring doubled strips at least (one strip across a gap between text lines is not a
band). ``band_score`` is the largest share, over the two orientations, of strips in such bands;
with a reference, minus the same share of the reference's own strips (a texture with gaps reads
some doubled strips in the target too). ``band_max_run`` is the extent in px of the longest
band. A band narrower than two periods of its doubled texture cannot be read. NaN when the
image or the reference is not periodic, or when x's f\* direction is more than 18° off the
reference's (a texture turned against its reference tile: its strips cannot be read alike).

**Aliasing** (``alias_score``). With a reference image of x's size: the share of x's non-lobe
power in bins that are 20 dB above their own ring's noise floor *and* 10 dB above the
reference's largest prominence at the same radius (its ring and the two next to it: a texture
turned or flipped keeps its peaks' radii) — strong, sharp peaks at a frequency the reference
does not have, such as the folded tones of a fine pattern subsampled without a low-pass filter.
NaN without such a reference.

**Pixel-domain aliasing** (on the un-windowed luma / channels, mask as weight, a 2-px border
excluded): ``shift_mse_dx1`` = weighted mean of ``(y[i, j+1] − y[i, j])²`` with weight
``m[i, j]·m[i, j+1]``, ``shift_mse_dy1`` likewise along rows; ``resize_mse_downUp`` = weighted
MSE between the image and the image resized to ``(H//2, W//2)`` and back with antialiased
bicubic resampling (Keys a = −0.5, as PIL and ``torch.nn.functional.interpolate(...,
antialias=True)``).

**checkerboard_energy**: share of the non-DC power in the Nyquist band ``|kx| ≥ W//2 − 1`` or
``|ky| ≥ H//2 − 1`` (where transposed-convolution checkerboards put theirs); 0 for an image
with no power at all.

**Local period map** (:func:`local_period_map`): the ACF period of sliding windows, each with
its own mask/mean/Hann window, read along the window's own f\* (so a harmonic peak never halves
it); NaN where the window has no significant peak or its mask mean is < 0.3.

**Cost.** One zero-padded FFT per image feeds every metric (its even bins are the plain
spectrum; the ACF is taken from it), one more per reference image, and the band scan one batched
FFT over the strips of each strip size. No Python loop runs over images, windows or strips.

Examples:
    >>> import torch
    >>> from texwatch.spectral import texture_metrics
    >>> yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    >>> grating = (0.5 + 0.5 * torch.cos(2 * torch.pi * xx / 16)).expand(1, 1, 256, 256)
    >>> round(float(texture_metrics(grating)["fundamental_radius_bin"][0]))  # 256 / 16
    16
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HEALTH_KEYS",
    "BAND_KEYS",
    "METRIC_KEYS",
    "WINDOWS",
    "AnomalyRegions",
    "SpectrumViews",
    "diff_heatmap",
    "latent_health",
    "local_period_map",
    "power_spectrum",
    "ring_energy",
    "sobel_anomalies",
    "sobel_magnitude",
    "spectrum_views",
    "texture_metrics",
]

METRIC_KEYS: tuple[str, ...] = (
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
)
"""Keys of :func:`texture_metrics`, always present."""

BAND_KEYS: tuple[str, ...] = ("band_score", "band_max_run")
"""Extra keys of :func:`texture_metrics` with ``bands=True``."""

HEALTH_KEYS: tuple[str, ...] = (
    "mean",
    "std",
    "min",
    "max",
    "nonfinite",
    "clip_fraction",
    "clip_excess",
)
"""Keys of :func:`latent_health`."""

WINDOWS: tuple[str, ...] = ("hann", "tukey", "periodic_smooth", "none")
"""Accepted ``window`` names."""

_LUMA = (0.2126, 0.7152, 0.0722)
_MIN_SIZE = 8
_LOBE_RADIUS = 2.5  # FFT-index bins around DC that belong to the window's main lobe
_PEAK_PROMINENCE = 10**0.7  # 3x3 power over 9 x noise floor, 7 dB: a significant peak
_MIN_RING_BINS = 8  # a ring with fewer bins (full plane) has no usable noise floor
_MAX_HARMONIC = 3  # f* may sit on the ACF fundamental's 1st, 2nd or 3rd harmonic
_PERIOD_AGREEMENT = 0.08  # relative tolerance of that agreement
_ALIAS_GAIN = 10.0  # a peak 10 dB above the reference's spectrum there is not the reference's
_ALIAS_PROMINENCE = 100.0  # a spurious peak must also be 20 dB above its own noise floor
_EULER_GAMMA = 0.5772156649015329
_FLOOR_EPS = 1e-9  # relative to the mean non-lobe power
_TUKEY_ALPHA = 0.5
_BLANK_EPS = 64.0  # a prepared signal under 64 ε of the image's level is rounding error
_ACF_PROMINENCE = 0.1
_ACF_RELATIVE_HEIGHT = 0.5  # a sub-period bump under half the highest prominent peak is skipped
_ACF_MIN_OVERLAP = 0.1
_BORDER = 2
_LOCAL_MIN_MASK = 0.3
_BAND_STRIP_PERIODS = 4.0  # a band strip is this many base periods across
_ALIGNED_COSINE = math.cos(math.radians(18.0))  # x's peak along the reference's, for bands
_BAND_OCTAVES = 0.4  # a strip whose period is within this many octaves of 2T reads doubled
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_DENSE_RESIZE_MAX = 96  # up to this size, dense resampling matrices beat torch's resize kernel


# ----------------------------------------------------------------------------- input checks


def _check_images(x: object, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"`{name}` must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}")
    b, c, h, w = x.shape
    if b == 0 or c == 0:
        raise ValueError(f"`{name}` needs at least one image and one channel, got {tuple(x.shape)}")
    if h < _MIN_SIZE or w < _MIN_SIZE:
        raise ValueError(f"`{name}` must be at least {_MIN_SIZE}x{_MIN_SIZE} px, got {h}x{w}")
    return x


def _check_window(window: object) -> str:
    if window not in WINDOWS:
        raise ValueError(f"`window` must be one of {WINDOWS}, got {window!r}")
    return str(window)


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    return value


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}")
    return float(value)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare_mask(mask: object, x: Tensor, dtype: torch.dtype, name: str = "mask") -> Tensor | None:
    """Validate a ``(B|1, 1, H, W)`` mask against ``x`` and cast it to the working dtype."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor or None, got {type(mask).__name__}")
    b, _, h, w = x.shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, b):
        raise ValueError(
            f"`{name}` must have shape ({b} or 1, 1, {h}, {w}), got {tuple(mask.shape)}"
        )
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"`{name}` must match the images' {h}x{w} pixels, got {tuple(mask.shape)}")
    return mask.to(device=x.device, dtype=dtype)


@contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """Disable autocast: FFTs, logarithms and ratios here need float32 or better."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _finite_images(x: Tensor) -> tuple[Tensor, Tensor]:
    """Images with any NaN/inf replaced by zeros (so they cannot poison batched ops) + flags.

    amin/amax propagate NaN (and are much faster than ``aminmax`` on CPU); the copy is only
    made when something is non-finite.
    """
    flat = x.reshape(x.shape[0], -1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    finite = torch.isfinite(low) & torch.isfinite(high)  # (B,)
    if bool(finite.all()):
        return x, finite
    clean = torch.where(
        finite[:, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device)
    )
    return clean, finite


def _clean_channels(x: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Luma / channels of ``x`` with non-finite images zeroed, and the finite flags (B,).

    Checked after the luma (a third of the data for RGB): its weights are all positive, so a
    NaN or infinity in any channel shows there.
    """
    return _finite_images(_channels(x, dtype))


def _channels(x: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, C, H, W) -> (B, C', H, W): Rec.709 luma for RGB, the channels themselves otherwise."""
    x = x.to(dtype)
    if x.shape[1] == 3:
        weights = torch.tensor(_LUMA, dtype=dtype, device=x.device)
        # a (3,) @ (B, 3, HW) product: one pass, no (B, 3, H, W) temporary (a 1x1 conv2d is
        # ~100x slower on a 2-thread CPU)
        b, _, h, w = x.shape
        return torch.matmul(weights, x.reshape(b, 3, h * w)).view(b, 1, h, w)
    return x


# ----------------------------------------------------------------------------- windows


@lru_cache(maxsize=64)
def _window_1d(kind: str, n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    t = torch.arange(n, dtype=torch.float64) / n
    if kind == "hann":
        w = 0.5 - 0.5 * torch.cos(2 * math.pi * t)
    elif kind == "tukey":
        a = _TUKEY_ALPHA
        w = torch.ones(n, dtype=torch.float64)
        left = t < a / 2
        right = t > 1 - a / 2
        w[left] = 0.5 - 0.5 * torch.cos(2 * math.pi * t[left] / a)
        w[right] = 0.5 - 0.5 * torch.cos(2 * math.pi * (1 - t[right]) / a)
    else:
        w = torch.ones(n, dtype=torch.float64)
    return w.to(device=device, dtype=dtype)


def _window_2d(kind: str, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return _window_1d(kind, h, device, dtype)[:, None] * _window_1d(kind, w, device, dtype)[None, :]


def _periodic_component(u: Tensor) -> Tensor:
    """Moisan's periodic-plus-smooth decomposition of (..., H, W): return the periodic part.

    The smooth part ``s`` solves ``Δs = v`` (periodic discrete Laplacian), ``v`` being the jumps
    across the image's opposite borders; only 1-D FFTs of the borders and one inverse FFT.
    """
    h, w = u.shape[-2:]
    a = u[..., -1, :] - u[..., 0, :]  # (..., W) jump between last and first row
    b = u[..., :, -1] - u[..., :, 0]  # (..., H) jump between last and first column
    a_hat = torch.fft.rfft(a, dim=-1)  # (..., W//2+1)
    b_hat = torch.fft.fft(b, dim=-1)  # (..., H)
    q = torch.arange(h, device=u.device, dtype=u.dtype)
    r = torch.arange(w // 2 + 1, device=u.device, dtype=u.dtype)
    one_q = 1 - torch.exp(2j * math.pi * q / h)  # (H,)
    one_r = 1 - torch.exp(2j * math.pi * r / w)  # (W//2+1,)
    v_hat = a_hat[..., None, :] * one_q[:, None] + b_hat[..., :, None] * one_r[None, :]
    lap = (
        2 * torch.cos(2 * math.pi * q / h)[:, None]
        + 2 * torch.cos(2 * math.pi * r / w)[None, :]
        - 4
    )
    lap[0, 0] = 1.0
    s_hat = v_hat / lap
    s_hat[..., 0, 0] = 0
    return u - torch.fft.irfft2(s_hat, s=(h, w))


def _apodize(ch: Tensor, mask: Tensor | None, window: str) -> Tensor:
    """(B, C, H, W) -> weighted-mean-free, masked, windowed signal ``y`` (same shape)."""
    h, w = ch.shape[-2:]
    weight: Tensor | None = mask
    if window in ("hann", "tukey"):
        win = _window_2d(window, h, w, ch.device, ch.dtype)
        weight = win[None, None] if weight is None else weight * win
    if weight is None:
        y = ch - ch.mean(dim=(-2, -1), keepdim=True)
    else:
        # weighted mean as a (batched) matrix-vector product: no full-size temporary
        flat_w = weight.reshape(weight.shape[0], h * w, 1)  # (B|1, HW, 1)
        total = flat_w.sum(dim=1, keepdim=True).clamp_min(1e-30)  # (B|1, 1, 1)
        if weight.shape[0] == 1:  # one shared weight: a single matrix-vector product
            mean = (ch.reshape(-1, h * w) @ flat_w[0, :, 0]).view(ch.shape[0], -1, 1) / total
        else:
            mean = torch.matmul(ch.reshape(ch.shape[0], -1, h * w), flat_w) / total  # (B, C, 1)
        y = torch.sub(ch, mean[..., None]).mul_(weight)
    if window == "periodic_smooth":
        y = _periodic_component(y)
    return _blank_rounding(y, ch)


def _blank_rounding(y: Tensor, ch: Tensor) -> Tensor:
    """Zero the images whose prepared signal is only rounding error of the mean removal.

    A constant image or an empty mask leaves ``|y| <= 64·ε·max|luma|``; zeroing it makes such
    an image have no power at all (f* NaN) instead of a spectrum of float noise.
    """
    n = y.shape[0]
    flat_y, flat_ch = y.reshape(n, -1), ch.reshape(n, -1)
    residual = torch.maximum(flat_y.amax(dim=1).abs(), flat_y.amin(dim=1).abs())
    level = torch.maximum(flat_ch.amax(dim=1).abs(), flat_ch.amin(dim=1).abs())
    blank = residual <= _BLANK_EPS * torch.finfo(y.dtype).eps * level
    if bool(blank.any()):
        y = torch.where(blank.view(n, *([1] * (y.ndim - 1))), torch.zeros_like(y), y)
    return y


def _channel_power(spec: Tensor) -> Tensor:
    """``|spec|²`` of (B, C, ...) spectra, averaged over the channels: (B, ...)."""
    power = spec.real.square().addcmul_(spec.imag, spec.imag)
    return power[:, 0] if power.shape[1] == 1 else power.mean(dim=1)


def _power(y: Tensor) -> Tensor:
    """Half-plane power ``|rfft2|²`` of (B, C, H, W), averaged over channels: (B, H, W//2+1)."""
    return _channel_power(torch.fft.rfft2(y))


def _spectrum_and_acf(y: Tensor) -> tuple[Tensor, Tensor]:
    """Half-plane power (B, H, W//2+1) and linear ACF (B, H+1, 2W) of (B, C, H, W) signals.

    One zero-padded 2H×2W FFT per channel feeds both: its even bins are the plain FFT, and the
    inverse transform of its (channel-mean) power is the linear ACF (Wiener–Khinchin). That
    power is real and point-symmetric, so the lags ``τy ∈ [0, H]`` suffice: an ``ihfft`` along
    y and an inverse rfft along x, a quarter of a full ``irfft2``. ``τx`` is a circular index.

    Single-channel signals (luma) take the transforms along rows first, then along columns of a
    transposed copy: torch copies a strided axis before transforming it anyway, and this order
    never transforms the padding's zero rows (about 15 % faster at 512², slower for latents).
    """
    h, w = y.shape[-2:]
    if y.shape[1] > 1:
        padded = _channel_power(torch.fft.rfft2(y, s=(2 * h, 2 * w)))  # (B, 2H, W+1)
        acf = torch.fft.irfft(torch.fft.ihfft(padded, dim=-2), n=2 * w, dim=-1)
        return padded[:, ::2, ::2].contiguous(), acf
    rows = torch.fft.rfft(y, n=2 * w, dim=-1).mT.contiguous()  # (B, 1, W+1, H)
    padded_t = _channel_power(torch.fft.fft(rows, n=2 * h, dim=-1))  # (B, W+1, 2H)
    along_y = torch.fft.ihfft(padded_t, dim=-1).mT.contiguous()  # (B, H+1, W+1)
    acf = torch.fft.irfft(along_y, n=2 * w, dim=-1)
    return padded_t[:, ::2, ::2].mT.contiguous(), acf


# ----------------------------------------------------------------------------- frequency grid


@dataclass(frozen=True)
class _Grid:
    """Half-plane frequency geometry of an H×W image (rfft layout: rows = ky in FFT order)."""

    h: int
    w: int
    n: int  # max(H, W): radius unit
    r_max: float  # corner radius
    ky: Tensor  # (H,) signed row frequency index
    weight: Tensor  # (H, Wh) multiplicity (1 or 2) of a half-plane bin in the full plane, 0 in lobe
    weight_flat: Tensor  # (H*Wh,)
    weight_sum: float
    keep: Tensor  # (H, Wh) 1.0 outside the DC lobe, 0.0 inside
    mult: Tensor  # (H, Wh) multiplicity including lobe bins
    lobe: Tensor  # (H, Wh) bool
    nyquist: Tensor  # (H, Wh) bool
    ring: Tensor  # (H*Wh,) floor ring of each bin
    floor_slot: Tensor  # (H*Wh,) the ring, or n_rings for bins that cannot hold a peak
    radius: Tensor  # (H*Wh,) radius of each bin
    ring_count: Tensor  # (n_rings,) non-lobe bins per ring (with multiplicity)
    n_rings: int
    profile_bin: Tensor  # (H*Wh,) index of the r_bins profile bin (clamped)
    r_bins: int
    splat_lo: Tensor  # (H*Wh,) lower profile bin of the linear splat
    splat_hi: Tensor  # (H*Wh,) upper profile bin
    splat_frac: Tensor  # (H*Wh,) share going to the upper bin
    smooth_kernel: Tensor  # (1, 1, K) Gaussian of one radius unit, in profile bins
    ext_rows: Tensor  # (H+2, Wh+2) indices of the half-plane extended by one bin on each side
    ext_cols: Tensor
    full_rows: Tensor  # (H, W) indices that rebuild the full plane (FFT order) from the half
    full_cols: Tensor
    radius_values: Tensor  # (U,) the distinct radii of the non-lobe bins, ascending
    radius_slot: Tensor  # (H*Wh,) each bin's index into radius_values (0 for lobe bins)
    axis_index: Tensor  # (A,) flat index of the non-lobe bins on the axes
    axis_slot: Tensor  # (A,) their radius_slot


@lru_cache(maxsize=64)
def _grid(h: int, w: int, r_bins: int, device: torch.device, dtype: torch.dtype) -> _Grid:
    wh = w // 2 + 1
    n = max(h, w)
    rows_k = torch.arange(h)
    ky = torch.where(rows_k <= (h - 1) // 2, rows_k, rows_k - h).to(torch.float64)  # FFT order
    kx = torch.arange(wh, dtype=torch.float64)
    radius = n * torch.sqrt((kx[None, :] / w) ** 2 + (ky[:, None] / h) ** 2)
    lobe = (kx[None, :] ** 2 + ky[:, None] ** 2) < _LOBE_RADIUS**2
    mult = torch.full((h, wh), 2.0, dtype=torch.float64)
    mult[:, 0] = 1.0
    if w % 2 == 0:
        mult[:, -1] = 1.0
    weight = mult * (~lobe)
    r_max = n / math.sqrt(2.0)
    ring_width = max(r_max / r_bins, 1.0)
    n_rings = int(r_max // ring_width) + 1
    # + 1e-9: a bin exactly on a ring edge belongs to the outer ring despite rounding
    ring = torch.clamp((radius / ring_width + 1e-9).floor().long(), max=n_rings - 1).flatten()
    ring_count = torch.zeros(n_rings, dtype=torch.float64).index_add_(0, ring, weight.flatten())
    few = ring_count < _MIN_RING_BINS  # too few bins for a noise floor: never a peak
    profile_bin = torch.clamp(
        (radius / (r_max / r_bins) + 1e-9).floor().long(), max=r_bins - 1
    ).flatten()
    bin_width = r_max / r_bins
    pos = (radius / bin_width - 0.5).clamp(0, r_bins - 1).flatten()
    splat_lo = pos.floor().long()
    splat_frac = pos - splat_lo
    splat_hi = (splat_lo + 1).clamp(max=r_bins - 1)
    sigma_bins = max(1.0 / bin_width, 0.5)
    half = int(math.ceil(3 * sigma_bins))
    taps = torch.exp(
        -(torch.arange(-half, half + 1, dtype=torch.float64) ** 2) / (2 * sigma_bins**2)
    )
    smooth_kernel = (taps / taps.sum()).view(1, 1, -1)
    axis = (kx[None, :] == 0) | (ky[:, None] == 0)
    nyquist = (kx[None, :] >= w // 2 - 1) | (ky[:, None].abs() >= h // 2 - 1)
    # Extended half plane: one more row above/below (circular) and one column each side,
    # mirrored through the origin (P(kx, ky) = P(-kx, -ky)) to stay inside the half plane.
    rows = torch.arange(-1, h + 1) % h
    flipped = (-rows) % h
    ext_rows = rows[:, None].repeat(1, wh + 2)
    ext_cols = torch.arange(-1, wh + 1)[None, :].repeat(h + 2, 1)
    ext_rows[:, 0] = flipped
    ext_cols[:, 0] = 1
    ext_rows[:, -1] = flipped
    ext_cols[:, -1] = w - (w // 2 + 1)
    full_k = torch.arange(w)
    mirror = full_k > w // 2
    full_cols = torch.where(mirror, w - full_k, full_k)[None, :].repeat(h, 1)
    rows_h = torch.arange(h)[:, None].repeat(1, w)
    full_rows = torch.where(mirror[None, :], (-rows_h) % h, rows_h)
    outside = (~lobe).flatten()
    radius_values, slot = torch.unique(radius.flatten()[outside], return_inverse=True)
    radius_slot = torch.zeros(h * wh, dtype=torch.long)
    radius_slot[outside] = slot
    axis_index = torch.nonzero(axis.flatten() & outside).flatten()

    def put(t: Tensor) -> Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

    return _Grid(
        h=h,
        w=w,
        n=n,
        r_max=r_max,
        ky=put(ky),
        weight=put(weight),
        weight_flat=put(weight.flatten()),
        weight_sum=float(weight.sum()),
        keep=put((~lobe).to(torch.float64)),
        mult=put(mult),
        lobe=put(lobe),
        nyquist=put(nyquist),
        ring=put(ring),
        floor_slot=put(torch.where(lobe.flatten() | few[ring], n_rings, ring)),
        radius=put(radius.flatten()),
        ring_count=put(ring_count),
        n_rings=n_rings,
        profile_bin=put(profile_bin),
        r_bins=r_bins,
        splat_lo=put(splat_lo),
        splat_hi=put(splat_hi),
        splat_frac=put(splat_frac),
        smooth_kernel=put(smooth_kernel),
        ext_rows=put(ext_rows),
        ext_cols=put(ext_cols),
        full_rows=put(full_rows),
        full_cols=put(full_cols),
        radius_values=put(radius_values),
        radius_slot=put(radius_slot),
        axis_index=put(axis_index),
        axis_slot=put(radius_slot[axis_index]),
    )


def _ring_floor(power: Tensor, g: _Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Noise floor per ring (N, n_rings), the log epsilon (N,) and the non-lobe energy (N,)."""
    n = power.shape[0]
    flat = power.reshape(n, -1)
    total = flat @ g.weight_flat
    eps = _FLOOR_EPS * total / g.weight_sum + torch.finfo(power.dtype).tiny
    logp = torch.log(flat + eps[:, None]).mul_(g.weight_flat)
    ring_log = torch.zeros(n, g.n_rings, dtype=power.dtype, device=power.device)
    ring_log = ring_log.index_add_(1, g.ring, logp) / g.ring_count.clamp_min(1.0)
    return torch.exp(ring_log + _EULER_GAMMA), eps, total


def _noise_floor(power: Tensor, g: _Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin noise floor (N, H, Wh), the log epsilon (N,) and the non-lobe energy (N,)."""
    ring_floor, eps, total = _ring_floor(power, g)
    floor = ring_floor.gather(1, g.ring[None].expand(power.shape[0], -1)).view_as(power)
    return floor, eps, total


class _Peak(NamedTuple):
    """The f* peak of a batch of spectra, each field (N,)."""

    radius: Tensor  # f*, radius units; NaN without a significant peak
    fx: Tensor  # refined peak frequency, cycles/px; NaN without a significant peak
    fy: Tensor
    prominence: Tensor  # S/9F of the f* bin, or of the most prominent bin without one; NaN if blank
    bins: Tensor  # (N, H*Wh) S/9F of every bin (from :func:`_prominence`), no graph


def _prominence(power: Tensor, g: _Grid) -> tuple[Tensor, Tensor, Tensor]:
    """Prominence ``S/9F`` (N, H*Wh) of every bin, its excess ``S − 9F`` and the energy (N,).

    Bins of the DC lobe and of rings with fewer than :data:`_MIN_RING_BINS` bins get a floor of
    the largest finite float: their prominence is ~0 and they never hold a peak.
    """
    n = power.shape[0]
    ring_floor, _, total = _ring_floor(power, g)
    top = torch.full((n, 1), torch.finfo(power.dtype).max, dtype=power.dtype, device=power.device)
    floor9 = torch.cat([9.0 * ring_floor, top], dim=1)
    floor9 = floor9.gather(1, g.floor_slot[None].expand(n, -1)).view_as(power)
    box = _box3(power * g.keep, g)  # S
    return (box / floor9).flatten(1), (box - floor9).flatten(1), total


def _peak(power: Tensor, g: _Grid) -> _Peak:
    """Significant spectral peak (f*) of half-plane spectra (N, H, Wh); see the module docstring."""
    n, h, wh = power.shape
    with torch.no_grad():  # choosing the bin is piecewise constant: no graph needed
        prominence, excess, total = _prominence(power.detach(), g)
        # S - 9F on significant bins (> 0 there: S >= 45F), 0 elsewhere
        excess = excess.mul_(prominence >= _PEAK_PROMINENCE)
        by_excess = excess.argmax(dim=1)
        significant = excess.gather(1, by_excess[:, None])[:, 0] > 0
        idx = torch.where(significant, by_excess, prominence.argmax(dim=1))
        peak_prominence = prominence.gather(1, idx[:, None])[:, 0]
        eps = _FLOOR_EPS * total / g.weight_sum + torch.finfo(power.dtype).tiny
    if power.requires_grad:  # the refinement below is differentiable (ACFPeriodLoss uses it)
        total = power.reshape(n, -1) @ g.weight_flat
        eps = _FLOOR_EPS * total / g.weight_sum + torch.finfo(power.dtype).tiny
    iy = idx // wh
    ix = idx % wh
    batch = torch.arange(n, device=power.device)

    def log_at(dy: int, dx: int) -> Tensor:
        rows = g.ext_rows[iy + 1 + dy, ix + 1 + dx]
        cols = g.ext_cols[iy + 1 + dy, ix + 1 + dx]
        return torch.log(power[batch, rows, cols] + eps)

    centre = log_at(0, 0)
    dx = _parabola_vertex(log_at(0, -1), centre, log_at(0, 1))
    dy = _parabola_vertex(log_at(-1, 0), centre, log_at(1, 0))
    fx = (ix.to(power.dtype) + dx) / g.w
    fy = (g.ky[iy] + dy) / g.h
    radius = g.n * torch.sqrt(fx.square() + fy.square())
    nan = torch.tensor(math.nan, dtype=power.dtype, device=power.device)
    absent = ~significant | (total <= 0)
    return _Peak(
        torch.where(absent, nan, radius),
        torch.where(absent, nan, fx),
        torch.where(absent, nan, fy),
        torch.where(total <= 0, nan, peak_prominence),
        prominence,
    )


def _smooth_radial_sums(values: Tensor, g: _Grid, lobe: bool = False) -> Tensor:
    """Differentiable ring sums (N, r_bins) of half-plane values (N, H, Wh), DC lobe left out
    (kept with ``lobe``).

    Each bin's value is split linearly between the two nearest ring centres, then the profile is
    smoothed by a Gaussian of one radius unit: rings thinner than the FFT lattice would otherwise
    hold a varying handful of bins each and make the profile spiky.
    """
    flat = (values * (g.mult if lobe else g.weight)).flatten(1)
    sums = torch.zeros(values.shape[0], g.r_bins, dtype=values.dtype, device=values.device)
    sums = sums.index_add(1, g.splat_lo, flat * (1 - g.splat_frac))
    sums = sums.index_add(1, g.splat_hi, flat * g.splat_frac)
    half = g.smooth_kernel.shape[-1] // 2
    return F.conv1d(sums[:, None], g.smooth_kernel, padding=half)[:, 0]


def _extended(values: Tensor, g: _Grid) -> Tensor:
    """Half-plane values (N, H, Wh) with one more bin on every side (N, H+2, Wh+2), mirrored."""
    left = values[:, g.ext_rows[:, 0], 1]  # kx = -1: P(1, -ky), for the H+2 extended rows
    right = values[:, g.ext_rows[:, -1], g.ext_cols[0, -1]]
    rows = torch.cat([values[:, -1:], values, values[:, :1]], dim=1)  # circular in ky
    return torch.cat([left[..., None], rows, right[..., None]], dim=2)


def _box3(values: Tensor, g: _Grid) -> Tensor:
    """Sum over the 3x3 neighbourhood of every half-plane bin (N, H, Wh), mirrors included."""
    ext = _extended(values, g)
    across = ext[:, :, :-2] + ext[:, :, 1:-1] + ext[:, :, 2:]
    return across[:, :-2] + across[:, 1:-1] + across[:, 2:]


def _max3(values: Tensor, g: _Grid) -> Tensor:
    """Largest value in the 3x3 neighbourhood of every half-plane bin (N, H, Wh)."""
    return F.max_pool2d(_extended(values, g)[:, None], kernel_size=3, stride=1)[:, 0]


def _parabola_vertex(left: Tensor, centre: Tensor, right: Tensor, limit: float = 1.0) -> Tensor:
    """Offset of the vertex of the parabola through (-1, left), (0, centre), (1, right)."""
    curvature = left - 2 * centre + right
    safe = torch.where(curvature < 0, curvature, torch.ones_like(curvature))
    offset = 0.5 * (left - right) / safe
    return torch.where(curvature < 0, offset, torch.zeros_like(offset)).clamp(-limit, limit)


def _ring_energy(power: Tensor, g: _Grid, radii: Tensor, width: float) -> tuple[Tensor, Tensor]:
    """Gaussian ring sums E(r) of half-plane spectra (N, H, Wh) at radii (N, R).

    Returns (E, E on the axes), each (N, R); NaN radii give NaN. The power is first summed per
    distinct bin radius (exact: a ring weight depends on the radius alone), then only the
    distinct radii within ``width`` of each ring are visited.
    """
    n, r = radii.shape
    sigma = width / _FWHM_PER_SIGMA
    known = torch.isfinite(radii)
    centre = torch.where(known, radii, torch.full_like(radii, -2.0 * width - 1.0)).contiguous()
    values = g.radius_values
    lo = torch.searchsorted(values, centre - width, side="left")
    hi = torch.searchsorted(values, centre + width, side="right")
    span = int((hi - lo).max()) if lo.numel() else 0
    if span == 0:
        zero = torch.zeros_like(centre)
        nan = torch.full_like(centre, math.nan)
        return torch.where(known, zero, nan), torch.where(known, zero, nan)
    flat = power.reshape(n, -1) * g.weight_flat
    by_radius = torch.zeros(n, 2, values.numel(), dtype=power.dtype, device=power.device)
    by_radius[:, 0].index_add_(1, g.radius_slot, flat)
    by_radius[:, 1].index_add_(1, g.axis_slot, flat[:, g.axis_index])
    j = lo[..., None] + torch.arange(span, device=power.device)  # (N, R, span)
    inside = j < hi[..., None]
    j = j.clamp(max=values.numel() - 1)
    d = values[j] - centre[..., None]
    ring = torch.exp(-d.square() / (2 * sigma**2)) * inside
    picked = by_radius.gather(2, j.reshape(n, 1, -1).expand(-1, 2, -1)).view(n, 2, r, span)
    energy, on_axis = (picked * ring[:, None]).sum(dim=-1).unbind(1)
    nan = torch.full_like(energy, math.nan)
    return torch.where(known, energy, nan), torch.where(known, on_axis, nan)


# ----------------------------------------------------------------------------- ACF


@lru_cache(maxsize=32)
def _plain_weight_acf(
    window: str, h: int, w: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Linear autocorrelation (1, H+1, 2W) of the window alone (no mask)."""
    kind = window if window in ("hann", "tukey") else "none"
    win = _window_2d(kind, h, w, device, dtype)[None, None]
    return _spectrum_and_acf(win)[1]


def _weight_acf(mask: Tensor | None, window: str, h: int, w: int, like: Tensor) -> Tensor:
    if mask is None:
        return _plain_weight_acf(window, h, w, like.device, like.dtype)
    weight = mask
    if window in ("hann", "tukey"):
        weight = mask * _window_2d(window, h, w, like.device, like.dtype)
    return _spectrum_and_acf(weight)[1]


def _sample_lags(img: Tensor, lag_y: Tensor, lag_x: Tensor) -> Tensor:
    """Bilinear samples of half-plane lag images (N|1, H+1, 2W) at lags (N, L) -> (N, L).

    ``lag_y >= 0``; rows past the last are clamped (they lie beyond any usable overlap).
    """
    n = lag_y.shape[0]
    h2, w2 = img.shape[-2:]
    flat = img.reshape(img.shape[0], -1).expand(n, -1)
    y0 = lag_y.floor()
    x0 = lag_x.floor()
    wy = lag_y - y0
    wx = lag_x - x0
    y0 = y0.long()
    x0 = x0.long()

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat.gather(1, yy.clamp(max=h2 - 1) * w2 + (xx % w2))

    return (
        (1 - wy) * (1 - wx) * at(y0, x0)
        + (1 - wy) * wx * at(y0, x0 + 1)
        + wy * (1 - wx) * at(y0 + 1, x0)
        + wy * wx * at(y0 + 1, x0 + 1)
    )


def _acf_ray(
    acf: Tensor, wacf: Tensor, fx: Tensor, fy: Tensor, lags: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Unbiased, normalised ACF sampled at ``lags`` px along the direction of (fx, fy).

    ``lags`` is (L,) or (N, L), ascending from 0. Returns the profile (N, L) (+inf where the
    weight overlap is < 10 %, and after it), the valid flag per image (a direction exists) and
    the overlap ratio (N, L).
    """
    norm = torch.sqrt(fx.square() + fy.square())
    ok = torch.isfinite(norm) & (norm > 0)
    one = torch.ones_like(norm)
    ux = torch.where(ok, fx / torch.where(ok, norm, one), one)
    uy = torch.where(ok, fy / torch.where(ok, norm, one), torch.zeros_like(norm))
    # ACF(-τ) = ACF(τ): walk the ray with τy >= 0, the half the ACF is computed on.
    flip = (uy < 0) | ((uy == 0) & (ux < 0))
    ux = torch.where(flip, -ux, ux)
    uy = torch.where(flip, -uy, uy)
    lag_x = lags * ux[:, None]
    lag_y = lags * uy[:, None]
    a = _sample_lags(acf, lag_y, lag_x)
    wa = _sample_lags(wacf, lag_y, lag_x)
    # Denominators are made safe before dividing (an empty image has zero ACF and weight), so
    # that no 0/0 exists even in branches torch.where discards: their gradients would be NaN.
    w0 = wa[:, :1]
    overlap = wa / torch.where(w0 > 0, w0, torch.ones_like(w0))
    inside = torch.cumprod((overlap >= _ACF_MIN_OVERLAP).to(a.dtype), dim=1) > 0
    unbiased = a / torch.where(inside, wa, torch.ones_like(wa))
    a0 = unbiased[:, :1]
    profile = unbiased / torch.where(a0 > 0, a0, torch.ones_like(a0))
    inf = torch.tensor(math.inf, dtype=a.dtype, device=a.device)
    return torch.where(inside, profile, inf), ok, overlap


def _first_prominent_peak(
    profile: Tensor, first: int, threshold: float, relative: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Index (N,) of the first local maximum at index >= ``first`` whose topographic prominence
    is >= ``threshold`` and whose height is >= ``relative`` × the highest such maximum, and
    whether there is one. ``profile`` is +inf past its valid part."""
    n, length = profile.shape
    idx = torch.arange(length, device=profile.device)
    here = profile[:, :, None]  # (N, L_j, 1)
    there = profile[:, None, :]  # (N, 1, L_i)
    higher = there > here
    after = idx[None, None, :] > idx[None, :, None]
    before = idx[None, None, :] < idx[None, :, None]
    right_hit = higher & after
    left_hit = higher & before
    right_stop = torch.where(
        right_hit.any(dim=-1), right_hit.to(torch.int8).argmax(dim=-1), length - 1
    )
    left_stop = torch.where(
        left_hit.any(dim=-1),
        length - 1 - left_hit.flip(-1).to(torch.int8).argmax(dim=-1),
        0,
    )
    inf = torch.tensor(math.inf, dtype=profile.dtype, device=profile.device)
    i = idx[None, None, :]
    j = idx[None, :, None]
    right_base = torch.where((i >= j) & (i <= right_stop[..., None]), there, inf).amin(dim=-1)
    left_base = torch.where((i <= j) & (i >= left_stop[..., None]), there, inf).amin(dim=-1)
    prominence = profile - torch.maximum(left_base, right_base)
    prev = torch.cat([profile[:, :1], profile[:, :-1]], dim=1)
    nxt = torch.cat([profile[:, 1:], profile[:, -1:]], dim=1)
    is_max = (profile > prev) & (profile >= nxt) & torch.isfinite(profile)
    is_max = is_max & (idx[None, :] >= max(first, 1)) & (idx[None, :] < length - 1)
    good = is_max & (prominence >= threshold)
    if relative > 0:
        highest = torch.where(good, profile, -math.inf).amax(dim=1, keepdim=True)
        good = good & (profile >= relative * highest)
    return good.to(torch.int8).argmax(dim=1), good.any(dim=1)


def _acf_period(
    acf: Tensor, wacf: Tensor, fx: Tensor, fy: Tensor, relative: float = _ACF_RELATIVE_HEIGHT
) -> tuple[Tensor, Tensor, Tensor]:
    """ACF period in px (N,), plus the lags (L,) and the profile (N, L) it was read from.

    ``relative``: a peak lower than this × the highest prominent one is not the period (0 for
    the first prominent peak whatever its height)."""
    h = acf.shape[-2] - 1
    w = acf.shape[-1] // 2
    length = int(math.ceil(math.hypot(h, w) / 2)) + 2
    lags = torch.arange(length, dtype=acf.dtype, device=acf.device)
    profile, ok, _ = _acf_ray(acf, wacf, fx, fy, lags)
    # The search is O(L²): stop at the longest valid prefix of the batch (+1 for its edge).
    used = min(length, max(3, int(torch.isfinite(profile).sum(dim=1).max()) + 1))
    lags, profile = lags[:used], profile[:, :used]
    length = used
    j, found = _first_prominent_peak(profile, 1, _ACF_PROMINENCE, relative)
    rows = torch.arange(profile.shape[0], device=acf.device)
    jj = j.clamp(1, length - 2)
    offset = _parabola_vertex(profile[rows, jj - 1], profile[rows, jj], profile[rows, jj + 1], 0.5)
    period = jj.to(acf.dtype) + offset
    nan = torch.tensor(math.nan, dtype=acf.dtype, device=acf.device)
    period = torch.where(found & ok, period, nan)
    return period, lags, torch.where(torch.isfinite(profile), profile, nan)


# ----------------------------------------------------------------------------- analysis


@dataclass
class _Analysis:
    ch: Tensor  # (B, C', H, W) clean channels
    mask: Tensor | None
    finite: Tensor  # (B,)
    grid: _Grid
    power: Tensor  # (B, H, Wh)
    acf: Tensor  # (B, H+1, 2W) linear ACF, lags τy >= 0
    peak: _Peak  # f* of each image


def _analyse(x: Tensor, mask: object, window: str, r_bins: int) -> _Analysis:
    """Channels, spectra and f* of ``x``."""
    dtype = _work_dtype(x)
    ch, finite = _clean_channels(x, dtype)
    m = _prepare_mask(mask, x, dtype)
    h, w = x.shape[-2:]
    power, acf = _spectrum_and_acf(_apodize(ch, m, window))  # the one FFT of each image
    g = _grid(h, w, r_bins, x.device, dtype)
    return _Analysis(ch, m, finite, g, power, acf, _peak(power, g))


def _periodic(radius: Tensor, period: Tensor, n: int) -> Tensor:
    """Whether f* (radius units) and the ACF period (px) describe one periodic texture (B,).

    Wiener–Khinchin: the ACF's first peak is the fundamental period, and f* is its frequency or
    one of its first harmonics (line-like textures), so ``period · f* / n`` is within 8 % of 1,
    2 or 3. A lone significant peak without that agreement (an edge's streak, a scanner pattern
    on a natural image) is not a periodic texture.
    """
    k = period * radius / n
    nearest = k.round().clamp(1, _MAX_HARMONIC)
    return torch.isfinite(k) & ((k / nearest - 1).abs() <= _PERIOD_AGREEMENT)


def _gate(peak: _Peak, period: Tensor, n: int) -> tuple[_Peak, Tensor, Tensor]:
    """f*, its direction and the ACF period, NaN where they are not one periodic texture (see
    :func:`_periodic`), and the ``periodic`` flags (B,)."""
    periodic = _periodic(peak.radius, period, n)
    radius, fx, fy, period = (torch.where(periodic, t, torch.nan) for t in (*peak[:3], period))
    return peak._replace(radius=radius, fx=fx, fy=fy), period, periodic


class _Reference(NamedTuple):
    """What the tile scale needs of the reference, per image of x."""

    radius: Tensor  # (B,) f_ref in x's radius units; NaN when the reference is not periodic
    period: Tensor  # (B,) T_ref, px: the reference's ACF period (N_x / f_ref for a given radius)
    fx: Tensor  # (B,) direction of the reference's peak (NaN for a given radius)
    fy: Tensor
    bins: Tensor | None  # (B|1, H*Wh) S/9F of the reference's bins, for a reference of x's size
    strips: _BandReading | None  # reference images' strips against their own median (``bands``)


def _reference(
    ref: object,
    ref_mask: object,
    x: Tensor,
    window: str,
    r_bins: int,
    dtype: torch.dtype,
    bands: bool,
) -> _Reference:
    b = x.shape[0]
    n_x = max(x.shape[-2:])
    if isinstance(ref, bool):
        raise TypeError("`ref` must be a tensor, a number or None, got bool")
    if isinstance(ref, (int, float)):
        radius = torch.full((b,), float(ref), dtype=dtype, device=x.device)
        return _Reference(radius, n_x / radius, radius * math.nan, radius * math.nan, None, None)
    if not isinstance(ref, Tensor):
        raise TypeError(f"`ref` must be a tensor, a number or None, got {type(ref).__name__}")
    if ref.ndim in (0, 1):
        if ref.ndim == 1 and ref.shape[0] not in (1, b):
            raise ValueError(f"`ref` radii must have shape ({b},) or (1,), got {tuple(ref.shape)}")
        radius = ref.to(device=x.device, dtype=dtype).expand(b).clone()
        return _Reference(radius, n_x / radius, radius * math.nan, radius * math.nan, None, None)
    _check_images(ref, "ref")
    if ref.shape[0] not in (1, b):
        raise ValueError(
            f"`ref` must hold 1 or {b} images (one per image of x), got {ref.shape[0]}"
        )
    ch, finite = _clean_channels(ref, dtype)
    m = _prepare_mask(ref_mask, ref, dtype, name="ref_mask")
    h, w = ref.shape[-2:]
    power, acf = _spectrum_and_acf(_apodize(ch, m, window))
    peak = _peak(power, _grid(h, w, r_bins, ref.device, dtype))
    period_ref, _, _ = _acf_period(acf, _weight_acf(m, window, h, w, acf), peak.fx, peak.fy)
    peak, period_ref, _ = _gate(peak, period_ref, max(h, w))
    radius, period, fx, fy = (
        torch.where(finite, t, torch.full_like(t, math.nan)).to(x.device).expand(b).clone()
        for t in (peak.radius * (n_x / max(h, w)), period_ref, peak.fx, peak.fy)
    )
    bins = peak.bins.to(x.device) if (h, w) == tuple(x.shape[-2:]) else None
    strips = None
    if bands:
        own = _band_reading(ch, m, period_ref, peak.fx, peak.fy)
        strips = _BandReading(*(t.to(x.device).expand(b).clone() for t in own))
    return _Reference(radius, period, fx, fy, bins, strips)


def _aligned(fx: Tensor, fy: Tensor, ref_fx: Tensor, ref_fy: Tensor) -> Tensor:
    """Whether two peak directions are within 18° of each other, either way round (B,)."""
    dot = (fx * ref_fx + fy * ref_fy).abs()
    norms = torch.sqrt((fx.square() + fy.square()) * (ref_fx.square() + ref_fy.square()))
    return dot >= _ALIGNED_COSINE * norms  # False where NaN


def _alias_share(power: Tensor, bins: Tensor, g: _Grid, ref_bins: Tensor) -> Tensor:
    """Share (B,) of x's power in strong peaks the reference lacks (module docstring)."""
    n = bins.shape[0]
    ring_max = torch.zeros(ref_bins.shape[0], g.n_rings, dtype=bins.dtype, device=bins.device)
    ring_max = ring_max.scatter_reduce(
        1, g.ring[None].expand(ref_bins.shape[0], -1), ref_bins, "amax", include_self=True
    )
    # the reference's strongest peak at the same radius, give or take one ring: a texture
    # turned or flipped keeps its peaks' radii
    ring_max = F.max_pool1d(ring_max[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    around = ring_max.gather(1, g.ring[None].expand(ref_bins.shape[0], -1)).expand(n, -1)
    spurious = (bins >= _ALIAS_PROMINENCE) & (bins >= _ALIAS_GAIN * around)
    flat = power.reshape(n, -1) * g.weight_flat
    total = flat.sum(dim=1)
    share = (flat * spurious).sum(dim=1) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, share, torch.full_like(share, math.nan))


def _default_ref_mask(ref: object, mask: Tensor | None, h: int, w: int) -> Tensor | None:
    """x's mask also measures a reference of x's size (the target of a masked prediction)."""
    if mask is None or not isinstance(ref, Tensor) or ref.ndim != 4:
        return None
    if tuple(ref.shape[-2:]) != (h, w) or mask.shape[0] not in (1, ref.shape[0]):
        return None
    return mask


def _masked_mse(diff_sq: Tensor, weight: Tensor | None) -> Tensor:
    """Weighted mean over (C, H, W) of squared differences; ``weight`` is (B|1, 1, H, W)."""
    c = diff_sq.shape[1]
    if weight is None:
        return diff_sq.mean(dim=(1, 2, 3))
    total = (diff_sq * weight).sum(dim=(1, 2, 3))
    count = weight.expand(diff_sq.shape[0], -1, -1, -1).sum(dim=(1, 2, 3)) * c
    return total / count  # 0/0 = NaN for an empty mask


def _shift_mse(ch: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    h, w = ch.shape[-2:]
    lo, hi_y, hi_x = _BORDER, h - _BORDER, w - _BORDER
    dx = ch[..., lo:hi_y, lo + 1 : hi_x] - ch[..., lo:hi_y, lo : hi_x - 1]
    dy = ch[..., lo + 1 : hi_y, lo:hi_x] - ch[..., lo : hi_y - 1, lo:hi_x]
    wx = wy = None
    if mask is not None:
        wx = mask[..., lo:hi_y, lo + 1 : hi_x] * mask[..., lo:hi_y, lo : hi_x - 1]
        wy = mask[..., lo + 1 : hi_y, lo:hi_x] * mask[..., lo : hi_y - 1, lo:hi_x]
    return _masked_mse(dx.square(), wx), _masked_mse(dy.square(), wy)


@lru_cache(maxsize=32)
def _down_up_matrix(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``Mᵀ`` (n, n) of the 1-D resize to n//2 and back: a row vector ``v`` becomes ``v @ Mᵀ``.

    Taken from torch's own antialiased bicubic kernel applied to the unit vectors, so both
    ways of resizing use the same weights.
    """
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, 1, n)
    down = F.interpolate(
        basis, size=(1, n // 2), mode="bicubic", antialias=True, align_corners=False
    )
    up = F.interpolate(down, size=(1, n), mode="bicubic", antialias=True, align_corners=False)
    return up.view(n, n).to(device=device, dtype=dtype)


def _down_up(ch: Tensor) -> Tensor:
    """``ch`` resized to half size and back with antialiased bicubic resampling."""
    h, w = ch.shape[-2:]
    if max(h, w) <= _DENSE_RESIZE_MAX:
        rows = _down_up_matrix(h, ch.device, ch.dtype)
        cols = _down_up_matrix(w, ch.device, ch.dtype)
        return torch.matmul(rows.T, ch @ cols)
    down = F.interpolate(
        ch, size=(h // 2, w // 2), mode="bicubic", antialias=True, align_corners=False
    )
    return F.interpolate(down, size=(h, w), mode="bicubic", antialias=True, align_corners=False)


# ----------------------------------------------------------------------------- public API


@torch.no_grad()
def texture_metrics(
    x: Tensor,
    *,
    mask: Tensor | None = None,
    ref: Tensor | float | None = None,
    window: str = "hann",
    r_bins: int = 256,
    ring_width: float = 6.0,
    bands: bool = False,
    ref_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """All texture metrics of a batch (see the module docstring for the definitions).

    Args:
        x: Images or latents, ``(B, C, H, W)``, any float dtype and device; H, W >= 8.
        mask: Material region, ``(B|1, 1, H, W)`` in [0, 1]; apodizes the spectra and weights
            the pixel-domain MSEs. None = everywhere.
        ref: Reference/target images ``(B|1, C', H', W')`` (their f* becomes
            ``ref_radius_bin``; the tile scale, the bands and, at x's size, the alias score are
            measured against them), or a known radius in x's radius units (a number or a
            ``(B,)`` tensor). None: the reference-relative metrics are NaN.
        window: One of :data:`WINDOWS`.
        r_bins: Radial rings from centre to corner for the noise floor (at least 1 px wide).
        ring_width: FWHM, in radius units, of the Gaussian ring of ``axis_ratio_at_f``.
        bands: Also scan row and column strips for bands of another scale.
        ref_mask: Mask for ``ref`` images; defaults to ``mask`` when ``ref`` has x's size.

    Returns:
        float32 ``(B,)`` tensors on x's device for :data:`METRIC_KEYS` (and
        :data:`BAND_KEYS` with ``bands=True``). Non-finite images get NaN.

    Raises:
        ValueError, TypeError: wrong shapes, dtypes or options.
    """
    return _texture_metrics(
        x,
        mask=mask,
        ref=ref,
        window=window,
        r_bins=r_bins,
        ring_width=ring_width,
        bands=bands,
        ref_mask=ref_mask,
    )[0]


def _texture_metrics(
    x: Tensor,
    *,
    mask: Tensor | None = None,
    ref: Tensor | float | None = None,
    window: str = "hann",
    r_bins: int = 256,
    ring_width: float = 6.0,
    bands: bool = False,
    ref_mask: Tensor | None = None,
    views: bool = False,
) -> tuple[dict[str, Tensor], SpectrumViews | None]:
    """:func:`texture_metrics`, and with ``views`` the :func:`spectrum_views` of the same
    analysis: one FFT and one ACF period search serve both (``texwatch diagnose``'s figures)."""
    _check_images(x, "x")
    window = _check_window(window)
    r_bins = _check_positive_int(r_bins, "r_bins")
    ring_width = _check_positive_float(ring_width, "ring_width")
    with _full_precision(x.device):
        a = _analyse(x, mask, window, r_bins)
        dtype = a.power.dtype
        h, w = x.shape[-2:]
        wacf = _weight_acf(a.mask, window, h, w, a.acf)
        period, lags, acf_profile = _acf_period(a.acf, wacf, a.peak.fx, a.peak.fy)
        peak, period, periodic = _gate(a.peak, period, max(h, w))

        nan = torch.full_like(peak.radius, math.nan)
        # x's own period and direction against the reference's: a texture turned or flipped
        # keeps its scale
        ref_radius = scale = alias = nan
        ref_strips = None
        if ref is not None:
            if ref_mask is None:
                ref_mask = _default_ref_mask(ref, mask, h, w)
            reference = _reference(ref, ref_mask, x, window, r_bins, dtype, bands)
            ref_strips = reference.strips
            ref_radius = reference.radius
            scale = period / reference.period
            if reference.bins is not None:
                alias = _alias_share(a.power, peak.bins, a.grid, reference.bins)
        centre = peak.radius if ref is None else ref_radius
        energy, on_axis = _ring_energy(a.power, a.grid, centre[:, None], ring_width)
        e_f = energy[:, 0]
        e_f_safe = torch.where(e_f > 0, e_f, torch.full_like(e_f, math.nan))
        mult = a.grid.mult
        everything = (a.power * mult).sum(dim=(-2, -1)) - a.power[:, 0, 0]
        nyquist = (a.power * mult * a.grid.nyquist).sum(dim=(-2, -1))
        has_power = everything > 0
        checker = torch.where(
            has_power, nyquist / torch.where(has_power, everything, 1.0), torch.zeros_like(nyquist)
        )

        dx1, dy1 = _shift_mse(a.ch, a.mask)
        border = _BORDER
        inner = (slice(None), slice(None), slice(border, h - border), slice(border, w - border))
        inner_mask = None if a.mask is None else a.mask[inner]
        resized = _down_up(a.ch)
        resize_mse = _masked_mse((resized[inner] - a.ch[inner]).square(), inner_mask)

        out = {
            "fundamental_radius_bin": peak.radius,
            "periodic": periodic.to(dtype),
            "peak_prominence": 10 * torch.log10(peak.prominence),
            "acf_first_peak_radius_bin": period,
            "tile_scale": scale,
            "axis_ratio_at_f": on_axis[:, 0] / e_f_safe,
            "shift_mse_dx1": dx1,
            "shift_mse_dy1": dy1,
            "resize_mse_downUp": resize_mse,
            "alias_score": alias,
            "ref_radius_bin": ref_radius,
            "checkerboard_energy": checker,
        }
        if bands:
            if ref_strips is None:
                score, run = _band_reading(a.ch, a.mask, period, peak.fx, peak.fy)[:2]
            else:
                # x's strips read like the reference's: its period, direction and median strip;
                # a texture turned against its reference has no such reading
                aligned = _aligned(peak.fx, peak.fy, reference.fx, reference.fy)
                reading = _band_reading(
                    a.ch, a.mask, reference.period, reference.fx, reference.fy, ref_strips.base
                )
                score = torch.where(
                    aligned, (reading.score - ref_strips.score).clamp_min(0.0), torch.nan
                )
                run = torch.where(aligned, reading.run, torch.nan)
            out["band_score"], out["band_max_run"] = score, run
        finite = a.finite
        metrics = {
            key: torch.where(
                finite, value.to(dtype), torch.full_like(value.to(dtype), math.nan)
            ).float()
            for key, value in out.items()
        }
        return metrics, _views(a, peak, period, lags, acf_profile) if views else None


def _window_periods(
    ch: Tensor, mask: Tensor | None, size: int, stride: int, r_bins: int, name: str
) -> Tensor:
    """ACF period (px) of every ``size``² window (B, nH, nW), read along the window's own f*."""
    b, c, h, w = ch.shape
    if size > h or size > w:
        raise ValueError(f"`{name}` must fit in the {h}x{w} images, got {size}")
    tiles = ch.unfold(2, size, stride).unfold(3, size, stride)  # (B, C, nH, nW, s, s)
    n_h, n_w = tiles.shape[2], tiles.shape[3]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * n_h * n_w, c, size, size)
    if mask is None:
        tile_mask = None
        coverage = torch.ones(b, n_h, n_w, dtype=ch.dtype, device=ch.device)
    else:
        mt = mask.expand(b, -1, -1, -1).unfold(2, size, stride).unfold(3, size, stride)
        coverage = mt.mean(dim=(-2, -1))[:, 0]  # (B, nH, nW)
        tile_mask = mt.permute(0, 2, 3, 1, 4, 5).reshape(b * n_h * n_w, 1, size, size)
    power, acf = _spectrum_and_acf(_apodize(tiles, tile_mask, "hann"))
    peak = _peak(power, _grid(size, size, r_bins, ch.device, ch.dtype))
    wacf = _weight_acf(tile_mask, "hann", size, size, acf)
    periods = _acf_period(acf, wacf, peak.fx, peak.fy)[0].view(b, n_h, n_w)
    return torch.where(coverage >= _LOCAL_MIN_MASK, periods, torch.full_like(periods, math.nan))


@torch.no_grad()
def local_period_map(
    x: Tensor,
    *,
    mask: Tensor | None = None,
    window_size: int = 96,
    stride: int = 32,
    r_bins: int = 256,
) -> Tensor:
    """Local texture period (px) on sliding windows: ``(B, nH, nW)``.

    Each window gets its own weighted-mean removal, mask and Hann window (one batched FFT for
    all); its period is the ACF period along its own f*, so a harmonic peak never halves it.
    NaN where the window has no significant peak or its mask mean is < 0.3.
    ``nH = (H - window_size)//stride + 1``.
    """
    _check_images(x, "x")
    window_size = _check_positive_int(window_size, "window_size")
    stride = _check_positive_int(stride, "stride")
    r_bins = _check_positive_int(r_bins, "r_bins")
    if window_size < _MIN_SIZE:
        raise ValueError(f"`window_size` must be at least {_MIN_SIZE}, got {window_size}")
    with _full_precision(x.device):
        dtype = _work_dtype(x)
        ch, finite = _clean_channels(x, dtype)
        m = _prepare_mask(mask, x, dtype)
        periods = _window_periods(ch, m, window_size, stride, r_bins, "window_size")
        periods = torch.where(finite[:, None, None], periods, torch.full_like(periods, math.nan))
        return periods.float()


def _strip_stride(size: int) -> int:
    """Strips overlap by three quarters: a band is seen by several neighbouring strips."""
    return max(1, size // 4)


def _strips(t: Tensor, axis: int, size: int, stride: int) -> Tensor:
    """(B, C, H, W) -> (B·n, C, size, W) row strips (axis 2) or (B·n, C, H, size) column strips."""
    b, c = t.shape[:2]
    cut = t.unfold(axis, size, stride)  # (B, C, n, W, size) or (B, C, H, n, size)
    order = (0, 2, 1, 4, 3) if axis == 2 else (0, 3, 1, 2, 4)
    cut = cut.permute(*order)
    return cut.reshape(b * cut.shape[1], c, *cut.shape[-2:])


def _strip_periods(
    ch: Tensor, mask: Tensor | None, fx: Tensor, fy: Tensor, axis: int, size: int
) -> Tensor:
    """ACF period (px) of each strip (B, n), strips ``size`` px across ``axis``.

    ``axis`` 2 cuts row strips (size × W), 3 column strips (H × size), stride ``size // 4``.
    A strip's period is its linear ACF's (rectangular window: the longest usable lags) read
    along (fx, fy). NaN where the strip's mask mean is < 0.3.
    """
    b = ch.shape[0]
    stride = _strip_stride(size)
    strips = _strips(ch, axis, size, stride)
    n = strips.shape[0] // b
    sh, sw = strips.shape[-2:]
    if mask is None:
        strip_mask = None
        coverage = torch.ones(b, n, dtype=ch.dtype, device=ch.device)
        wacf = _plain_weight_acf("none", sh, sw, ch.device, ch.dtype)
    else:
        strip_mask = _strips(mask.expand(b, -1, -1, -1), axis, size, stride)
        coverage = strip_mask.mean(dim=(-3, -2, -1)).view(b, n)
        wacf = _spectrum_and_acf(strip_mask)[1]
    acf = _spectrum_and_acf(_apodize(strips, strip_mask, "none"))[1]
    # the first prominent peak, however low: a strip across a band's edge holds both periods,
    # and the shorter one is the strip's own
    period = _acf_period(acf, wacf, fx.repeat_interleave(n), fy.repeat_interleave(n), 0.0)[0]
    period = period.view(b, n)
    return torch.where(coverage >= _LOCAL_MIN_MASK, period, torch.full_like(period, math.nan))


class _BandReading(NamedTuple):
    score: Tensor  # (B,) share of strips in doubled-period bands
    run: Tensor  # (B,) extent of the longest band, px
    base: Tensor  # (B,) the strip period the strips were compared with


def _band_reading(
    ch: Tensor,
    mask: Tensor | None,
    period: Tensor,
    fx: Tensor,
    fy: Tensor,
    base: Tensor | None = None,
) -> _BandReading:
    """Strips ``4·period`` across, read along (fx, fy) and compared with ``base`` (B,).

    Without ``base`` the strips are compared with their own median period. Strip sizes are
    rounded to 8 px so a batch of one texture shares one size, and each image is measured at
    its own size whatever the rest of the batch holds. NaN where an input is NaN.
    """
    b, _, h, w = ch.shape
    nan = torch.full((b,), math.nan, dtype=ch.dtype, device=ch.device)
    out = _BandReading(nan.clone(), nan.clone(), nan.clone() if base is None else base.clone())
    known = torch.isfinite(period) & torch.isfinite(fx) & torch.isfinite(fy)
    if base is not None:
        known &= torch.isfinite(base)
    sizes = (_BAND_STRIP_PERIODS * torch.where(known, period, torch.ones_like(period)) / 8).round()
    sizes = (sizes * 8).clamp(_MIN_SIZE, min(h, w)).long()
    for size in torch.unique(sizes[known]).tolist():
        pick = torch.nonzero(known & (sizes == size)).flatten()
        sub_mask = mask if mask is None or mask.shape[0] == 1 else mask[pick]
        both = [
            _strip_periods(ch[pick], sub_mask, fx[pick], fy[pick], axis, int(size))
            for axis in (2, 3)
        ]
        median = torch.cat(both, dim=1).nanmedian(dim=1).values if base is None else base[pick]
        scores, runs = [], []
        for periods in both:
            scale = periods / median[:, None]
            doubled = (scale.log2() - 1).abs() <= _BAND_OCTAVES  # False where NaN
            # a band is two neighbouring strips at least: one strip across a gap is not
            after = F.pad(doubled[:, 1:], (0, 1))
            before = F.pad(doubled[:, :-1], (1, 0))
            doubled = doubled & (after | before)
            scores.append(doubled.sum(dim=1) / torch.isfinite(scale).sum(dim=1).clamp_min(1))
            run = _longest_run(doubled)
            span = (run - 1) * _strip_stride(size) + size
            runs.append(torch.where(run > 0, span, 0).to(ch.dtype))
        out.score[pick] = torch.maximum(*scores).to(ch.dtype)
        out.run[pick] = torch.maximum(*runs)
        out.base[pick] = median
    return out


def _longest_run(flags: Tensor) -> Tensor:
    """Longest run of True along the last axis."""
    count = torch.cumsum(flags.to(torch.int64), dim=-1)
    reset = torch.cummax(torch.where(flags, torch.zeros_like(count), count), dim=-1).values
    return (count - reset).amax(dim=-1)


@torch.no_grad()
def latent_health(x: Tensor, *, clip_range: float = 3.0) -> dict[str, Tensor]:
    """Value health of a batch ``(B, ...)``: :data:`HEALTH_KEYS`, each float32 ``(B,)``.

    ``nonfinite`` counts NaN/inf values *first* (a clamp passes NaN through); the other
    statistics use the finite values only (NaN when there is none). ``std`` is the population
    standard deviation. ``clip_fraction`` is the share of ``|x| > clip_range`` (for x̂0 before
    any clamp: a unit-variance latent gives 0.27 % at the DDIM range 3), ``clip_excess`` is
    ``mean(relu(|x| - clip_range)) / clip_range``.
    """
    if not isinstance(x, Tensor) or x.ndim < 1 or not x.is_floating_point():
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"`x` must be a floating-point (B, ...) tensor, got {got}")
    r = _check_positive_float(clip_range, "clip_range")
    with _full_precision(x.device):
        v = x.reshape(x.shape[0], -1).to(_work_dtype(x))
        # amin/amax propagate NaN and show ±inf: finite extremes mean finite values (the common
        # case, in a few passes); they are much faster than aminmax or isfinite on a CPU.
        low, high = v.amin(dim=1), v.amax(dim=1)
        if bool((torch.isfinite(low) & torch.isfinite(high)).all()):
            return _finite_health(v, r, low, high)
        finite = torch.isfinite(v)
        n = finite.sum(dim=1).to(v.dtype)
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        z = torch.where(finite, v, zero)
        mean = z.sum(dim=1) / n
        var = torch.where(finite, v - mean[:, None], zero).square().sum(dim=1) / n
        mag = z.abs()
        nan = torch.full_like(mean, math.nan)
        has = n > 0
        out = {
            "mean": mean,
            "std": var.sqrt(),
            "min": torch.where(has, torch.where(finite, v, math.inf).amin(dim=1), nan),
            "max": torch.where(has, torch.where(finite, v, -math.inf).amax(dim=1), nan),
            "nonfinite": (~finite).sum(dim=1).to(v.dtype),
            "clip_fraction": ((mag > r) & finite).sum(dim=1) / n,
            "clip_excess": torch.relu(mag - r).sum(dim=1) / n / r,
        }
        return {key: value.float() for key, value in out.items()}


def _finite_health(v: Tensor, r: float, low: Tensor, high: Tensor) -> dict[str, Tensor]:
    """:func:`latent_health` of ``(B, N)`` values that are all finite, their extremes given."""
    mean = v.mean(dim=1)  # two passes: a third of var_mean's time on a CPU
    var = torch.linalg.vector_norm(v - mean[:, None], dim=1).square() / v.shape[1]
    if bool(((high > r) | (low < -r)).any()):
        excess = torch.relu(v.abs() - r)
        fraction, beyond = (excess > 0).sum(dim=1) / v.shape[1], excess.sum(dim=1)
    else:  # nothing past the clip range (images in [0, 1]): both are exactly 0
        fraction = beyond = torch.zeros_like(mean)
    out = {
        "mean": mean,
        "std": var.sqrt(),
        "min": low,
        "max": high,
        "nonfinite": torch.zeros_like(mean),
        "clip_fraction": fraction,
        "clip_excess": beyond / v.shape[1] / r,
    }
    return {key: value.float() for key, value in out.items()}


def power_spectrum(x: Tensor, *, mask: Tensor | None = None, window: str = "hann") -> Tensor:
    """Centred power spectrum ``(B, H, W)`` (DC at ``[H//2, W//2]``) of the prepared signal.

    The same signal every metric sees: luma or the channel mean of power spectra, mask, weighted
    mean removal and window (see the module docstring).
    """
    _check_images(x, "x")
    window = _check_window(window)
    with torch.no_grad(), _full_precision(x.device):
        dtype = _work_dtype(x)
        ch, _ = _clean_channels(x, dtype)
        h, w = x.shape[-2:]
        power = _power(_apodize(ch, _prepare_mask(mask, x, dtype), window))
        g = _grid(h, w, 1, x.device, dtype)
        full = power[:, g.full_rows, g.full_cols]
        return torch.fft.fftshift(full, dim=(-2, -1)).float()


def ring_energy(
    x: Tensor,
    radii: Tensor | float,
    *,
    mask: Tensor | None = None,
    window: str = "hann",
    ring_width: float = 6.0,
) -> Tensor:
    """Gaussian ring sums ``E(r)`` (module docstring) at ``radii`` ``(R,)`` or ``(B, R)``.

    Returns:
        ``(B, R)`` float32; NaN rows for non-finite images.
    """
    _check_images(x, "x")
    window = _check_window(window)
    ring_width = _check_positive_float(ring_width, "ring_width")
    with torch.no_grad(), _full_precision(x.device):
        dtype = _work_dtype(x)
        b, _, h, w = x.shape
        r = torch.as_tensor(radii, dtype=dtype, device=x.device)
        if r.ndim == 0:
            r = r[None]
        if r.ndim == 1:
            r = r[None].expand(b, -1)
        if r.ndim != 2 or r.shape[0] != b:
            raise ValueError(f"`radii` must have shape (R,) or ({b}, R), got {tuple(r.shape)}")
        ch, finite = _clean_channels(x, dtype)
        power = _power(_apodize(ch, _prepare_mask(mask, x, dtype), window))
        energy, _ = _ring_energy(power, _grid(h, w, 1, x.device, dtype), r, ring_width)
        return torch.where(finite[:, None], energy, torch.full_like(energy, math.nan)).float()


@dataclass(frozen=True)
class SpectrumViews:
    """Tensors for plotting one batch's spectral analysis (all float32, on the input's device).

    Attributes:
        log_power: ``(B, H, W)`` centred ``ln(P + ε)`` (DC at ``[H//2, W//2]``).
        radii: ``(r_bins,)`` centres of the radial bins, radius units.
        radial_profile: ``(B, r_bins)`` ring *sums* of P (energy per ring; lobe included).
        radial_floor: ``(B, r_bins)`` ring sums of the noise floor the f* search compares to.
        acf_image: ``(B, H, W)`` centred linear ACF normalised to 1 at lag 0 (lag 0 at
            ``[H//2, W//2]``; window decay not divided out).
        acf_lags: ``(L,)`` lags in px along the peak direction.
        acf_profile: ``(B, L)`` unbiased ACF along the peak direction (NaN past the part the
            period search uses).
        fundamental_radius: ``(B,)`` f*, radius units.
        acf_period: ``(B,)`` ACF period, px.
        direction: ``(B, 2)`` unit vector ``(x, y)`` of the peak frequency.
    """

    log_power: Tensor
    radii: Tensor
    radial_profile: Tensor
    radial_floor: Tensor
    acf_image: Tensor
    acf_lags: Tensor
    acf_profile: Tensor
    fundamental_radius: Tensor
    acf_period: Tensor
    direction: Tensor


@torch.no_grad()
def spectrum_views(
    x: Tensor, *, mask: Tensor | None = None, window: str = "hann", r_bins: int = 256
) -> SpectrumViews:
    """The spectrum, radial profile, ACF and f* of a batch, for snapshots, reports and diagnose."""
    _check_images(x, "x")
    window = _check_window(window)
    r_bins = _check_positive_int(r_bins, "r_bins")
    with _full_precision(x.device):
        a = _analyse(x, mask, window, r_bins)
        h, w = x.shape[-2:]
        period, lags, acf_profile = _acf_period(
            a.acf, _weight_acf(a.mask, window, h, w, a.acf), a.peak.fx, a.peak.fy
        )
        peak, period, _ = _gate(a.peak, period, max(h, w))
        return _views(a, peak, period, lags, acf_profile)


def _views(
    a: _Analysis, peak: _Peak, period: Tensor, lags: Tensor, acf_profile: Tensor
) -> SpectrumViews:
    """The :class:`SpectrumViews` of an analysis, its gated f* and ACF period, and the ACF
    profile (lags, values) the period was read from."""
    g = a.grid
    b = a.power.shape[0]
    h, w = g.h, g.w
    device = a.power.device
    r_bins = g.r_bins
    floor, eps, _ = _noise_floor(a.power, g)
    full = a.power[:, g.full_rows, g.full_cols]
    log_power = torch.fft.fftshift(torch.log(full + eps[:, None, None]), dim=(-2, -1))
    profile = torch.zeros(b, r_bins, dtype=a.power.dtype, device=device)
    profile.index_add_(1, g.profile_bin, (a.power * g.mult).flatten(1))
    floor_profile = torch.zeros_like(profile)
    floor_profile.index_add_(1, g.profile_bin, (floor * g.mult).flatten(1))
    width = g.r_max / r_bins
    radii = (torch.arange(r_bins, dtype=a.power.dtype, device=device) + 0.5) * width
    acf = a.acf
    # Centred lags [-H/2, H/2) x [-W/2, W/2) from the τy >= 0 half: ACF(-τ) = ACF(τ).
    lag_y = torch.arange(h, device=device) - h // 2
    lag_x = torch.arange(w, device=device) - w // 2
    cols = torch.where(lag_y[:, None] >= 0, lag_x[None, :], -lag_x[None, :]) % (2 * w)
    centred = acf[:, lag_y.abs()[:, None], cols]
    centred = centred / acf[:, :1, :1].clamp_min(torch.finfo(acf.dtype).tiny)
    fx, fy = peak.fx, peak.fy
    norm = torch.sqrt(fx.square() + fy.square())
    direction = torch.stack([fx / norm, fy / norm], dim=1)
    nan = math.nan
    keep = a.finite

    def guard(t: Tensor) -> Tensor:
        shape = (b,) + (1,) * (t.ndim - 1)
        return torch.where(keep.view(shape), t, torch.full_like(t, nan)).float()

    return SpectrumViews(
        log_power=guard(log_power),
        radii=radii.float(),
        radial_profile=guard(profile),
        radial_floor=guard(floor_profile),
        acf_image=guard(centred),
        acf_lags=lags.float(),
        acf_profile=guard(acf_profile),
        fundamental_radius=guard(peak.radius),
        acf_period=guard(period),
        direction=guard(direction),
    )


# ----------------------------------------------------------------------------- pixel helpers


def _pixel_channels(x: Tensor) -> Tensor:
    """(B, H, W) single plane: luma for RGB, the channel mean otherwise."""
    return _channels(x, _work_dtype(x)).mean(dim=1)


@torch.no_grad()
def diff_heatmap(a: Tensor, b: Tensor, *, scale: float = 4.0) -> Tensor:
    """Difference heatmap ``(B, H, W)`` in [0, 1]: ``clamp(scale · mean_c |a − b|, 0, 1)``.

    ``scale`` is the reference diagnosis script's ``--heatmap-scale`` gain: with images in [0, 1]
    and the default 4, a difference of 0.25 saturates. NaN pixels stay NaN.
    """
    _check_images(a, "a")
    _check_images(b, "b")
    if a.shape != b.shape:
        raise ValueError(
            f"`a` and `b` must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    gain = _check_positive_float(scale, "scale")
    dtype = _work_dtype(a)
    diff = (a.to(dtype) - b.to(device=a.device, dtype=dtype)).abs().mean(dim=1)
    return (diff * gain).clamp(0.0, 1.0).float()


@torch.no_grad()
def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude ``(B, H, W)`` of luma / channel mean, per px (kernel / 8).

    A unit step gives 0.5 on each of the two pixels that straddle it; borders are replicated.
    """
    _check_images(x, "x")
    p = F.pad(_pixel_channels(x)[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    # Both kernels are separable: shifted slices cost a fraction of two 3x3 conv2d.
    smooth_y = p[:, :-2, :] + 2.0 * p[:, 1:-1, :] + p[:, 2:, :]  # (B, H, W+2)
    smooth_x = p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]  # (B, H+2, W)
    gx = smooth_y[:, :, 2:] - smooth_y[:, :, :-2]
    gy = smooth_x[:, 2:, :] - smooth_x[:, :-2, :]
    return torch.sqrt(gx.square() + gy.square()).mul_(0.125).float()


@dataclass(frozen=True)
class AnomalyRegions:
    """Sobel anomaly regions of one image.

    Attributes:
        count: Connected regions (8-connectivity) of at least ``min_area`` px.
        area_share: Share of the image's pixels inside those regions.
        boxes: One ``(y0, x0, y1, x1)`` half-open box per region, largest region first (ties in
            the raster order of their first pixel).
    """

    count: int
    area_share: float
    boxes: tuple[tuple[int, int, int, int], ...]


@torch.no_grad()
def sobel_anomalies(
    x: Tensor, *, threshold: float = 6.0, min_area: int = 4
) -> list[AnomalyRegions]:
    """Regions whose Sobel magnitude is an outlier for the image: one result per image.

    A pixel is anomalous when its magnitude exceeds the image's median by more than
    ``threshold`` robust standard deviations (1.4826 × median absolute deviation); anomalous
    pixels are grouped into 8-connected regions (:func:`scipy.ndimage.label`: pixels touching
    only at a corner are one region) and regions under ``min_area`` px dropped.
    Apply it to a prediction, or to ``pred - target`` to localise where they differ.
    """
    thr = _check_positive_float(threshold, "threshold")
    min_area = _check_positive_int(min_area, "min_area")
    mag = sobel_magnitude(x).to(torch.float64)
    b, h, w = mag.shape
    flat = mag.flatten(1)
    median = flat.nanmedian(dim=1).values
    mad = (flat - median[:, None]).abs().nanmedian(dim=1).values * 1.4826
    z = (mag - median[:, None, None]) / mad.clamp_min(1e-12)[:, None, None]
    from texwatch._components import regions

    hot = (z > thr).cpu().numpy()
    results: list[AnomalyRegions] = []
    for i in range(b):
        found = regions(hot[i], min_area=min_area)
        results.append(
            AnomalyRegions(
                count=len(found.boxes),
                area_share=float(found.areas.sum()) / (h * w),
                boxes=found.boxes,
            )
        )
    return results
