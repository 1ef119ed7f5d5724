r"""Differentiable texture-scale losses (Texture_Loss's ``texture_losses`` API) on :mod:`.spectral`.

All four take ``B×C×H×W`` images (RGB → Rec.709 luma, other C → mean of per-channel power
spectra) and a ``B×1×H×W`` (or ``1×1×H×W``) mask in [0, 1] that apodizes the signal together
with a 2-D Hann window, exactly as the spectral metrics do (weighted mean removal, mask, window,
blank rule; see :mod:`texwatch.spectral`). They run in float32 whatever the input dtype and under
autocast (float64 for float64 inputs, e.g. for ``torch.autograd.gradcheck``) and return a
scalar: the mean of the per-image losses over the images that count.

**Which images count.** The losses with a target (``SpectralPeriodLoss``, ``ACFPeriodLoss``,
``LogPolarAlignLoss``) count an image when its *target* has power outside the DC lobe. The
prediction may be anything, a flat (constant) one included: it is the worst prediction, not a
missing one. A target without power (constant image, all-zero mask) has nothing to match: that
image contributes nothing, and when no image counts the loss is exactly 0 with zero gradients —
never NaN. ``ScaleConsistencyLoss`` compares two predictions and counts a pair only when both
have power (a flat run has no scale to be consistent with).

**Notation.** ``P`` is the power spectrum of the apodized signal ``y`` on the half plane, bins
counted with their full-plane multiplicity, DC lobe left out. A bin ``k`` has the radius
``r(k) = N·√((kx/W)² + (ky/H)²)`` (radius units, ``N = max(H, W)``: a period of T px sits at
``N/T``) and the angle ``θ(k) = atan2(ky/H, kx/W) mod π``; ``d(θ, θ')`` is the distance of two
angles modulo π. *Ring profiles* are ring sums over ``r_bins`` radial bins ``c_i`` from centre
to corner (:mod:`texwatch.spectral`'s smooth radial sums: each FFT bin split between the two
nearest ring centres, then smoothed by a Gaussian of one radius unit). *Angle histograms* have
90 bins over [0, π) (each FFT bin split between the two nearest, circularly smoothed by a
Gaussian of one bin).

**Target anchor** ``(r_a, θ_a)``, chosen on the target alone and without gradient: the
prediction's own peak is never used, so a prediction without any peak (noise, flat) is still
compared at the target's frequency. ``r_a`` is the target's *soft radius*: over the ring profile
of the excess ``e_i`` of the power over :mod:`texwatch.spectral`'s noise floor, on the bins
``min_bin ≤ i ≤ max_bin``, ``z_i = (e_i − max e) / (max e − min e)`` and
``r_soft = Σ softmax(z/τ)_i · c_i`` (a harmonic with a ninth of the fundamental's excess gets
``e^{−0.89/τ}`` ≈ 4e-7 at τ = 0.06). ``θ_a`` is the peak (parabola-refined argmax) of the angle
histogram of ``P · exp(−(ln r − ln r_a)² / 2σ²)``, the target's power near that radius. The
anchor frequency is ``f_a = (r_a/N)(cos θ_a, sin θ_a)`` cycles/px. ``ACFPeriodLoss`` and
``LogPolarAlignLoss`` use ``r_bins = 256``, ``τ = 0.06``, ``min_bin = 2``, ``σ = 0.15``.

**Earth mover's distances.** ``W1_r(p, t)`` reads two ring profiles — here with the rings of
the DC lobe included — as distributions over ``u_i = ln max(c_i, 2.5)``:
``Σ_i |F_p(i) − F_t(i)| (u_{i+1} − u_i)``, ``F`` the cumulative sums of a profile divided by its
total. It is in units of ln radius. Rescaling a texture by ``s`` moves its profile by ``ln s``
along ``u``; what moves into the DC lobe is counted at the lobe's edge (radius 2.5) rather than
dropped: for a profile that moves as a whole ``W1_r`` grows monotonically with ``|ln s|`` (it
is ``|ln s|`` while nothing crosses the edge), and a harmonic cannot give it a local minimum at
2× or ½× the period. ``W1_θ``, the
same for angle histograms on the circle, ``(π/90) Σ_j |D_j − median D|`` with ``D = F_p − F_t``,
is in radians. A prediction without power has an all-zero profile whose cumulative sums stay 0
(the totals are ``Σ + 1e-9 · Σ_target``): it is as far as a distribution can be.

**Flat predictions: the seed term.** A function of the power spectrum or of the ACF is even in
the signal (``y`` and ``−y`` give the same value), so its gradient at ``y = 0`` is zero
whatever its value: no such term can tell a flat prediction which way to go. The seed breaks the
tie with the target's anchor: ``seed = ρ · (1 − a)``,
``a = max_j Re(z · e^{2πij/8}) / √(HW · (‖y_p‖² + ‖y_t‖²))``, where
``z = Σ_x ȳ_p(x) e^{−2πi f_a·x}`` is the Fourier coefficient of the prediction (channel mean
``ȳ_p``, not blanked) at the anchor frequency — the max over 8 phases makes ``a`` a
translation-invariant amplitude to within 8 % — and the gate is
``ρ = 1e-4·‖y_t‖² / (‖y_p‖² + 1e-4·‖y_t‖²)``. For a flat prediction ``ρ = 1``, ``seed = 1`` and
its gradient is the cosine grating of the target's period and direction (times the window); for
a prediction with anything like the target's contrast ``ρ ≈ 1e-4`` and the seed is negligible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from texwatch.spectral import (
    _ACF_PROMINENCE,
    _acf_ray,
    _blank_rounding,
    _channels,
    _check_images,
    _first_prominent_peak,
    _full_precision,
    _Grid,
    _grid,
    _noise_floor,
    _parabola_vertex,
    _power,
    _prepare_mask,
    _smooth_radial_sums,
    _spectrum_and_acf,
    _weight_acf,
    _window_2d,
    _work_dtype,
)

__all__ = ["ACFPeriodLoss", "LogPolarAlignLoss", "ScaleConsistencyLoss", "SpectralPeriodLoss"]

_EPS = 1e-12
_MASS_EPS = 1e-9  # a profile's total is its sum + this × the target's sum
_SEED_GATE = 1e-4
_SEED_PHASES = 8
_ANGLE_BINS = 90
_LOBE_EDGE = 2.5  # W1_r counts the power of the DC lobe's rings at this radius
_ANGLE_TAPS = 3  # half-width of the angle histogram's smoothing kernel (σ = 1 bin)
_ANCHOR_R_BINS = 256  # anchor settings of the losses that have no spectral arguments
_ANCHOR_TAU = 0.06
_ANCHOR_MIN_BIN = 2
_ANCHOR_SIGMA = 0.15
_ACF_REACH = 1.5  # ACFPeriodLoss compares lags up to this many target periods
_MIN_OVERLAP = 0.1  # as texwatch.spectral's ACF: lags whose weight overlap is >= 10 %


# ----------------------------------------------------------------------------- checks


def _check_pair(a: Tensor, b: Tensor, mask: Tensor, names: tuple[str, str]) -> None:
    _check_images(a, names[0])
    _check_images(b, names[1])
    if a.shape[0] != b.shape[0] or a.shape[-2:] != b.shape[-2:]:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same B, H, W, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not isinstance(mask, Tensor):
        raise TypeError(f"`mask` must be a torch.Tensor, got {type(mask).__name__}")


def _check_fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a positive number, got {value!r}")
    return float(value)


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"`{name}` must be a non-negative number, got {value!r}")
    return float(value)


def _check_bins(r_bins: object, min_bin: object, max_bin: object) -> tuple[int, int, int]:
    if isinstance(r_bins, bool) or not isinstance(r_bins, int) or r_bins < 2:
        raise ValueError(f"`r_bins` must be an int >= 2, got {r_bins!r}")
    if isinstance(min_bin, bool) or not isinstance(min_bin, int) or not 0 <= min_bin < r_bins:
        raise ValueError(f"`min_bin` must be an int in [0, r_bins), got {min_bin!r}")
    top = r_bins - 1 if max_bin is None else max_bin
    if isinstance(top, bool) or not isinstance(top, int) or not min_bin <= top < r_bins:
        raise ValueError(f"`max_bin` must be None or an int in [min_bin, r_bins), got {max_bin!r}")
    return r_bins, min_bin, top


# ----------------------------------------------------------------------------- signals


def _safe(x: Tensor) -> Tensor:
    """``x`` where it is positive, 1 elsewhere: a denominator that can never make 0/0 (not even
    in a branch a ``torch.where`` discards, whose gradient would still be NaN)."""
    return torch.where(x > 0, x, torch.ones_like(x))


def _mean_over(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-image losses over the valid images; 0 (with graph) when there is none."""
    kept = torch.where(valid, values, torch.zeros_like(values))
    return kept.sum() / valid.sum().clamp_min(1)


@dataclass
class _Signal:
    raw: Tensor  # (B, C', H, W) weighted-mean-free, masked, windowed signal, not blanked
    y: Tensor  # the same with blank images zeroed: what the spectra are taken of
    energy: Tensor  # (B,) Σ raw²


def _signal(x: Tensor, mask: Tensor, dtype: torch.dtype) -> _Signal:
    """The Hann-apodized signal of :mod:`texwatch.spectral`, with and without its blank rule.

    The blank rule zeroes a flat image through a ``torch.where``, which also cuts its gradient;
    the raw signal keeps that path for the seed term.
    """
    m = _prepare_mask(mask, x, dtype)
    assert m is not None
    ch = _channels(x, dtype)
    h, w = x.shape[-2:]
    weight = m * _window_2d("hann", h, w, x.device, dtype)[None, None]
    mean = (ch * weight).sum(dim=(-2, -1), keepdim=True) / _safe(
        weight.sum(dim=(-2, -1), keepdim=True)
    )
    raw = (ch - mean) * weight
    return _Signal(raw, _blank_rounding(raw, ch), raw.square().sum(dim=(1, 2, 3)))


# ----------------------------------------------------------------------------- geometry


@lru_cache(maxsize=32)
def _polar(h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """ln radius (radius units; DC gets ln 1e-12) and angle in [0, π) of each half-plane bin."""
    rows = torch.arange(h)
    ky = torch.where(rows <= (h - 1) // 2, rows, rows - h).to(torch.float64)
    kx = torch.arange(w // 2 + 1, dtype=torch.float64)
    fy, fx = (ky[:, None] / h).expand(h, kx.numel()), (kx[None, :] / w).expand(h, kx.numel())
    log_r = torch.log((max(h, w) * torch.sqrt(fx.square() + fy.square())).clamp_min(_EPS))
    angle = torch.remainder(torch.atan2(fy, fx), math.pi)
    return log_r.to(device=device, dtype=dtype), angle.to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _centres(h: int, w: int, r_bins: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Ring centres ``c_i`` (r_bins,) in radius units."""
    step = max(h, w) / math.sqrt(2.0) / r_bins
    return ((torch.arange(r_bins, dtype=torch.float64) + 0.5) * step).to(device=device, dtype=dtype)


@lru_cache(maxsize=32)
def _log_steps(h: int, w: int, r_bins: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``u_{i+1} − u_i`` (r_bins,) of ``u_i = ln max(c_i, 2.5)``, 0 after the last ring."""
    c = _centres(h, w, r_bins, torch.device("cpu"), torch.float64)
    u = torch.log(c.clamp_min(_LOBE_EDGE))
    return torch.cat([u[1:] - u[:-1], torch.zeros(1, dtype=torch.float64)]).to(device, dtype)


@lru_cache(maxsize=32)
def _rings_within(
    h: int,
    w: int,
    r_bins: int,
    lo: int,
    hi: int,
    lobe: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """(r_bins,) bool: the rings within [lo, hi] that hold FFT bins (DC-lobe bins count with
    ``lobe``)."""
    g = _grid(h, w, r_bins, device, dtype)
    weight = g.mult if lobe else g.weight
    has = torch.zeros(r_bins, dtype=weight.dtype, device=device)
    has = has.index_add(0, g.profile_bin, weight.flatten()) > 0
    idx = torch.arange(r_bins, device=device)
    return has & (idx >= lo) & (idx <= hi)


def _ring_profile(values: Tensor, g: _Grid, keep: Tensor) -> Tensor:
    """Ring profiles (N, r_bins) of half-plane values (N, H, Wh) for ``W1_r``: the smooth radial
    sums of :mod:`texwatch.spectral` with the DC lobe's bins, on the rings ``keep``."""
    return _smooth_radial_sums(values, g, lobe=True) * keep.to(values.dtype)


@lru_cache(maxsize=8)
def _angle_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    taps = torch.exp(-(torch.arange(-_ANGLE_TAPS, _ANGLE_TAPS + 1, dtype=torch.float64) ** 2) / 2)
    return (taps / taps.sum()).view(1, 1, -1).to(device=device, dtype=dtype)


def _angle_histogram(values: Tensor, angle: Tensor, weight: Tensor) -> Tensor:
    """Angle histogram (N, 90) of half-plane values (N, H, Wh) weighted by ``weight`` (H, Wh)."""
    pos = angle.flatten() * (_ANGLE_BINS / math.pi) - 0.5
    lo = pos.floor()
    frac = pos - lo
    lo_i = torch.remainder(lo.long(), _ANGLE_BINS)
    hi_i = torch.remainder(lo_i + 1, _ANGLE_BINS)
    flat = (values * weight).flatten(1)
    hist = torch.zeros(values.shape[0], _ANGLE_BINS, dtype=values.dtype, device=values.device)
    hist = hist.index_add(1, lo_i, flat * (1 - frac)).index_add(1, hi_i, flat * frac)
    k = _ANGLE_TAPS
    wrapped = torch.cat([hist[:, -k:], hist, hist[:, :k]], dim=1)[:, None]
    return F.conv1d(wrapped, _angle_kernel(values.device, values.dtype))[:, 0]


def _angle_distance(angle: Tensor, centre: Tensor) -> Tensor:
    """``d(θ, θ_a)`` in [0, π/2]: angles (H, Wh) and centres (N,) -> (N, H, Wh)."""
    d = torch.remainder(angle[None] - centre[:, None, None], math.pi)
    return torch.minimum(d, math.pi - d)


# ----------------------------------------------------------------------------- distances


def _cdf(profile: Tensor, reference: Tensor) -> Tensor:
    """Cumulative sums of profiles (N, L) over ``sum + 1e-9 × the reference's sum``."""
    total = profile.sum(dim=1, keepdim=True) + _MASS_EPS * reference.sum(dim=1, keepdim=True)
    return torch.cumsum(profile / _safe(total), dim=1)


def _w1_line(cdf_p: Tensor, cdf_t: Tensor, steps: Tensor) -> Tensor:
    """``W1_r`` (N,) from cumulative sums (N, L) on a grid with steps (L,)."""
    return ((cdf_p - cdf_t).abs() * steps).sum(dim=1)


def _w1_circle(cdf_p: Tensor, cdf_t: Tensor) -> Tensor:
    """``W1_θ`` (N,) in radians from cumulative sums (N, 90) of angle histograms."""
    d = cdf_p - cdf_t
    spread = (d - d.median(dim=1, keepdim=True).values).abs().sum(dim=1)
    return spread * (math.pi / _ANGLE_BINS)


def _shift_cdf(cdf: Tensor, u: Tensor, shift: Tensor) -> Tensor:
    """Cumulative sums (N, L) on the grid ``u`` (L,) moved by ``shift`` (N,): ``F(u − shift)``,
    linear between grid points, 0 before the grid and the last value after it."""
    n, length = cdf.shape
    query = (u[None] - shift[:, None]).contiguous()
    hi = torch.searchsorted(u.expand(n, -1).contiguous(), query).clamp(1, length - 1)
    lo = hi - 1
    frac = ((query - u[lo]) / _safe(u[hi] - u[lo])).clamp(0, 1)
    moved = cdf.gather(1, lo) * (1 - frac) + cdf.gather(1, hi) * frac
    moved = torch.where(query < u[0], torch.zeros_like(moved), moved)
    return torch.where(query > u[-1], cdf[:, -1:].expand_as(moved), moved)


def _sqrt(x: Tensor) -> Tensor:
    """√x with a finite gradient at 0 (the Hellinger distance of an empty share)."""
    return torch.sqrt(x.clamp_min(0) + 1e-6)


# ----------------------------------------------------------------------------- anchor, seed


@dataclass
class _Anchor:
    radius: Tensor  # (N,) r_a, radius units
    angle: Tensor  # (N,) θ_a in [0, π)

    def frequency(self, h: int, w: int) -> Tensor:
        """(N, 2) anchor frequency ``(fx, fy)`` in cycles/px."""
        f = self.radius / max(h, w)
        return torch.stack([f * torch.cos(self.angle), f * torch.sin(self.angle)], dim=1)


def _soft_radius(
    power: Tensor, h: int, w: int, r_bins: int, tau: float, lo: int, hi: int
) -> Tensor:
    """Soft radius (N,) of half-plane spectra (N, H, Wh) (module docstring)."""
    g = _grid(h, w, r_bins, power.device, power.dtype)
    floor, _, _ = _noise_floor(power, g)
    excess = _smooth_radial_sums(power, g) - _smooth_radial_sums(floor, g)
    selected = _rings_within(h, w, r_bins, lo, hi, False, power.device, power.dtype)[None]
    ninf = torch.full_like(excess, -math.inf)
    top = torch.where(selected, excess, ninf).amax(dim=1, keepdim=True)
    bottom = torch.where(selected, excess, -ninf).amin(dim=1, keepdim=True)
    z = (excess - top) / (top - bottom + _EPS)
    weights = torch.softmax(torch.where(selected, z / tau, ninf), dim=1)
    return (weights * _centres(h, w, r_bins, power.device, power.dtype)).sum(dim=1)


@torch.no_grad()
def _anchor(
    power: Tensor, h: int, w: int, r_bins: int, tau: float, lo: int, hi: int, sigma: float
) -> _Anchor:
    """Target anchor ``(r_a, θ_a)`` of half-plane spectra (N, H, Wh) (module docstring)."""
    power = power.detach()
    radius = _soft_radius(power, h, w, r_bins, tau, lo, hi)
    log_r, angle = _polar(h, w, power.device, power.dtype)
    near = torch.exp(
        -(log_r[None] - torch.log(_safe(radius))[:, None, None]).square() / sigma**2 / 2
    )
    g = _grid(h, w, r_bins, power.device, power.dtype)
    hist = _angle_histogram(power * near, angle, g.weight)
    j = hist.argmax(dim=1)
    rows = torch.arange(hist.shape[0], device=hist.device)
    logh = torch.log(hist + _EPS * hist.amax(dim=1, keepdim=True) + torch.finfo(hist.dtype).tiny)
    left = logh[rows, torch.remainder(j - 1, _ANGLE_BINS)]
    right = logh[rows, torch.remainder(j + 1, _ANGLE_BINS)]
    offset = _parabola_vertex(left, logh[rows, j], right, 0.5)
    angle_a = torch.remainder((j.to(power.dtype) + 0.5 + offset) * (math.pi / _ANGLE_BINS), math.pi)
    return _Anchor(radius, angle_a)


def _default_anchor(power: Tensor, h: int, w: int) -> _Anchor:
    return _anchor(
        power,
        h,
        w,
        _ANCHOR_R_BINS,
        _ANCHOR_TAU,
        _ANCHOR_MIN_BIN,
        _ANCHOR_R_BINS - 1,
        _ANCHOR_SIGMA,
    )


def _seed(pred: _Signal, target: _Signal, freq: Tensor) -> Tensor:
    """Seed term (N,) (module docstring); ``freq`` (N, 2) is the anchor frequency, cycles/px."""
    raw = pred.raw
    h, w = raw.shape[-2:]
    yy = torch.arange(h, dtype=raw.dtype, device=raw.device)[None, :, None]
    xx = torch.arange(w, dtype=raw.dtype, device=raw.device)[None, None, :]
    phase = 2 * math.pi * (freq[:, 0, None, None] * xx + freq[:, 1, None, None] * yy)
    signal = raw.mean(dim=1)
    re = (signal * torch.cos(phase)).sum(dim=(-2, -1))
    im = -(signal * torch.sin(phase)).sum(dim=(-2, -1))
    turn = torch.arange(_SEED_PHASES, dtype=raw.dtype, device=raw.device) * (
        2 * math.pi / _SEED_PHASES
    )
    # max, not amax: for a flat image every phase ties, amax would share the gradient among
    # them and the 8 phasors would cancel; max gives it to the first.
    aligned = (re[:, None] * torch.cos(turn) - im[:, None] * torch.sin(turn)).max(dim=1).values
    amplitude = aligned / torch.sqrt(_safe((pred.energy + target.energy) * (h * w)))
    gate = _SEED_GATE * target.energy / _safe(pred.energy + _SEED_GATE * target.energy)
    return gate * (1 - amplitude)


# ----------------------------------------------------------------------------- losses


class _SoftRadius(nn.Module):
    """Ring-profile settings shared by the spectral losses, and the soft radius."""

    def __init__(self, r_bins: int, tau: float, min_bin: int, max_bin: int | None) -> None:
        super().__init__()
        self.r_bins, self.min_bin, self.max_bin = _check_bins(r_bins, min_bin, max_bin)
        self.tau = _check_positive(tau, "tau")

    def soft_radius(self, x: Tensor, mask: Tensor) -> Tensor:
        """Differentiable soft radius ``(B,)`` in radius units (``N/T`` for a period of T px,
        N = max(H, W)): the anchor radius ``r_a`` of the module docstring."""
        _check_images(x, "x")
        with _full_precision(x.device):
            power = _power(_signal(x, mask, _work_dtype(x)).y)
            h, w = x.shape[-2:]
            return _soft_radius(power, h, w, self.r_bins, self.tau, self.min_bin, self.max_bin)


class SpectralPeriodLoss(_SoftRadius):
    """Match where the prediction's power sits along the target's direction and over angle,
    anchored on the target (optionally also its share at the target's peak).

    Per image, with the target anchor ``(r_a, θ_a)``, ``W1_r``, ``W1_θ`` and the seed of the
    module docstring and ``σ = band_sigma``:

    - ``w_peak · W1_r²`` between the ring profiles of ``P · exp(−d(θ, θ_a)² / 2σ²)`` (the power
      in the target's direction) of pred and target. Rescaling the target by ``s`` gives at
      most ``(ln s)²`` — the old peak term's value — growing with ``|ln s|``: no local minimum
      at 2× or ½×. Noise (power at the highest radii) and a flat image are far.
    - ``w_band ·`` the squared Hellinger distance between ``(q_p, 1 − q_p)`` and
      ``(q_t, 1 − q_t)``, ``q`` the share of an image's power (selected rings) in the log-polar
      blob ``exp(−(ln r − ln r_a)² / 2σ² − d(θ, θ_a)² / 2σ²)`` at the target's peak: energy
      missing at the target's frequency (noise has a tiny share there, a flat image none).
      Alone it *does* dip at 2× the period (the pred's second harmonic lands in the blob), so
      the constructor requires ``w_peak > 0`` with it; off by default.
    - ``w_angle · W1_θ²`` between the angle histograms of pred and target (selected rings).
    - ``w_seed · seed``: the gradient of a flat prediction.

    All terms but the seed (≈ 1e-4) are 0 when pred and target are the same image. With
    ``center_override`` the target is read as if rescaled so that its anchor radius sits at
    the given radius: its profile is moved by ``ln(r_override / r_a)`` along ``ln r``, the pred's
    blob (and the seed) sit at ``r_override`` and ``q_t`` stays the target's own share.

    Args:
        r_bins: Radial bins from centre to corner.
        tau: Soft-argmax temperature of the target's soft radius (min–max normalised excess).
        band_sigma: Width of the blob and of the direction weight: σ of ln radius and of the
            angle in radians.
        w_peak: Weight of the radial term.
        w_band: Weight of the blob-share term (off by default: the radial term already
            penalises energy away from the target's frequency; > 0 needs ``w_peak > 0``).
        min_bin: First radial bin used (the soft radius, the blob share and the angular term
            skip the DC lobe; the radial term counts its rings at radius 2.5).
        max_bin: Last radial bin used; None = ``r_bins - 1``.
        w_angle: Weight of the angular term.
        w_seed: Weight of the seed term.

    Example:
        >>> loss = SpectralPeriodLoss(w_peak=0.1, w_band=0.05)
        >>> value = loss(pred, target, mask)  # doctest: +SKIP
    """

    def __init__(
        self,
        r_bins: int = 256,
        tau: float = 0.06,
        band_sigma: float = 0.15,
        w_peak: float = 1.0,
        w_band: float = 0.0,
        min_bin: int = 2,
        max_bin: int | None = None,
        w_angle: float = 1.0,
        w_seed: float = 1.0,
    ) -> None:
        super().__init__(r_bins, tau, min_bin, max_bin)
        self.band_sigma = _check_positive(band_sigma, "band_sigma")
        self.w_peak = _check_weight(w_peak, "w_peak")
        self.w_band = _check_weight(w_band, "w_band")
        if self.w_band > 0 and self.w_peak == 0:
            raise ValueError(
                "`w_peak` must be > 0 when `w_band` > 0 (the blob-share term alone has a local "
                f"minimum at twice the target's period), got w_peak={w_peak!r}, w_band={w_band!r}"
            )
        self.w_angle = _check_weight(w_angle, "w_angle")
        self.w_seed = _check_weight(w_seed, "w_seed")

    def forward(
        self,
        pred: Tensor,
        target: Tensor,
        mask: Tensor,
        center_override: Tensor | None = None,
    ) -> Tensor:
        """Scalar loss.

        Args:
            pred: ``B×{1|3}×H×W`` prediction.
            target: ``B×{1|3}×H×W`` target.
            mask: ``B×1×H×W`` material region in [0, 1].
            center_override: Optional ``(B,)`` anchor radius as a normalised radial frequency in
                [0, 1] — a fraction of the corner radius, i.e. ``bin / r_bins`` — replacing the
                target's soft radius (e.g. from depth or a prior).
        """
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            terms, valid = self._terms(pred, target, mask, center_override)
            per_image = (
                self.w_peak * terms["peak"]
                + self.w_band * terms["band"]
                + self.w_angle * terms["angle"]
                + self.w_seed * terms["seed"]
            )
            return _mean_over(per_image, valid)

    def terms(
        self, pred: Tensor, target: Tensor, mask: Tensor, center_override: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The unweighted per-image terms ``"peak"``, ``"band"``, ``"angle"``, ``"seed"``, each
        ``(B,)``; images whose target has no power are included (the loss leaves them out)."""
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            return self._terms(pred, target, mask, center_override)[0]

    def _terms(
        self, pred: Tensor, target: Tensor, mask: Tensor, center_override: Tensor | None
    ) -> tuple[dict[str, Tensor], Tensor]:
        dtype = _work_dtype(pred)
        h, w = pred.shape[-2:]
        dev = pred.device
        sig_p, sig_t = _signal(pred, mask, dtype), _signal(target, mask, dtype)
        power_p, power_t = _power(sig_p.y), _power(sig_t.y)
        g = _grid(h, w, self.r_bins, dev, dtype)
        log_r, angle = _polar(h, w, dev, dtype)
        anchor = _anchor(
            power_t, h, w, self.r_bins, self.tau, self.min_bin, self.max_bin, self.band_sigma
        )
        r_a = anchor.radius
        if center_override is not None:
            r_a = self._override(center_override, pred, dtype)
        s2 = 2 * self.band_sigma**2
        across = _angle_distance(angle, anchor.angle).square() / s2  # (B, H, Wh)
        keep = _rings_within(h, w, self.r_bins, self.min_bin, self.max_bin, False, dev, dtype)

        # radial: ring profiles of the power in the target's direction
        wedge = torch.exp(-across)
        rings = _rings_within(h, w, self.r_bins, self.min_bin, self.max_bin, True, dev, dtype)
        prof_t = _ring_profile(power_t * wedge, g, rings)
        prof_p = _ring_profile(power_p * wedge, g, rings)
        cdf_t, cdf_p = _cdf(prof_t, prof_t), _cdf(prof_p, prof_t)
        if center_override is not None:
            u = torch.log(_centres(h, w, self.r_bins, dev, dtype))
            shift = torch.log(_safe(r_a)) - torch.log(_safe(anchor.radius))
            cdf_t = _shift_cdf(cdf_t, u, shift)
        peak = _w1_line(cdf_p, cdf_t, _log_steps(h, w, self.r_bins, dev, dtype)).square()

        # blob share at the target's peak
        in_rings = g.weight * keep.to(dtype)[g.profile_bin].view_as(g.weight)
        total_t = (power_t * in_rings).sum(dim=(-2, -1))

        def share(power: Tensor, radius: Tensor) -> Tensor:
            radial = (log_r[None] - torch.log(_safe(radius))[:, None, None]).square() / s2
            inside = (power * torch.exp(-radial - across) * in_rings).sum(dim=(-2, -1))
            total = (power * in_rings).sum(dim=(-2, -1))
            return inside / _safe(total + _MASS_EPS * total_t)

        q_t, q_p = share(power_t, anchor.radius), share(power_p, r_a)
        band = (_sqrt(q_p) - _sqrt(q_t)).square() + (_sqrt(1 - q_p) - _sqrt(1 - q_t)).square()

        # angle histograms
        hist_t = _angle_histogram(power_t, angle, in_rings)
        hist_p = _angle_histogram(power_p, angle, in_rings)
        turn = _w1_circle(_cdf(hist_p, hist_t), _cdf(hist_t, hist_t)).square()

        anchored = _Anchor(r_a, anchor.angle)
        seed = _seed(sig_p, sig_t, anchored.frequency(h, w))
        valid = (power_t * g.weight).sum(dim=(-2, -1)) > 0
        return {"peak": peak, "band": band, "angle": turn, "seed": seed}, valid

    def _override(self, center: Tensor, pred: Tensor, dtype: torch.dtype) -> Tensor:
        b = pred.shape[0]
        if not isinstance(center, Tensor) or center.ndim != 1 or center.shape[0] not in (1, b):
            got = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
            raise ValueError(f"`center_override` must be a ({b},) tensor in [0, 1], got {got}")
        h, w = pred.shape[-2:]
        r_max = max(h, w) / math.sqrt(2.0)
        return center.to(device=pred.device, dtype=dtype).expand(b) * r_max


class ScaleConsistencyLoss(_SoftRadius):
    """Keep the texture scale of two stochastic runs under the same conditions equal:
    ``w · W1_r²`` between the ring profiles of the two predictions' whole power spectra (module
    docstring), averaged over the pairs where both predictions have power. A rescale by ``s``
    gives about ``(ln s)²``; noise, whose power sits at the highest radii, is far from a texture.
    A flat prediction has no scale: its pair does not count (and pulls the other run nowhere).

    Args:
        r_bins, min_bin, max_bin: As :class:`SpectralPeriodLoss`.
        tau: Temperature of :meth:`soft_radius` (the loss itself does not use it).
        w: Weight.
    """

    def __init__(
        self,
        r_bins: int = 256,
        tau: float = 0.06,
        min_bin: int = 2,
        max_bin: int | None = None,
        w: float = 1.0,
    ) -> None:
        super().__init__(r_bins, tau, min_bin, max_bin)
        self.w = _check_weight(w, "w")

    def forward(self, pred1: Tensor, pred2: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss for two ``B×{1|3}×H×W`` predictions and a ``B×1×H×W`` mask."""
        _check_pair(pred1, pred2, mask, ("pred1", "pred2"))
        with _full_precision(pred1.device):
            dtype = _work_dtype(pred1)
            h, w = pred1.shape[-2:]
            dev = pred1.device
            g = _grid(h, w, self.r_bins, dev, dtype)
            rings = _rings_within(h, w, self.r_bins, self.min_bin, self.max_bin, True, dev, dtype)
            prof = [
                _ring_profile(_power(_signal(x, mask, dtype).y), g, rings) for x in (pred1, pred2)
            ]
            valid = (prof[0].sum(dim=1) > 0) & (prof[1].sum(dim=1) > 0)
            steps = _log_steps(h, w, self.r_bins, dev, dtype)
            w1 = _w1_line(_cdf(prof[0], prof[0]), _cdf(prof[1], prof[1]), steps)
            return _mean_over(self.w * w1.square(), valid)


@lru_cache(maxsize=16)
def _log_polar_grid(
    h: int, w: int, out_r: int, out_t: int, r_min: float, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """grid_sample coordinates (1, out_r, out_t, 2) of a log-polar raster of a centred spectrum.

    Radii go geometrically from ``r_min`` to 1 (1 = Nyquist along each axis), angles over [0, π)
    (the power spectrum of a real image is point-symmetric).
    """
    rho = r_min ** (1.0 - torch.arange(out_r, dtype=torch.float64) / max(out_r - 1, 1))
    theta = torch.arange(out_t, dtype=torch.float64) * math.pi / out_t
    col = w // 2 + rho[:, None] * torch.cos(theta)[None, :] * (w / 2)
    row = h // 2 + rho[:, None] * torch.sin(theta)[None, :] * (h / 2)
    gx = 2 * col / (w - 1) - 1
    gy = 2 * row / (h - 1) - 1
    return torch.stack([gx, gy], dim=-1)[None].to(device=device, dtype=dtype)


class LogPolarAlignLoss(nn.Module):
    """MSE between log-polar maps of the pred's and target's amplitude spectra (a change of
    scale or angle is a shift along the map's radius or angle axis), plus ``w_seed · seed``.

    Map: amplitude ``A = √P`` of the apodized signal, divided by its maximum (gain-invariant),
    ``ln(A + 1e-3)`` (60 dB of range, so float rounding in near-empty bins cannot matter),
    resampled bilinearly at ``out_r`` radii from ``r_min`` to 1 (fraction of the Nyquist radius
    along each axis, geometric spacing) × ``out_t`` angles over [0, π). An image without power
    has no amplitude anywhere: its map is ``ln(1e-3)`` everywhere, as far below any texture's as
    the 60 dB floor allows. The seed (module docstring; anchor settings of ``ACFPeriodLoss``)
    gives a flat prediction its gradient. Per image:
    ``w · mean (map_p − map_t)² + w_seed · seed``.

    Args:
        out_r: Radial samples.
        out_t: Angular samples.
        r_min: Smallest radius, fraction of Nyquist, in (0, 1).
        w: Weight of the map term.
        w_seed: Weight of the seed term.
    """

    def __init__(
        self,
        out_r: int = 128,
        out_t: int = 180,
        r_min: float = 1e-2,
        w: float = 1.0,
        w_seed: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("out_r", out_r), ("out_t", out_t)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"`{name}` must be an int >= 2, got {value!r}")
        if isinstance(r_min, bool) or not isinstance(r_min, (int, float)) or not 0 < r_min < 1:
            raise ValueError(f"`r_min` must be a number in (0, 1), got {r_min!r}")
        self.out_r, self.out_t, self.r_min = out_r, out_t, float(r_min)
        self.w = _check_weight(w, "w")
        self.w_seed = _check_weight(w_seed, "w_seed")

    def log_polar(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Log-polar log-amplitude maps ``(B, out_r, out_t)`` and whether each image has power."""
        _check_images(x, "x")
        with _full_precision(x.device):
            power = _power(_signal(x, mask, _work_dtype(x)).y)
            return self._maps(power, *x.shape[-2:])

    def _maps(self, power: Tensor, h: int, w: int) -> tuple[Tensor, Tensor]:
        dtype = power.dtype
        g = _grid(h, w, 1, power.device, dtype)
        has = (power * g.weight).sum(dim=(-2, -1)) > 0
        eps = _EPS * power.mean(dim=(-2, -1)) + torch.finfo(dtype).tiny
        amp = torch.sqrt(power[:, g.full_rows, g.full_cols] + eps[:, None, None])
        amp = torch.fft.fftshift(amp, dim=(-2, -1))
        amp = amp / amp.amax(dim=(-2, -1), keepdim=True)
        amp = torch.where(has[:, None, None], amp, torch.zeros_like(amp))
        logamp = torch.log(amp + 1e-3)[:, None]  # 60 dB of range: float FFT noise stays below
        grid = _log_polar_grid(h, w, self.out_r, self.out_t, self.r_min, power.device, dtype)
        grid = grid.expand(logamp.shape[0], -1, -1, -1)
        maps = F.grid_sample(
            logamp, grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        return maps[:, 0], has

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss for ``B×{1|3}×H×W`` pred/target and a ``B×1×H×W`` mask."""
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            dtype = _work_dtype(pred)
            h, w = pred.shape[-2:]
            sig_p, sig_t = _signal(pred, mask, dtype), _signal(target, mask, dtype)
            power_t = _power(sig_t.y)
            map_p, _ = self._maps(_power(sig_p.y), h, w)
            map_t, valid = self._maps(power_t, h, w)
            per_image = self.w * (map_p - map_t).square().mean(dim=(-2, -1))
            if self.w_seed > 0:
                freq = _default_anchor(power_t, h, w).frequency(h, w)
                per_image = per_image + self.w_seed * _seed(sig_p, sig_t, freq)
            return _mean_over(per_image, valid)


class ACFPeriodLoss(nn.Module):
    """Match the target's autocorrelation up to 1.5 of its periods around its direction, and
    the prominence of its first peak.

    ``ρ`` is :mod:`texwatch.spectral`'s normalised, unbiased linear ACF (zero-padded
    Wiener–Khinchin divided by the weight's own autocorrelation; 1 at lag 0, 0 everywhere for an
    image without power), on the 2-D lags ``τ`` whose weight overlap is ≥ 10 % of its lag-0
    value. With the target anchor's direction ``u`` (unit vector of ``f_a``, module docstring),
    ``a = |τ·u|``, ``c = |τ×u|`` and ``T`` the target's :meth:`soft_period` (``N / r_a`` when it
    has none), per image:

    - *shape*: the mean of ``(ρ_p − ρ_t)²`` over the lags with ``a ≤ 1.5 T``, weighted by
      ``exp(−c² / 2(T/4)²)`` (every lag of the full plane counted once): the ACF along and
      just beside the target's direction, which fixes the period *and* the direction;
    - *deficit*: ``max(0, Π(ρ_t) − Π(ρ_p))²``, the first peak's missing prominence:
      ``Π(ρ)`` is the highest ``ρ`` over the lags with ``|a − T| ≤ T/6, c ≤ T/6`` minus the
      highest over ``T/4 ≤ a ≤ 3T/4, c ≤ T/6`` (0 for a region without lags). It is about the
      target's for a period a few % off, 0 for noise or a flat image, and ≤ 0 for half the
      period (whose peak at ``T/2`` is as high as the one at ``T``);

    and ``w · (shape + deficit) + w_seed · seed``. Far from the target's period the ACF's
    recurring peaks make the value over scale non-monotone (on the brick wall of the tests it
    rises to 1.6 at 0.7× the period and falls back to 0.5 at 0.5×): for large scale errors
    :class:`SpectralPeriodLoss` is the one with a clean landscape.

    :meth:`soft_period` (per image, along the image's *own* anchor direction): the unbiased ACF
    profile sampled at ``r_bins`` lags from 0 to the half-diagonal; the hard first prominent
    peak ``T_h`` of :mod:`texwatch.spectral` within ``[min_rel, max_rel]`` of the range chooses
    *which* peak; ``T_soft`` is the soft-argmax (temperature τ, values min–max normalised) over
    the lags within ``T_h ± T_h/2``. Without a prominent peak the window is every lag of the
    range after the profile's first minimum.

    Args:
        r_bins: Lag samples from 0 to the half-diagonal ``√(H² + W²)/2`` (:meth:`soft_period`).
        tau: Soft-argmax temperature on min–max normalised ACF values (:meth:`soft_period`).
        min_rel: Shortest lag searched by :meth:`soft_period` (which gives the loss its ``T``),
            fraction of the half-diagonal.
        max_rel: Longest lag searched, fraction of the half-diagonal.
        w: Weight of the ACF terms.
        w_seed: Weight of the seed term.
    """

    def __init__(
        self,
        r_bins: int = 256,
        tau: float = 0.08,
        min_rel: float = 0.03,
        max_rel: float = 0.6,
        w: float = 1.0,
        w_seed: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(r_bins, bool) or not isinstance(r_bins, int) or r_bins < 4:
            raise ValueError(f"`r_bins` must be an int >= 4, got {r_bins!r}")
        self.r_bins = r_bins
        self.tau = _check_positive(tau, "tau")
        self.min_rel = _check_fraction(min_rel, "min_rel")
        self.max_rel = _check_fraction(max_rel, "max_rel")
        if self.max_rel <= self.min_rel:
            raise ValueError(f"`max_rel` must exceed `min_rel`, got {max_rel!r} <= {min_rel!r}")
        self.w = _check_weight(w, "w")
        self.w_seed = _check_weight(w_seed, "w_seed")

    def soft_period(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Differentiable ACF period ``(B,)`` in px and the per-image validity."""
        _check_images(x, "x")
        with _full_precision(x.device):
            dtype = _work_dtype(x)
            h, w = x.shape[-2:]
            power, acf = _spectrum_and_acf(_signal(x, mask, dtype).y)
            wacf = _window_acf(mask, x, acf)
            return self._soft_period(power, acf, wacf, _default_anchor(power, h, w))

    def _soft_period(
        self, power: Tensor, acf: Tensor, wacf: Tensor, anchor: _Anchor
    ) -> tuple[Tensor, Tensor]:
        dtype = power.dtype
        h = power.shape[-2]
        w = acf.shape[-1] // 2
        device = power.device
        freq = anchor.frequency(h, w)
        total = (power.detach() * _grid(h, w, 1, device, dtype).weight).sum(dim=(-2, -1))
        step = math.hypot(h, w) / 2 / self.r_bins
        lags = torch.arange(self.r_bins, dtype=dtype, device=device) * step
        profile, ok, _ = _acf_ray(acf, wacf, freq[:, 0], freq[:, 1], lags)  # +inf past validity
        idx = torch.arange(self.r_bins, device=device)[None]
        lo = math.ceil(self.min_rel * self.r_bins)
        hi = math.floor(self.max_rel * self.r_bins)
        finite = torch.isfinite(profile)
        in_range = finite & (idx >= lo) & (idx <= hi)
        capped = torch.where(idx <= hi, profile, torch.full_like(profile, math.inf)).detach()
        j, found = _first_prominent_peak(capped, first=lo, threshold=_ACF_PROMINENCE)
        centre = (j * step).to(dtype)[:, None]
        near = in_range & ((lags[None] - centre).abs() <= centre / 2)
        vals = torch.where(finite, profile, torch.zeros_like(profile))
        rising = torch.cat(
            [vals[:, 1:] > vals[:, :-1], torch.ones_like(vals[:, :1], dtype=torch.bool)], dim=1
        )
        first_min = torch.where(rising & finite, idx, self.r_bins).amin(dim=1, keepdim=True)
        after_min = in_range & (idx >= first_min)
        window = torch.where((found & near.any(dim=1))[:, None], near, after_min)
        window = torch.where(window.any(dim=1, keepdim=True), window, in_range)
        ninf = torch.full_like(vals, -math.inf)
        top = torch.where(window, vals, ninf).amax(dim=1, keepdim=True)
        bottom = torch.where(window, vals, -ninf).amin(dim=1, keepdim=True)
        top = torch.where(window.any(dim=1, keepdim=True), top, torch.zeros_like(top))
        bottom = torch.where(window.any(dim=1, keepdim=True), bottom, torch.zeros_like(bottom))
        z = (vals - top) / (top - bottom + _EPS)
        logits = torch.where(window, z / self.tau, ninf)
        logits = torch.where(window.any(dim=1, keepdim=True), logits, torch.zeros_like(logits))
        period = (torch.softmax(logits, dim=1) * lags[None]).sum(dim=1)
        return period, ok & (total > 0) & window.any(dim=1)

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss for ``B×{1|3}×H×W`` pred/target and a ``B×1×H×W`` mask."""
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            dtype = _work_dtype(pred)
            h, w = pred.shape[-2:]
            sig_p, sig_t = _signal(pred, mask, dtype), _signal(target, mask, dtype)
            _, acf_p = _spectrum_and_acf(sig_p.y)
            power_t, acf_t = _spectrum_and_acf(sig_t.y)
            wacf = _window_acf(mask, pred, acf_p)
            with torch.no_grad():
                anchor = _default_anchor(power_t, h, w)
                period, found = self._soft_period(power_t, acf_t, wacf, anchor)
                period = torch.where(found, period, max(h, w) / _safe(anchor.radius))
            freq = anchor.frequency(h, w)
            terms = _acf_terms(acf_p, acf_t, wacf, freq, period)
            per_image = self.w * terms
            if self.w_seed > 0:
                per_image = per_image + self.w_seed * _seed(sig_p, sig_t, freq)
            valid = (power_t * _grid(h, w, 1, pred.device, dtype).weight).sum(dim=(-2, -1)) > 0
            return _mean_over(per_image, valid)


def _window_acf(mask: Tensor, x: Tensor, acf: Tensor) -> Tensor:
    """Autocorrelation (B|1, H+1, 2W) of the weight mask × Hann (cached for an all-ones mask)."""
    m = _prepare_mask(mask, x, acf.dtype)
    assert m is not None
    h, w = x.shape[-2:]
    return _weight_acf(None if bool((m == 1).all()) else m, "hann", h, w, acf)


def _normalised_acf(acf: Tensor, wacf: Tensor) -> tuple[Tensor, Tensor]:
    """``ρ`` (N, H+1, 2W): unbiased ACF, 1 at lag 0 (0 without power), 0 where the weight
    overlap is < 10 %; and those lags (N|1, H+1, 2W)."""
    w0 = wacf[:, :1, :1]
    inside = (wacf >= _MIN_OVERLAP * w0) & (w0 > 0)
    unbiased = acf / torch.where(inside, wacf, torch.ones_like(wacf))
    rho = unbiased / _safe(unbiased[:, :1, :1])
    return torch.where(inside, rho, torch.zeros_like(rho)), inside


def _acf_terms(acf_p: Tensor, acf_t: Tensor, wacf: Tensor, freq: Tensor, period: Tensor) -> Tensor:
    """ACFPeriodLoss's shape + deficit (N,) (see its docstring)."""
    dtype = acf_p.dtype
    h, w2 = acf_p.shape[-2] - 1, acf_p.shape[-1]
    rho_p, inside = _normalised_acf(acf_p, wacf)
    rho_t, _ = _normalised_acf(acf_t, wacf)
    unit = freq / _safe(freq.norm(dim=1, keepdim=True))
    lag_y = torch.arange(h + 1, dtype=dtype, device=acf_p.device)[None, :, None]
    col = torch.arange(w2, device=acf_p.device)
    lag_x = torch.where(col < w2 // 2, col, col - w2).to(dtype)[None, None, :]
    ux, uy = unit[:, 0, None, None], unit[:, 1, None, None]
    along = (lag_x * ux + lag_y * uy).abs()  # (N, H+1, 2W)
    across = (lag_y * ux - lag_x * uy).abs()
    t = period[:, None, None]
    mirror = torch.where(lag_y > 0, 2.0, 1.0).to(dtype)
    weight = (inside & (along <= _ACF_REACH * t)) * mirror * torch.exp(-((across / t * 4) ** 2) / 2)
    shape = ((rho_p - rho_t).square() * weight).sum(dim=(1, 2)) / _safe(weight.sum(dim=(1, 2)))
    thin = inside & (across <= t / 6)
    at_peak = thin & ((along - t).abs() <= t / 6)
    trough = thin & (along >= t / 4) & (along <= 0.75 * t)

    def highest(rho: Tensor, where: Tensor) -> Tensor:
        top = torch.where(where, rho, torch.full_like(rho, -math.inf)).flatten(1).max(dim=1)
        return torch.where(torch.isfinite(top.values), top.values, torch.zeros_like(top.values))

    def prominence(rho: Tensor) -> Tensor:
        return highest(rho, at_peak) - highest(rho, trough)

    deficit = (prominence(rho_t) - prominence(rho_p)).clamp_min(0).square()
    return shape + deficit
