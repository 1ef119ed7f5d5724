"""The texture alarms: when a row of :func:`texwatch.spectral.texture_metrics` means a failure.

One definition, read by the report's probable causes, the Prometheus and Grafana rules (through
``dashboards/thresholds.py``) and ``benchmarks/alarm_quality.py``, which measures each alarm's
false-positive rate and recall on a corpus nobody tuned them on. The defaults below were chosen
from that benchmark's tables (see ``docs/alarms.md``); change them there, not here, when a
threshold has to move.

- **harmonic lock**: ``tile_scale`` (the prediction's period over the reference's, both read
  from the linear ACF along the reference's peak direction) at or beyond ``HARMONIC_SCALE`` —
  the period is nearer twice the reference's than the reference's (``"half"``: the fundamental
  moved to f/2) — or at or below ``1 / HARMONIC_SCALE`` (``"2f"``). NaN (no periodic reference,
  or no period in the prediction) never fires.
- **banding**: ``band_score`` (the share of row or column strips whose period is half an
  octave or more off the reference's) at or above ``BAND_SCORE``.
- **aliasing**: ``alias_score`` (the share of the prediction's power in strong spectral peaks,
  20 dB over their own floor, that stand 10 dB above the reference's spectrum there) at or
  above ``ALIAS_SHARE``.
- **checkerboard**: ``checkerboard_energy`` above ``CHECKERBOARD`` times the share white noise
  puts in the same Nyquist band.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

__all__ = [
    "ALIAS_SHARE",
    "BAND_SCORE",
    "CHECKERBOARD",
    "HARMONIC_SCALE",
    "aliasing",
    "banding",
    "checkerboard",
    "harmonic_lock",
    "white_nyquist_share",
]

HARMONIC_SCALE: float = 1.5
"""``tile_scale`` at or beyond this (or at or below its inverse) is a harmonic lock."""

BAND_SCORE: float = 0.1
"""``band_score`` at or above this is a band of another texture scale."""

ALIAS_SHARE: float = 0.15
"""``alias_score`` at or above this is aliasing: that much power in peaks the reference lacks."""

CHECKERBOARD: float = 2.0
"""``checkerboard_energy`` above this × white noise's Nyquist share is a checkerboard."""


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def harmonic_lock(
    tile_scale: float, threshold: float = HARMONIC_SCALE
) -> Literal["half", "2f"] | None:
    """``"half"`` (period doubled), ``"2f"`` (period halved) or None for one ``tile_scale``."""
    if not _finite(tile_scale) or tile_scale <= 0:
        return None
    if tile_scale >= threshold:
        return "half"
    if tile_scale <= 1.0 / threshold:
        return "2f"
    return None


def banding(band_score: float, threshold: float = BAND_SCORE) -> bool:
    """Whether a ``band_score`` reads as a band of another scale."""
    return _finite(band_score) and band_score >= threshold


def aliasing(alias_score: float, threshold: float = ALIAS_SHARE) -> bool:
    """Whether an ``alias_score`` reads as aliasing."""
    return _finite(alias_score) and alias_score >= threshold


def white_nyquist_share(size: tuple[int, int]) -> float:
    """Share of the non-DC spectrum bins in the Nyquist band ``|kx| >= W//2 - 1`` or
    ``|ky| >= H//2 - 1`` (where ``checkerboard_energy`` is measured): the value white noise
    gives, which is large for small latents (18 % at 32×32)."""
    h, w = size
    ky = np.abs(np.fft.fftfreq(h) * h)[:, None]
    kx = np.abs(np.fft.fftfreq(w) * w)[None, :]
    band = (kx >= w // 2 - 1) | (ky >= h // 2 - 1)
    return float(band.sum()) / max(h * w - 1, 1)


def checkerboard(energy: float, size: tuple[int, int], threshold: float = CHECKERBOARD) -> bool:
    """Whether a ``checkerboard_energy`` on an (H, W) image reads as a checkerboard."""
    return _finite(energy) and energy > threshold * white_nyquist_share(size)
