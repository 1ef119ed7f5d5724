r"""Differentiable texture-scale losses (the seed's ``texture_losses`` API) on :mod:`.spectral`.

All four take ``B×C×H×W`` images (RGB → Rec.709 luma, other C → mean of per-channel power
spectra) and a ``B×1×H×W`` (or ``1×1×H×W``) mask in [0, 1] that apodizes the signal together
with a 2-D Hann window, exactly as the spectral metrics do (weighted mean removal, mask, window;
see :mod:`texwatch.spectral`). They run in float32 whatever the input dtype and under autocast
(float64 for float64 inputs, e.g. for ``torch.autograd.gradcheck``) and return a scalar: the mean
over the images that have signal.

**Empty images.** An image whose masked signal has no power outside the DC lobe (all-zero mask,
constant image) has no period: it contributes nothing. When no image of the batch has signal
the loss is exactly 0 with zero gradients — never NaN.

**Soft peaks.** The only differentiable way to a period is a soft-argmax, and it must sit on
the texture's peak, not on the window's DC lobe (where the reference's soft-argmax of ring
means lands):

- *spectral soft radius* (``SpectralPeriodLoss``, ``ScaleConsistencyLoss``): ring sums ``s_i``
  of the power over ``r_bins`` radial bins from centre to corner (DC-lobe bins left out; each
  FFT bin split linearly between the two nearest ring centres, the profile smoothed by a
  Gaussian of one radius unit so that rings thinner than the FFT lattice do not make it
  spiky), minus the same sums of the noise floor ``F`` of :mod:`texwatch.spectral`: the
  *excess* ``e_i``. Over the bins ``min_bin ≤ i ≤ max_bin``,
  ``z_i = (e_i − max e) / (max e − min e)`` and ``r_soft = Σ softmax(z/τ)_i · c_i`` (``c_i`` the
  bin centres, radius units). A harmonic with a ninth of the fundamental's excess gets a weight
  ``e^{−0.89/τ}`` ≈ 4e-7 at τ = 0.06.
- *ACF soft period* (``ACFPeriodLoss``): the unbiased ACF profile along the direction of the
  refined spectral peak (:mod:`texwatch.spectral`'s f\*), sampled at ``r_bins`` lags from 0 to
  the half-diagonal; the hard first prominent peak ``T_h`` of :mod:`texwatch.spectral` within
  ``[min_rel, max_rel]`` of the range chooses *which* peak; ``T_soft`` is the soft-argmax
  (temperature τ, values min–max normalised) over the lags within ``T_h ± T_h/2``. Without a
  prominent peak the window is every lag of the range after the profile's first minimum.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from texwatch.spectral import (
    _ACF_PROMINENCE,
    _acf_ray,
    _apodize,
    _channels,
    _check_images,
    _first_prominent_peak,
    _full_precision,
    _grid,
    _noise_floor,
    _peak,
    _power,
    _prepare_mask,
    _smooth_radial_sums,
    _spectrum_and_acf,
    _weight_acf,
    _work_dtype,
)

__all__ = ["ACFPeriodLoss", "LogPolarAlignLoss", "ScaleConsistencyLoss", "SpectralPeriodLoss"]

_EPS = 1e-12


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


def _signal(x: Tensor, mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Apodized signal (B, C', H, W) and the cast mask."""
    m = _prepare_mask(mask, x, dtype)
    assert m is not None
    return _apodize(_channels(x, dtype), m, "hann"), m


def _mean_over(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of per-image losses over the valid images; 0 (with graph) when there is none."""
    kept = torch.where(valid, values, torch.zeros_like(values))
    return kept.sum() / valid.sum().clamp_min(1)


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


class _SoftRadius(nn.Module):
    """Shared soft spectral radius (see the module docstring)."""

    def __init__(self, r_bins: int, tau: float, min_bin: int, max_bin: int | None) -> None:
        super().__init__()
        self.r_bins, self.min_bin, self.max_bin = _check_bins(r_bins, min_bin, max_bin)
        self.tau = _check_positive(tau, "tau")

    def _profiles(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ring sums of power (B, r_bins), of the excess over the floor, bin centres, validity."""
        dtype = _work_dtype(x)
        y, _ = _signal(x, mask, dtype)
        power = _power(y)  # (B, H, Wh)
        h, w = x.shape[-2:]
        g = _grid(h, w, self.r_bins, x.device, dtype)
        floor, _, total = _noise_floor(power, g)
        sums = _smooth_radial_sums(power, g)
        floor_sums = _smooth_radial_sums(floor, g)
        centres = (torch.arange(self.r_bins, dtype=dtype, device=x.device) + 0.5) * (
            g.r_max / self.r_bins
        )
        return sums, sums - floor_sums, centres, total > 0

    def _selected(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        g = _grid(h, w, self.r_bins, x.device, _work_dtype(x))
        has = torch.zeros(self.r_bins, dtype=g.weight.dtype, device=x.device)
        has = has.index_add(0, g.profile_bin, g.weight.flatten()) > 0
        idx = torch.arange(self.r_bins, device=x.device)
        return has & (idx >= self.min_bin) & (idx <= self.max_bin)

    def _soft(self, excess: Tensor, centres: Tensor, selected: Tensor) -> Tensor:
        ninf = torch.full_like(excess, -math.inf)
        pinf = torch.full_like(excess, math.inf)
        top = torch.where(selected, excess, ninf).amax(dim=1, keepdim=True)
        bottom = torch.where(selected, excess, pinf).amin(dim=1, keepdim=True)
        z = (excess - top) / (top - bottom + _EPS)
        weights = torch.softmax(torch.where(selected, z / self.tau, ninf), dim=1)
        return (weights * centres).sum(dim=1)

    def soft_radius(self, x: Tensor, mask: Tensor) -> Tensor:
        """Differentiable f* ``(B,)`` in radius units (``N/T`` for period T px, N = max(H, W))."""
        _check_images(x, "x")
        with _full_precision(x.device):
            _, excess, centres, _ = self._profiles(x, mask)
            return self._soft(excess, centres, self._selected(x)[None])


class SpectralPeriodLoss(_SoftRadius):
    """Pull the pred's dominant spectral peak onto the target's and match the spectrum's shape
    in a narrow band around the target period.

    Per image: ``w_peak · (ln r_pred − ln r_target)²`` (soft radii, module docstring) plus
    ``w_band ·`` the squared Hellinger distance between the pred's and the target's ring-power
    distributions weighted by a log-Gaussian band ``exp(−(ln c − ln r_target)² / 2 band_sigma²)``
    (relative width ``band_sigma``); both are 0 for a perfect match and symmetric in 2× / ½×.

    Args:
        r_bins: Radial bins from centre to corner.
        tau: Soft-argmax temperature on min–max normalised excess.
        band_sigma: Relative width of the band (σ of ln-radius).
        w_peak: Weight of the peak term.
        w_band: Weight of the band term.
        min_bin: First bin searched (DC-lobe bins are always skipped).
        max_bin: Last bin searched; None = ``r_bins - 1``.

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
        w_band: float = 1.0,
        min_bin: int = 2,
        max_bin: int | None = None,
    ) -> None:
        super().__init__(r_bins, tau, min_bin, max_bin)
        self.band_sigma = _check_positive(band_sigma, "band_sigma")
        self.w_peak = _check_weight(w_peak, "w_peak")
        self.w_band = _check_weight(w_band, "w_band")

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
            center_override: Optional ``(B,)`` band centre as a normalised radial frequency in
                [0, 1] — a fraction of the corner radius, i.e. ``bin / r_bins`` — replacing the
                target's soft radius (e.g. from depth or a prior).
        """
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            selected = self._selected(pred)[None]
            sums_p, excess_p, centres, valid_p = self._profiles(pred, mask)
            radius_p = self._soft(excess_p, centres, selected)
            sums_t, excess_t, _, valid_t = self._profiles(target, mask)
            if center_override is None:
                radius_t = self._soft(excess_t, centres, selected)
            else:
                radius_t = self._override(center_override, pred, centres.dtype)
                valid_t = torch.ones_like(valid_t)
            peak = (torch.log(radius_p + _EPS) - torch.log(radius_t + _EPS)).square()
            band = (
                torch.exp(
                    -(torch.log(centres)[None] - torch.log(radius_t + _EPS)[:, None]).square()
                    / (2 * self.band_sigma**2)
                )
                * selected
            )
            q_p = band * sums_p
            q_p = q_p / (q_p.sum(dim=1, keepdim=True) + _EPS)
            q_t = band * sums_t
            q_t = q_t / (q_t.sum(dim=1, keepdim=True) + _EPS)
            hellinger = (torch.sqrt(q_p + _EPS) - torch.sqrt(q_t + _EPS)).square().sum(dim=1)
            per_image = self.w_peak * peak + self.w_band * hellinger
            return _mean_over(per_image, valid_p & valid_t)

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
    ``w · (ln r_soft(pred1) − ln r_soft(pred2))²`` averaged over the batch.

    Args:
        r_bins, tau, min_bin, max_bin: As :class:`SpectralPeriodLoss`.
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
            selected = self._selected(pred1)[None]
            _, excess_1, centres, valid_1 = self._profiles(pred1, mask)
            _, excess_2, _, valid_2 = self._profiles(pred2, mask)
            r1 = self._soft(excess_1, centres, selected)
            r2 = self._soft(excess_2, centres, selected)
            per_image = self.w * (torch.log(r1 + _EPS) - torch.log(r2 + _EPS)).square()
            return _mean_over(per_image, valid_1 & valid_2)


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
    """MSE between log-polar maps of the pred's and target's amplitude spectra: a change of
    scale (angle) is a shift along the map's radius (angle) axis.

    Map: amplitude ``A = √P`` of the apodized signal, divided by its maximum (gain-invariant),
    ``ln(A + 1e-3)`` (60 dB of range, so float rounding in near-empty bins cannot matter),
    resampled bilinearly at ``out_r`` radii from ``r_min`` to 1 (fraction of the Nyquist radius
    along each axis, geometric spacing) × ``out_t`` angles over [0, π).

    Args:
        out_r: Radial samples.
        out_t: Angular samples.
        r_min: Smallest radius, fraction of Nyquist, in (0, 1).
        w: Weight.
    """

    def __init__(
        self, out_r: int = 128, out_t: int = 180, r_min: float = 1e-2, w: float = 1.0
    ) -> None:
        super().__init__()
        for name, value in (("out_r", out_r), ("out_t", out_t)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"`{name}` must be an int >= 2, got {value!r}")
        if isinstance(r_min, bool) or not isinstance(r_min, (int, float)) or not 0 < r_min < 1:
            raise ValueError(f"`r_min` must be a number in (0, 1), got {r_min!r}")
        self.out_r, self.out_t, self.r_min = out_r, out_t, float(r_min)
        self.w = _check_weight(w, "w")

    def log_polar(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Log-polar log-amplitude maps ``(B, out_r, out_t)`` and the per-image validity."""
        _check_images(x, "x")
        dtype = _work_dtype(x)
        y, _ = _signal(x, mask, dtype)
        power = _power(y)
        h, w = x.shape[-2:]
        g = _grid(h, w, 1, x.device, dtype)
        total = (power * g.weight).sum(dim=(-2, -1))
        eps = _EPS * power.mean(dim=(-2, -1)) + torch.finfo(dtype).tiny
        amp = torch.sqrt(power[:, g.full_rows, g.full_cols] + eps[:, None, None])
        amp = torch.fft.fftshift(amp, dim=(-2, -1))
        amp = amp / amp.amax(dim=(-2, -1), keepdim=True)
        logamp = torch.log(amp + 1e-3)[:, None]  # 60 dB of range: float FFT noise stays below
        grid = _log_polar_grid(h, w, self.out_r, self.out_t, self.r_min, x.device, dtype)
        grid = grid.expand(logamp.shape[0], -1, -1, -1)
        maps = F.grid_sample(
            logamp, grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        return maps[:, 0], total > 0

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss for ``B×{1|3}×H×W`` pred/target and a ``B×1×H×W`` mask."""
        _check_pair(pred, target, mask, ("pred", "target"))
        with _full_precision(pred.device):
            map_p, valid_p = self.log_polar(pred, mask)
            map_t, valid_t = self.log_polar(target, mask)
            per_image = self.w * (map_p - map_t).square().mean(dim=(-2, -1))
            return _mean_over(per_image, valid_p & valid_t)


class ACFPeriodLoss(nn.Module):
    """Match the periods read off the first prominent ACF peak (Wiener–Khinchin):
    ``w · (ln T_soft(pred) − ln T_soft(target))²`` averaged over the batch.

    Args:
        r_bins: Lag samples from 0 to the half-diagonal ``√(H² + W²)/2``.
        tau: Soft-argmax temperature on min–max normalised ACF values.
        min_rel: Shortest lag searched, fraction of the half-diagonal.
        max_rel: Longest lag searched, fraction of the half-diagonal.
        w: Weight.
    """

    def __init__(
        self,
        r_bins: int = 256,
        tau: float = 0.08,
        min_rel: float = 0.03,
        max_rel: float = 0.6,
        w: float = 1.0,
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

    def soft_period(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Differentiable ACF period ``(B,)`` in px and the per-image validity."""
        _check_images(x, "x")
        with _full_precision(x.device):
            dtype = _work_dtype(x)
            y, m = _signal(x, mask, dtype)
            h, w = x.shape[-2:]
            power, acf = _spectrum_and_acf(y)
            g = _grid(h, w, 256, x.device, dtype)
            # The refined peak direction moves continuously with the image: keep it in the graph.
            _, fx, fy = _peak(power, g)
            total = (power.detach() * g.weight).sum(dim=(-2, -1))
            wacf = _weight_acf(m, "hann", h, w, acf)
            step = math.hypot(h, w) / 2 / self.r_bins
            lags = torch.arange(self.r_bins, dtype=dtype, device=x.device) * step
            profile, ok, _ = _acf_ray(acf, wacf, fx, fy, lags)  # +inf past the valid part
            idx = torch.arange(self.r_bins, device=x.device)[None]
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
            t_p, valid_p = self.soft_period(pred, mask)
            t_t, valid_t = self.soft_period(target, mask)
            per_image = self.w * (torch.log(t_p + _EPS) - torch.log(t_t + _EPS)).square()
            return _mean_over(per_image, valid_p & valid_t)
