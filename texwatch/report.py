"""``texwatch report``: the post-hoc report across runs and checkpoints (HTML, PDF and JSON).

For each run it shows the loss with its EMA and spikes (with the sample ids of each spiking
batch), every loss term unweighted and weighted and its weight over time, dead terms, stream
health and the texture metrics over time; for each selected step, all runs side by side: sample
grids, spectra with f*, 2f*, f*/2 and the reference marked, and the metric table; fixed validation
images (``val/*`` streams) over time; and the *probable causes*, the seed's readings of those
numbers, each with the evidence that fired it and the threshold a user can change.

The numbers come from :func:`texwatch.derive.derive_all`: what the daemon stored under
``derived/`` plus, for rows it has not derived, the same pipeline run in memory. Image streams
hold one row per item; a step's values are the mean over the items of its latest ``record()``
call (``min``/``max`` over them, ``nonfinite`` summed), so a resumed run shows one value per step.

Outputs in ``OUT/``: ``index.html`` (self-contained: figures embedded as PNG, every string that
came from a store HTML-escaped), ``report.pdf`` (the same figures and tables, through matplotlib's
PdfPages) and ``report.json`` (every number shown, NaN as null).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import html
import io
import json
import math
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from texwatch import alarms
from texwatch._json import jsonable
from texwatch.metric_names import STREAM_METRIC_NAMES

if TYPE_CHECKING:
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    from texwatch.store import Run

__all__ = [
    "FFT_PERIOD_KEY",
    "HEALTH_KEYS",
    "TEXTURE_KEYS",
    "ProbableCause",
    "ReportError",
    "Thresholds",
    "add_parser",
    "build_report",
    "probable_causes",
    "run",
    "step_table",
]

TEXTURE_KEYS: tuple[str, ...] = tuple(STREAM_METRIC_NAMES)
"""Texture metric columns shown per stream (:data:`texwatch.spectral.METRIC_KEYS` and
:data:`texwatch.spectral.BAND_KEYS`, as texwatchd derives and exports them)."""

HEALTH_KEYS: tuple[str, ...] = ("mean", "std", "min", "max", "nonfinite", "clip_fraction")
"""Stream value-health columns shown per stream."""

FFT_PERIOD_KEY = "fft_period_px"
"""Checkpoint-table row beside the ACF period: the period f* stands for, max(H, W) / f*."""

_PROG = "texwatch report"
_VAL_PREFIX = "val/"
_MAX_LISTED = 12  # evidence lines listed per cause before "... and N more"
_LR_LOOKBACK = 100  # steps before a spike whose median lr is the baseline of the lr reading
_DPI = 90
_NYQUIST_SHARE = 0.45  # f* at or beyond this × N sits in the Nyquist band (checkerboard)


class ReportError(ValueError):
    """A bad input to the report; its message is the one line the command prints."""


@dataclass(frozen=True)
class Thresholds:
    """Where each probable cause fires; every field can be changed with ``--threshold NAME=V``.

    The texture alarms (``harmonic_scale``, ``band_score``, ``alias_share``, ``checkerboard``)
    are decided by :mod:`texwatch.alarms`, whose defaults they take: the report, the Prometheus
    rules and the alarm benchmark read one definition.

    Attributes:
        harmonic_scale: ``tile_scale`` at or above this (or at or below its inverse) → harmonic
            lock (:func:`texwatch.alarms.harmonic_lock`); must be > 1.
        acf_fft_mismatch: |ACF period / FFT period − 1| above this → harmonic mix-up.
        axis_ratio: ``axis_ratio_at_f`` above this → axis cross / row-column banding.
        band_score: ``band_score`` at or above this → bands of doubled period
            (:func:`texwatch.alarms.banding`).
        checkerboard: ``checkerboard_energy`` above this × the share white noise puts in the
            Nyquist band (:func:`texwatch.alarms.checkerboard`) → transposed-conv checkerboard.
        alias_share: ``alias_score`` at or above this → aliasing (:func:`texwatch.alarms.aliasing`).
        clip_fraction: ``clip_fraction`` above this → values out of the x0 clip range.
        spike_recovery_steps: steps after a spike within which the loss must return to its EMA.
        ema_break_ratio: post-spike median loss above this × the pre-spike EMA → EMA break.
        lr_jump: lr at a spike above this × the median lr of the 100 steps before → lr reading.
    """

    harmonic_scale: float = alarms.HARMONIC_SCALE
    acf_fft_mismatch: float = 0.3
    axis_ratio: float = 0.35
    band_score: float = alarms.BAND_SCORE
    checkerboard: float = alarms.CHECKERBOARD
    alias_share: float = alarms.ALIAS_SHARE
    clip_fraction: float = 0.01
    spike_recovery_steps: float = 10.0
    ema_break_ratio: float = 1.5
    lr_jump: float = 1.5

    def __post_init__(self) -> None:
        if not self.harmonic_scale > 1:
            raise ReportError(
                f"threshold harmonic_scale must be > 1 (its inverse is the halved-tile bound), "
                f"got {self.harmonic_scale!r}"
            )

    @classmethod
    def from_pairs(cls, pairs: Sequence[str]) -> Thresholds:
        """Defaults overridden by ``NAME=VALUE`` pairs (the ``--threshold`` options).

        Raises:
            ReportError: a pair that is not ``NAME=NUMBER`` or names no threshold.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, float] = {}
        for pair in pairs:
            name, sep, raw = pair.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ReportError(
                    f"--threshold {pair!r}: expected NAME=VALUE with NAME one of {sorted(names)}"
                )
            try:
                value = float(raw)
            except ValueError:
                raise ReportError(f"--threshold {pair!r}: {raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ReportError(f"--threshold {pair!r}: expected a finite number >= 0")
            if name == "harmonic_scale" and value <= 1:
                raise ReportError(
                    f"--threshold {pair!r}: expected a number > 1 (its inverse is the "
                    "halved-tile bound)"
                )
            values[name] = value
        return cls(**values)


@dataclass
class ProbableCause:
    """One reading of the numbers: what probably went wrong, and the evidence for it.

    Attributes:
        key: stable identifier (``harmonic_lock``, ``loss_spike_bad_batch``, ``dead_term``...).
        title: one line naming the problem.
        reading: what it usually means and what to check (the seed's section 7).
        evidence: human-readable lines, one per observation that passed the threshold.
        values: the same observations as numbers (stream, step, metric, value).
        thresholds: the thresholds that decided it, by :class:`Thresholds` field name.
    """

    key: str
    title: str
    reading: str
    evidence: list[str] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Tables: derived columns → one row per step


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: Any) -> bool:
    return math.isfinite(_float(v))


def step_table(table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per step from a derived table with one row per item, latest ``record()`` wins.

    Consecutive rows with the same step are one ``record()`` call; for a step recorded more than
    once (a resumed run) the last call is kept. Columns are averaged over the call's items
    (NaN ignored), except ``min``/``max`` (taken over them) and ``nonfinite`` (summed); an
    ``items`` column counts them. Rows come out ordered by step.
    """
    from texwatch.store import latest_rows

    steps = np.asarray(table.get("step", np.zeros(0)), dtype=np.int64)
    n = steps.size
    if n == 0:
        return {"step": steps, "items": np.zeros(0, np.int64)}
    starts = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1]])
    ends = np.r_[starts[1:], n]
    keep = latest_rows(steps[starts])
    out: dict[str, np.ndarray] = {"step": steps[starts][keep], "items": (ends - starts)[keep]}
    for name, col in table.items():
        values = np.asarray(col)
        if name == "step" or values.ndim != 1 or values.dtype.kind not in "biuf":
            continue
        v = values.astype(np.float64)
        finite = np.isfinite(v)
        if name == "min":
            agg = np.fmin.reduceat(np.where(finite, v, np.nan), starts)
        elif name == "max":
            agg = np.fmax.reduceat(np.where(finite, v, np.nan), starts)
        elif name == "nonfinite":
            agg = np.add.reduceat(np.nan_to_num(v), starts)
        else:
            sums = np.add.reduceat(np.where(finite, v, 0.0), starts)
            counts = np.add.reduceat(finite.astype(np.float64), starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                agg = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
        out[name] = agg[keep]
    return out


def _row_at(table: Mapping[str, np.ndarray], step: int) -> int | None:
    """Index of the last row at or before ``step`` (steps sorted), or None."""
    i = int(np.searchsorted(table["step"], step, side="right")) - 1
    return i if i >= 0 else None


def _value(table: Mapping[str, np.ndarray], key: str, i: int) -> float:
    col = table.get(key)
    return math.nan if col is None else float(col[i])


# --------------------------------------------------------------------------------------------
# Probable causes


def _fft_period(f_star: float, size: tuple[int, int]) -> float:
    """The period in px that radius ``f_star`` stands for on an (H, W) image: max(H, W) / f*.

    :mod:`texwatch.spectral` measures radii as ``N·√((kx/W)² + (ky/H)²)`` with ``N = max(H, W)``,
    so a period of T px sits at ``N / T`` at every angle.
    """
    return max(size) / f_star if f_star > 0 else math.nan


def _listed(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LISTED:
        return lines
    return [*lines[:_MAX_LISTED], f"... and {len(lines) - _MAX_LISTED} more"]


def _texture_rows(
    streams: Mapping[str, Mapping[str, np.ndarray]], steps: Sequence[int]
) -> Iterator[tuple[str, int, int, Mapping[str, np.ndarray]]]:
    """(stream, requested step, row index, table) for every judged stream and selected step."""
    for name, table in streams.items():
        if name == "target" or table["step"].size == 0:
            continue
        seen: set[int] = set()
        for step in steps:
            i = _row_at(table, step)
            if i is not None and i not in seen:
                seen.add(i)
                yield name, step, i, table


def _periodic_rows(table: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows where at least one item holds a periodic texture (``periodic`` > 0).

    ``periodic`` is a step's mean over its items; a table without the column has no periodic
    row. Only these rows have a period, an f* and a ring at f that mean something.
    """
    periodic = table.get("periodic")
    if periodic is None:
        return np.zeros(table["step"].size, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(periodic, dtype=np.float64) > 0


def _texture_causes(
    streams: Mapping[str, Mapping[str, np.ndarray]],
    sizes: Mapping[str, tuple[int, int]],
    steps: Sequence[int],
    th: Thresholds,
) -> list[ProbableCause]:
    harmonic = ProbableCause(
        "harmonic_lock",
        "Tile doubled or halved: the texture latched onto a harmonic (2f or f/2)",
        "The texture's period, read from its autocorrelation, is about twice (or half) the "
        "reference's: the model learned tiles ×2 or ×½. Seed §7.2 "
        "causes: tiling sources in the dataset (run `texwatch dataset`), errors in mask "
        "preparation, over-regularisation. Spectral leakage and FFT edge effects make it worse: "
        "apodize the texture loss.",
        thresholds={"harmonic_scale": th.harmonic_scale},
    )
    mixup = ProbableCause(
        "acf_fft_disagree",
        "ACF and FFT periods disagree (harmonic mix-up)",
        "For one clean periodic texture the ACF's first peak and the spectrum's f* give the same "
        "period (Wiener–Khinchin). A ratio near 2 or 3 means f* sits on a harmonic of the ACF's "
        "fundamental: check the spectrum for a second ring.",
        thresholds={"acf_fft_mismatch": th.acf_fft_mismatch},
    )
    bands = ProbableCause(
        "banding",
        "Row/column banding: axis cross or bands of doubled period",
        "Energy in the ring at f gathers on the horizontal/vertical axes (the FFT's boundary "
        "'axis cross'), or row/column strips read twice the image's typical period: a band of "
        "another texture scale. Seed §7.1 causes: batch-norm imbalance, periodicity in the "
        "latents, augmentations that create a regular pattern; spectral losses without a window "
        "(Hann/Tukey or periodic-plus-smooth) push the model toward axis deformations.",
        thresholds={"axis_ratio": th.axis_ratio, "band_score": th.band_score},
    )
    checker = ProbableCause(
        "checkerboard",
        "Checkerboard artifact (transposed-convolution upsampling)",
        "Energy at the Nyquist corners: uneven overlap of transposed-convolution kernels. Use "
        "resize-convolution (nearest/bilinear, then conv) or a kernel size divisible by the "
        "stride.",
        thresholds={"checkerboard": th.checkerboard},
    )
    aliasing = ProbableCause(
        "aliasing",
        "Aliasing: strong spectral peaks the reference lacks (moiré)",
        "Part of the power sits in strong, narrow spectral peaks where the reference's spectrum "
        "has none: frequencies folded back by a resize without antialiasing, a strided layer "
        "without blur-pool, or a checkerboard's Nyquist peaks. Enable antialiasing in the data "
        "pipeline's resize; the data stream firing as well as the predictions points at the "
        "pipeline.",
        thresholds={"alias_share": th.alias_share},
    )
    for name, _, i, table in _texture_rows(streams, steps):
        row_step = int(table["step"][i])
        size = sizes[name]

        def add(
            cause: ProbableCause,
            text: str,
            metric: str,
            value: float,
            name: str = name,
            row_step: int = row_step,
            **extra: Any,
        ) -> None:
            cause.evidence.append(f"{name} @ step {row_step}: {text}")
            cause.values.append(
                {"stream": name, "step": row_step, "metric": metric, "value": value, **extra}
            )

        f = _value(table, "fundamental_radius_bin", i)
        cb = _value(table, "checkerboard_energy", i)
        nyquist = False
        if alarms.checkerboard(cb, size, th.checkerboard):
            white = alarms.white_nyquist_share(size)
            nyquist = _finite(f) and f >= _NYQUIST_SHARE * max(size)
            add(
                checker,
                f"checkerboard_energy = {cb:.3g}, {cb / white:.1f}× white noise's "
                f"{white:.3g} (> {th.checkerboard:g}×)"
                + ("; f* sits at the Nyquist frequency" if nyquist else ""),
                "checkerboard_energy",
                cb,
            )
        alias = _value(table, "alias_score", i)
        if alarms.aliasing(alias, th.alias_share):
            add(
                aliasing,
                f"alias_score = {alias:.3g} (≥ {th.alias_share:g}): {alias:.0%} of the power "
                "sits in strong peaks the reference lacks",
                "alias_score",
                alias,
            )
        if nyquist or not _periodic_rows(table)[i]:
            # no periodic texture (or f* is the checkerboard's): periods, f* and its ring
            # mean nothing, and tile_scale / band_score read noise
            continue
        scale = _value(table, "tile_scale", i)
        lock = alarms.harmonic_lock(scale, th.harmonic_scale)
        if lock is not None:
            tiles = "tiles doubled" if lock == "half" else "tiles halved"
            add(
                harmonic,
                f"tile scale {scale:.2f}: the period is ×{scale:.2f} the reference's ({tiles})",
                "tile_scale",
                scale,
                lock=lock,
            )
        acf = _value(table, "acf_first_peak_radius_bin", i)
        fft = _fft_period(f, size) if _finite(f) else math.nan
        if _finite(acf) and _finite(fft) and acf > 0 and abs(acf / fft - 1) > th.acf_fft_mismatch:
            add(
                mixup,
                f"ACF period {acf:.3g} px vs FFT period {fft:.3g} px (ratio {acf / fft:.2f})",
                "acf_over_fft_period",
                acf / fft,
            )
        axis = _value(table, "axis_ratio_at_f", i)
        if _finite(axis) and axis > th.axis_ratio:
            add(
                bands,
                f"axis_ratio_at_f = {axis:.3g} > {th.axis_ratio:g}: the ring at f gathers on "
                "the FFT axes",
                "axis_ratio_at_f",
                axis,
            )
        band = _value(table, "band_score", i)
        # a doubled period over the whole image reads doubled in every strip: that is the
        # harmonic lock above, not a band
        if lock != "half" and alarms.banding(band, th.band_score):
            run = _value(table, "band_max_run", i)
            add(
                bands,
                f"band_score = {band:.3g} (≥ {th.band_score:g}): {band:.0%} more row/column "
                "strips read the doubled period than in the reference"
                + (f"; the longest band spans {run:.0f} px" if _finite(run) else ""),
                "band_score",
                band,
            )
    return [c for c in (harmonic, mixup, bands, checker, aliasing) if c.evidence]


def _health_cause(
    streams: Mapping[str, Mapping[str, np.ndarray]], th: Thresholds
) -> list[ProbableCause]:
    cause = ProbableCause(
        "value_range",
        "Values out of range: clipped or non-finite latents / predictions",
        "A large share of |x| beyond the x0 clip range, or NaN/Inf, means the sampler or the "
        "model produces values a DDIM-style clamp would cut (the seed's colour-noise bug): "
        "check the x0 clipping, the latent scaling factor and the learning rate.",
        thresholds={"clip_fraction": th.clip_fraction},
    )
    for name, table in streams.items():
        clip = table.get("clip_fraction")
        if clip is not None and np.isfinite(clip).any():
            i = int(np.nanargmax(clip))
            if clip[i] > th.clip_fraction:
                step = int(table["step"][i])
                over = int(np.sum(clip > th.clip_fraction))
                cause.evidence.append(
                    f"{name}: clip_fraction up to {clip[i]:.3g} at step {step} "
                    f"(> {th.clip_fraction:g} at {over} steps)"
                )
                cause.values.append(
                    {
                        "stream": name,
                        "step": step,
                        "metric": "clip_fraction",
                        "value": float(clip[i]),
                    }
                )
        bad = table.get("nonfinite")
        if bad is not None and np.nansum(bad) > 0:
            first = int(table["step"][int(np.flatnonzero(bad > 0)[0])])
            total = float(np.nansum(bad))
            cause.evidence.append(f"{name}: {total:.0f} non-finite values, first at step {first}")
            cause.values.append(
                {"stream": name, "step": first, "metric": "nonfinite", "value": total}
            )
    return [cause] if cause.evidence else []


def _spike_causes(
    scalars: Mapping[str, np.ndarray], sample_ids: Mapping[int, list[int]], th: Thresholds
) -> list[ProbableCause]:
    from texwatch.detectors import SPIKE_RULES

    spike = scalars.get("spike")
    if spike is None or not np.any(spike > 0):
        return []
    steps, loss, ema = scalars["step"], scalars["loss"], scalars["loss_ema"]
    lr = scalars.get("lr")
    rules = scalars.get("spike_rule", np.zeros_like(spike))
    z = scalars.get("loss_zscore", np.full(spike.shape, np.nan))
    bad = ProbableCause(
        "loss_spike_bad_batch",
        "Loss spikes that recover at once: a bad batch",
        "The loss jumps and is back at its EMA within a few steps: one batch was unusual "
        "(corrupt image, wrong mask, extreme timestep). The sample ids of each spiking batch "
        "are listed; a sample that recurs is the first to inspect (seed §7.3).",
        thresholds={
            "spike_recovery_steps": th.spike_recovery_steps,
            "ema_break_ratio": th.ema_break_ratio,
        },
    )
    lr_cause = ProbableCause(
        "loss_spike_learning_rate",
        "Loss spikes after the learning rate rose",
        "The learning rate at the spike is well above its level just before (warm-up end, "
        "schedule restart, a wrong multiplier): the step size overshoots (seed §7.3). Lower the "
        "peak lr or lengthen the warm-up.",
        thresholds={"lr_jump": th.lr_jump},
    )
    ema_break = ProbableCause(
        "loss_spike_ema_break",
        "EMA break: the loss jumped to a new level and stayed",
        "After the spike the loss does not come back to its EMA: training broke off its "
        "trajectory (divergence, a corrupted optimizer or EMA state after a resume, a changed "
        "data distribution). Compare the checkpoints before and after (seed §7.3).",
        thresholds={
            "ema_break_ratio": th.ema_break_ratio,
            "spike_recovery_steps": th.spike_recovery_steps,
        },
    )
    recovery = max(1, int(th.spike_recovery_steps))
    counts: dict[int, int] = {}
    for i in np.flatnonzero(spike > 0):
        step = int(steps[i])
        rule_code = int(rules[i])
        rule = SPIKE_RULES[rule_code - 1] if 0 < rule_code <= len(SPIKE_RULES) else "unknown"
        ids = sample_ids.get(step, [])
        for s in ids:
            counts[s] = counts.get(s, 0) + 1
        pre = float(ema[i - 1]) if i > 0 else math.nan
        after = loss[i + 1 : i + 1 + recovery]
        finite_after = after[np.isfinite(after)]
        level = float(np.median(finite_after)) if finite_after.size else math.nan
        record = {
            "step": step,
            "loss": float(loss[i]),
            "ema_before": pre,
            "zscore": float(z[i]),
            "rule": rule,
            "sample_ids": ids,
            "median_after": level,
        }
        text = (
            f"step {step}: loss {float(loss[i]):.4g} (EMA before {pre:.4g}, z {float(z[i]):.3g}, "
            f"rule {rule})"
        )
        lr_base = math.nan
        lr_now = float(lr[i]) if lr is not None else math.nan
        if lr is not None:
            window = lr[max(0, i - _LR_LOOKBACK) : i]
            window = window[np.isfinite(window)]
            lr_base = float(np.median(window)) if window.size else math.nan
        if _finite(lr_base) and lr_base > 0 and _finite(lr_now) and lr_now > th.lr_jump * lr_base:
            record["lr"], record["lr_before"] = lr_now, lr_base
            lr_cause.evidence.append(f"{text}; lr {lr_now:.3g} vs {lr_base:.3g} before")
            lr_cause.values.append(record)
        elif (after.size and not finite_after.size) or (
            _finite(level) and _finite(pre) and level > th.ema_break_ratio * pre
        ):
            ema_break.evidence.append(
                f"{text}; median loss over the next {after.size} steps {level:.4g} "
                f"(> {th.ema_break_ratio:g} × EMA)"
            )
            ema_break.values.append(record)
        else:
            shown = ", ".join(str(s) for s in ids[:16]) + (" ..." if len(ids) > 16 else "")
            bad.evidence.append(f"{text}; samples [{shown}]" if ids else text)
            bad.values.append(record)
    recurring = sorted((s for s, c in counts.items() if c > 1), key=lambda s: -counts[s])
    if recurring and bad.evidence:
        bad.evidence.append(
            "samples in more than one spiking batch: "
            + ", ".join(f"{s} (×{counts[s]})" for s in recurring[:16])
        )
    for c in (bad, lr_cause, ema_break):
        c.evidence = _listed(c.evidence)
    return [c for c in (bad, lr_cause, ema_break) if c.evidence]


def _flagged_terms(
    scalars: Mapping[str, np.ndarray], prefix: str
) -> Iterator[tuple[str, np.ndarray, int]]:
    """Each term whose ``<prefix><term>`` column is set somewhere: the term, the rows where it
    is (a mask) and the first such step, by term name."""
    for key in sorted(k for k in scalars if k.startswith(prefix)):
        flagged = scalars[key] > 0
        if flagged.any():
            first = int(scalars["step"][int(np.flatnonzero(flagged)[0])])
            yield key[len(prefix) :], flagged, first


def _dead_term_cause(scalars: Mapping[str, np.ndarray]) -> list[ProbableCause]:
    cause = ProbableCause(
        "dead_term",
        "Dead loss term: weighted in, but contributes nothing",
        "The term's weight is > 0 while its value is exactly 0, constant, or missing: it is "
        "defined but never computed (the seed 004 bug: an edge loss initialised to 0 and never "
        "assigned). Check that the code path computing it actually runs.",
    )
    steps = scalars["step"]
    for term, dead, first in _flagged_terms(scalars, "dead/"):
        values = scalars.get(f"term/{term}", np.full(steps.shape, np.nan))[dead]
        weights = scalars.get(f"weight/{term}", np.ones(steps.shape))[dead]
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            what = "its value is missing"
        elif np.all(finite == 0):
            what = "its value is always 0"
        else:
            what = f"its value stays at {float(finite[0]):.4g}"
        w = float(np.nanmedian(weights)) if np.isfinite(weights).any() else math.nan
        cause.evidence.append(
            f"term {term!r}: dead at {int(dead.sum())} of {steps.size} steps (first at step "
            f"{first}); weight {w:.3g} while {what}"
        )
        cause.values.append(
            {"term": term, "first_step": first, "steps": int(dead.sum()), "weight": w}
        )
    return [cause] if cause.evidence else []


def _nonfinite_term_cause(scalars: Mapping[str, np.ndarray]) -> list[ProbableCause]:
    cause = ProbableCause(
        "nonfinite_term",
        "Non-finite loss term: computed, but NaN or Inf",
        "The term is computed and comes out NaN or ±Inf (a log or a division by 0, an overflow "
        "in half precision): it poisons the total wherever it is summed in. Unlike a dead term, "
        "the code path runs; check its inputs and its precision.",
    )
    steps = scalars["step"]
    for term, broken, first in _flagged_terms(scalars, "term_nonfinite/"):
        cause.evidence.append(
            f"term {term!r}: non-finite at {int(broken.sum())} of {steps.size} steps "
            f"(first at step {first})"
        )
        cause.values.append({"term": term, "first_step": first, "steps": int(broken.sum())})
    return [cause] if cause.evidence else []


def probable_causes(
    scalars: Mapping[str, np.ndarray],
    streams: Mapping[str, Mapping[str, np.ndarray]],
    steps: Sequence[int],
    *,
    sizes: Mapping[str, tuple[int, int]],
    sample_ids: Mapping[int, list[int]] | None = None,
    thresholds: Thresholds | None = None,
) -> list[ProbableCause]:
    """Turn one run's derived numbers into the seed's readings, each with its evidence.

    Args:
        scalars: per-step scalar table: ``step``, ``loss``, ``loss_ema``, ``loss_zscore``,
            ``spike``, ``spike_rule``, ``dead/<term>``, ``term_nonfinite/<term>``, ``term/<term>``,
            ``weight/<term>``, optional ``lr``.
        streams: per stream, a :func:`step_table` of its derived columns. The period-based
            readings (harmonic lock, ACF/FFT mix-up, banding) are judged only at rows whose
            ``periodic`` is > 0; the checkerboard and aliasing readings at every row.
        steps: the steps whose texture metrics are judged (the report's checkpoints).
        sizes: (H, W) of each stream, to turn f* into a period and for the white-noise
            Nyquist share the checkerboard is compared with.
        sample_ids: sample ids of each spiking step's batch.
        thresholds: where each reading fires (defaults: :class:`Thresholds`).
    """
    th = thresholds or Thresholds()
    causes = _texture_causes(streams, sizes, steps, th)
    for c in causes:
        c.evidence = _listed(c.evidence)
    causes += _health_cause(streams, th)
    if scalars.get("step") is not None and scalars["step"].size:
        causes += _spike_causes(scalars, sample_ids or {}, th)
        causes += _dead_term_cause(scalars)
        causes += _nonfinite_term_cause(scalars)
    return causes


# --------------------------------------------------------------------------------------------
# Loading runs


@dataclass
class _RunData:
    label: str  # for HTML (escaped there) and JSON
    path: Path
    run: Run
    scalars: dict[str, np.ndarray]
    streams: dict[str, dict[str, np.ndarray]]
    sizes: dict[str, tuple[int, int]]
    checkpoints: list[int]

    @property
    def shown(self) -> str:
        """The label as figures draw it (``$`` escaped for matplotlib)."""
        from texwatch.plots import literal

        return literal(self.label)


def _open(path: Path) -> Run:
    from texwatch.store import open_run

    try:
        run = open_run(path)
        committed = run.committed()
    except (OSError, ValueError) as err:
        raise ReportError(str(err)) from err
    if not any(committed.values()):
        raise ReportError(f"run store {str(path)!r} has no committed rows")
    return run


def _load(path: Path, run: Run, label: str, settings: Any) -> _RunData:
    """Derive a run (stored ``derived/`` + the rest in memory) and index it by step."""
    from texwatch.derive import derive_all
    from texwatch.store import latest_rows

    try:
        derived = derive_all(path, settings)
    except (OSError, ValueError, KeyError) as err:
        raise ReportError(f"cannot derive run {str(path)!r}: {err}") from err
    empty = {"step": np.zeros(0, np.int64)}
    rows = derived.get("scalars", empty)
    keep = latest_rows(rows["step"])
    scal = {k: np.asarray(v)[keep] for k, v in rows.items() if np.asarray(v).ndim == 1}
    # Raw scalars (lr, term/, weight/, user scalars) join the derived ones on the step.
    raw = run.scalars() if run.committed().get("scalars") else empty
    if raw["step"].size and scal["step"].size:
        pos = np.minimum(np.searchsorted(raw["step"], scal["step"]), raw["step"].size - 1)
        hit = raw["step"][pos] == scal["step"]
        for name, col in raw.items():
            if name not in ("step", "time") and name not in scal:
                scal[name] = np.where(hit, np.asarray(col, np.float64)[pos], np.nan)
    order = {"pred": 0, "target": 1, "latents": 2}
    names = sorted((n for n in derived if n != "scalars"), key=lambda n: (order.get(n, 3), n))
    streams = {name: step_table(derived[name]) for name in names}
    sizes = {name: tuple(int(s) for s in run.stream_spec(name).shape[1:]) for name in streams}
    return _RunData(
        label=label,
        path=path,
        run=run,
        scalars=scal,
        streams=streams,
        sizes=sizes,  # type: ignore[arg-type]
        checkpoints=run.checkpoint_steps(),
    )


def _labels(runs: Sequence[Run], paths: Sequence[Path]) -> list[str]:
    """Display names: the run's name, else the folder's; repeats get ``#2``, ``#3``."""
    labels: list[str] = []
    for run, path in zip(runs, paths, strict=True):
        name = run.attrs.get("run")
        base = str(name) if name not in (None, "") else path.stem
        label, k = base, 2
        while label in labels:
            label, k = f"{base} #{k}", k + 1
        labels.append(label)
    return labels


def _check_requested(
    runs: Sequence[Run], labels: Sequence[str], steps: Sequence[int] | None, checkpoints: bool
) -> list[int] | None:
    """The steps given with ``--steps`` or ``--checkpoints``, checked against the store before
    anything is derived (so a typo fails in a second, not after a long derivation)."""
    if steps:
        for run, label in zip(runs, labels, strict=True):
            have = (
                set(run.scalars(names=[])["step"].tolist())
                if run.committed().get("scalars")
                else set()
            )
            for step in steps:
                if step in have or any(
                    run.stream_at(n, [step])[0].size for n in run.stream_names()
                ):
                    continue
                span = f"; its scalar steps run {min(have)}..{max(have)}" if have else ""
                raise ReportError(f"step {step} is not in run {label!r} ({str(run.path)!r}{span})")
        return sorted(set(steps))
    if checkpoints:
        found = sorted({s for run in runs for s in run.checkpoint_steps()})
        if not found:
            raise ReportError(
                "--checkpoints: no run marks checkpoint steps (record(..., checkpoint=True)); "
                "give --steps instead"
            )
        return found
    return None


def _select_steps(runs: Sequence[_RunData], every: int | None) -> tuple[list[int], str]:
    """The steps compared without ``--steps``/``--checkpoints``, and how they were chosen."""
    image_steps = sorted({int(s) for rd in runs for t in rd.streams.values() for s in t["step"]})
    if every is not None:
        chosen = [s for s in image_steps if s % every == 0]
        if not chosen:
            raise ReportError(f"--every {every}: no image step is a multiple of {every}")
        return chosen, f"--every {every}"
    marked = sorted({s for rd in runs for s in rd.checkpoints})
    if marked:
        return marked, "recorded checkpoints"
    if not image_steps:
        return [], "no image streams"
    picks = np.unique(np.linspace(0, len(image_steps) - 1, num=min(6, len(image_steps))).round())
    return [image_steps[int(i)] for i in picks], "up to 6 evenly spaced image steps"


# --------------------------------------------------------------------------------------------
# Document: one content model rendered to HTML and to PDF pages


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f"{f:.4g}" if math.isfinite(f) else "—"
    return str(v)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:2px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f2f2f2}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
.cause{border-left:5px solid #d9534f;background:#fdf3f2;padding:.4em 1em;margin:.8em 0}
.cause h4{margin:.3em 0} .ok{border-left:5px solid #5cb85c;background:#f3faf3;padding:.4em 1em}
.th{color:#555;font-size:.85em} figcaption{color:#555;font-size:.85em}
"""


class _Document:
    """Collects headings, text, tables and figures; writes them as HTML and as PDF pages."""

    _LINES_PER_PAGE = 70
    _WRAP = 120

    def __init__(self, pdf: PdfPages) -> None:
        self._html: list[str] = []
        self._pdf = pdf
        self._lines: list[tuple[str, str]] = []  # (style, text) waiting for a PDF text page

    def heading(self, text: str, level: int = 2, anchor: str | None = None) -> None:
        ident = f' id="{html.escape(anchor, quote=True)}"' if anchor else ""
        self._html.append(f"<h{level}{ident}>{html.escape(text)}</h{level}>")
        self._lines += [("blank", ""), (f"h{min(level, 3)}", text)]

    def para(self, text: str, css: str | None = None) -> None:
        cls = f' class="{css}"' if css else ""
        self._html.append(f"<p{cls}>{html.escape(text)}</p>")
        self._lines += [("text", line) for line in textwrap.wrap(text, self._WRAP)] or [
            ("text", "")
        ]

    def pre(self, text: str) -> None:
        self._html.append(f"<pre>{html.escape(text)}</pre>")
        for line in text.splitlines():
            self._lines += [("mono", part) for part in textwrap.wrap(line, self._WRAP) or [""]]

    def cause(self, cause: ProbableCause, run_label: str) -> None:
        th = ", ".join(f"{k} = {v:g}" for k, v in cause.thresholds.items())
        flags = " ".join(f"--threshold {k}=VALUE" for k in cause.thresholds)
        self._html.append(
            '<div class="cause">'
            f"<h4>{html.escape(cause.title)} — {html.escape(run_label)}</h4>"
            f"<p>{html.escape(cause.reading)}</p><ul>"
            + "".join(f"<li>{html.escape(e)}</li>" for e in cause.evidence)
            + "</ul>"
            + (
                f'<p class="th">thresholds: {html.escape(th)} '
                f"(change with {html.escape(flags)})</p>"
                if th
                else ""
            )
            + "</div>"
        )
        self._lines += [("blank", ""), ("h3", f"{cause.title} — {run_label}")]
        self._lines += [("text", ln) for ln in textwrap.wrap(cause.reading, self._WRAP)]
        for e in cause.evidence:
            self._lines += [("mono", ln) for ln in textwrap.wrap("• " + e, self._WRAP)]
        if th:
            self._lines.append(("text", f"thresholds: {th}"))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(c) for c in row] for row in rows]
        self._html.append(
            "<table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header)
            + "</tr>"
            + "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                for row in cells
            )
            + "</table>"
        )
        widths = [max(len(str(h)), *(len(r[j]) for r in cells)) for j, h in enumerate(header)]
        lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
        self._lines += [("mono", ln[: self._WRAP + 40]) for ln in lines]

    def figure(self, fig: Figure, caption: str) -> None:
        """Embed ``fig`` as a PNG in the HTML and put the same raster on a PDF page.

        Rendered once: a vector re-render for the PDF would double the report's main cost.
        """
        from PIL import Image

        from texwatch.plots import figure_png, literal, new_figure

        png = figure_png(fig, dpi=_DPI)
        data = base64.b64encode(png).decode("ascii")
        self._html.append(
            f'<figure><img alt="{html.escape(caption, quote=True)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption>'
            "</figure>"
        )
        self._flush_text()
        with Image.open(io.BytesIO(png)) as img:
            pixels = np.asarray(img.convert("RGB"))
        h, w = pixels.shape[:2]
        page = new_figure(w / _DPI, h / _DPI + 0.3)
        page.figimage(pixels, xo=0, yo=0)
        page.text(0.01, 1.0 - 0.2 / (h / _DPI + 0.3), literal(caption), fontsize=8, va="top")
        self._pdf.savefig(page, dpi=_DPI)
        fig.clear()  # break the artists' reference cycles now, not at some later GC pass
        page.clear()

    def raw(self, markup: str) -> None:
        """Append trusted markup built here (never from a store)."""
        self._html.append(markup)

    def _flush_text(self) -> None:
        from texwatch.plots import literal, new_figure

        sizes = {"h2": 12, "h3": 10, "text": 7.5, "mono": 7, "blank": 7}
        while any(style != "blank" for style, _ in self._lines):
            page, self._lines = (
                self._lines[: self._LINES_PER_PAGE],
                self._lines[self._LINES_PER_PAGE :],
            )
            fig = new_figure(8.27, 11.69)
            for k, (style, text) in enumerate(page):
                fig.text(
                    0.05,
                    0.97 - k * (0.94 / self._LINES_PER_PAGE),
                    literal(text),
                    fontsize=sizes.get(style, 7.5),
                    family="monospace" if style == "mono" else "sans-serif",
                    weight="bold" if style.startswith("h") else "normal",
                    va="top",
                )
            self._pdf.savefig(fig)
        self._lines = []

    def finish(self, title: str) -> str:
        self._flush_text()
        body = "\n".join(self._html)
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
            f"<body>\n{body}\n</body></html>\n"
        )


# --------------------------------------------------------------------------------------------
# Sections


def _weighted(scal: Mapping[str, np.ndarray], term: str) -> np.ndarray:
    weight = scal.get(f"weight/{term}")
    value = scal[f"term/{term}"]
    return value * (weight if weight is not None else 1.0)


def _loss_section(
    doc: _Document,
    rd: _RunData,
    sigma: float,
    sample_ids: Mapping[int, list[int]],
    out: dict[str, Any],
) -> None:
    from texwatch.detectors import SPIKE_RULES
    from texwatch.plots import axes_grid, draw_loss, draw_series, new_figure

    scal = rd.scalars
    steps = scal["step"]
    if not steps.size or "loss" not in scal:
        return
    spike = scal.get("spike", np.zeros(steps.size)) > 0
    warn = scal.get("warn", np.zeros(steps.size)) > 0
    loss, ema = scal["loss"], scal.get("loss_ema", np.full(steps.size, np.nan))
    doc.heading("Loss, EMA and spikes", 3)
    fig = new_figure(13.0, 6.0)
    a0, a1 = axes_grid(fig, 2, 1, title=False)[:, 0]
    a1.sharex(a0)
    draw_loss(
        a0,
        steps,
        loss,
        ema=ema,
        spike_steps=steps[spike].tolist(),
        warn_steps=steps[warn].tolist(),
        title=f"{rd.shown}: loss",
    )
    draw_series(
        a1,
        steps,
        {"z-score": scal.get("loss_zscore", np.full(steps.size, np.nan))},
        title="loss z-score vs the rolling window",
        hlines={f"{sigma:g}σ alarm": sigma},
    )
    doc.figure(fig, f"{rd.label}: loss, EMA, spikes (red) and warnings (orange)")
    spikes: list[dict[str, Any]] = []
    rules = scal.get("spike_rule", np.zeros(steps.size))
    for i in np.flatnonzero(spike):
        code = int(rules[i])
        spikes.append(
            {
                "step": int(steps[i]),
                "loss": float(loss[i]),
                "loss_ema": float(ema[i]),
                "zscore": float(scal.get("loss_zscore", np.full(steps.size, np.nan))[i]),
                "rule": SPIKE_RULES[code - 1] if 0 < code <= len(SPIKE_RULES) else "unknown",
                "sample_ids": sample_ids.get(int(steps[i]), []),
            }
        )
    finite = loss[np.isfinite(loss)]
    summary = {
        "steps": int(steps.size),
        "first_step": int(steps[0]),
        "last_step": int(steps[-1]),
        "last_loss": float(loss[-1]),
        "last_ema": float(ema[-1]),
        "min_loss": float(finite.min()) if finite.size else math.nan,
        "max_loss": float(finite.max()) if finite.size else math.nan,
        "spikes": len(spikes),
        "warnings": int(warn.sum()),
    }
    doc.table(list(summary), [list(summary.values())])
    if spikes:
        doc.table(
            ["step", "loss", "EMA", "z-score", "rule", "sample ids"],
            [
                [
                    s["step"],
                    s["loss"],
                    s["loss_ema"],
                    s["zscore"],
                    s["rule"],
                    ", ".join(str(x) for x in s["sample_ids"][:32]) or "—",
                ]
                for s in spikes[:200]
            ],
        )
    out["loss"] = summary
    out["spikes"] = spikes
    out["warning_steps"] = steps[warn].tolist()


def _terms_section(doc: _Document, rd: _RunData, out: dict[str, Any]) -> None:
    from texwatch.plots import axes_grid, draw_series, new_figure, set_title

    scal = rd.scalars
    terms = sorted(k[len("term/") :] for k in scal if k.startswith("term/"))
    if not terms:
        return
    steps = scal["step"]
    dead = {t: bool(np.any(scal.get(f"dead/{t}", np.zeros(1)) > 0)) for t in terms}
    label = {t: f"{t} (dead)" if dead[t] else t for t in terms}
    doc.heading("Loss terms: unweighted, weighted, weights, shares", 3)
    fig = new_figure(13.0, 7.0)
    axes = axes_grid(fig, 2, 2)
    set_title(fig, f"{rd.shown}: loss terms")
    draw_series(
        axes[0, 0], steps, {label[t]: scal[f"term/{t}"] for t in terms}, title="unweighted value"
    )
    draw_series(
        axes[0, 1],
        steps,
        {label[t]: _weighted(scal, t) for t in terms},
        title="weighted contribution (value × weight)",
    )
    draw_series(
        axes[1, 0],
        steps,
        {label[t]: scal.get(f"weight/{t}", np.ones(steps.size)) for t in terms},
        title="weight",
    )
    draw_series(
        axes[1, 1],
        steps,
        {label[t]: scal.get(f"share/{t}", np.full(steps.size, np.nan)) for t in terms},
        title="share of the weighted total",
    )
    doc.figure(fig, f"{rd.label}: every loss term unweighted and weighted, and its weight")
    rows = {}
    for t in terms:
        w = scal.get(f"weight/{t}", np.ones(steps.size))
        d = scal.get(f"dead/{t}", np.zeros(steps.size)) > 0
        rows[t] = {
            "last_value": float(scal[f"term/{t}"][-1]),
            "last_weight": float(w[-1]),
            "last_weighted": float(_weighted(scal, t)[-1]),
            "last_share": float(scal.get(f"share/{t}", np.full(steps.size, np.nan))[-1]),
            "dead": dead[t],
            "dead_steps": int(d.sum()),
            "first_dead_step": int(steps[int(np.flatnonzero(d)[0])]) if d.any() else None,
        }
    doc.table(
        ["term", "value", "weight", "weighted", "share", "dead", "dead steps", "first dead step"],
        [[t, *r.values()] for t, r in rows.items()],
    )
    out["terms"] = rows


def _health_section(doc: _Document, rd: _RunData, th: Thresholds, out: dict[str, Any]) -> None:
    from texwatch.plots import axes_grid, draw_series, new_figure, set_title

    streams = {n: t for n, t in rd.streams.items() if t["step"].size}
    if not streams:
        return
    doc.heading("Stream health: value range, clip fraction, non-finite", 3)
    fig = new_figure(15.0, 2.8 * len(streams) + 0.5)
    axes = axes_grid(fig, len(streams), 4)
    set_title(fig, f"{rd.shown}: stream health")
    for row, (name, t) in zip(axes, streams.items(), strict=True):
        nan = np.full(t["step"].size, np.nan)
        draw_series(
            row[0],
            t["step"],
            {"mean": t.get("mean", nan), "std": t.get("std", nan)},
            title=f"{name}: mean, std",
        )
        draw_series(
            row[1],
            t["step"],
            {"min": t.get("min", nan), "max": t.get("max", nan)},
            title=f"{name}: min, max",
        )
        draw_series(
            row[2],
            t["step"],
            {"clip fraction": t.get("clip_fraction", nan)},
            title=f"{name}: share of |x| > clip range",
            hlines={"threshold": th.clip_fraction},
        )
        draw_series(
            row[3],
            t["step"],
            {"non-finite": t.get("nonfinite", nan)},
            title=f"{name}: non-finite values",
        )
    doc.figure(fig, f"{rd.label}: stream value health over time")
    health = {}
    for name, t in streams.items():
        last = {k: float(t[k][-1]) for k in HEALTH_KEYS if k in t}
        clip = t.get("clip_fraction")
        last["max_clip_fraction"] = (
            float(np.nanmax(clip)) if clip is not None and np.isfinite(clip).any() else math.nan
        )
        last["nonfinite_total"] = float(np.nansum(t.get("nonfinite", np.zeros(1))))
        health[name] = {"last_step": int(t["step"][-1]), **last}
    keys = ["last_step", *HEALTH_KEYS, "max_clip_fraction", "nonfinite_total"]
    doc.table(["stream", *keys], [[n, *(h.get(k) for k in keys)] for n, h in health.items()])
    out["health"] = health


def _texture_section(doc: _Document, rd: _RunData, th: Thresholds) -> None:
    from texwatch.plots import axes_grid, draw_series, new_figure, set_title

    streams = {n: t for n, t in rd.streams.items() if t["step"].size}
    if not streams:
        return
    doc.heading("Texture metrics over time", 3)
    fig = new_figure(15.0, 2.8 * len(streams) + 0.5)
    axes = axes_grid(fig, len(streams), 4)
    set_title(fig, f"{rd.shown}: texture metrics")
    for row, (name, t) in zip(axes, streams.items(), strict=True):
        nan = np.full(t["step"].size, np.nan)
        s = t["step"]
        draw_series(
            row[0],
            s,
            {"f*": t.get("fundamental_radius_bin", nan), "ref": t.get("ref_radius_bin", nan)},
            title=f"{name}: f* (FFT bins)",
            marker=".",
        )
        periodic = _periodic_rows(t)
        draw_series(
            row[1],
            s,
            {"tile scale": np.where(periodic, t.get("tile_scale", nan), np.nan)},
            title=f"{name}: tile scale (period / reference's)",
            hlines={
                f"×{th.harmonic_scale:g}: tiles doubled": th.harmonic_scale,
                f"×{1 / th.harmonic_scale:.3g}: tiles halved": 1 / th.harmonic_scale,
            },
            marker=".",
        )
        draw_series(
            row[2],
            s,
            {
                "axis ratio": np.where(periodic, t.get("axis_ratio_at_f", nan), np.nan),
                "band score": np.where(periodic, t.get("band_score", nan), np.nan),
                "checkerboard": t.get("checkerboard_energy", nan),
            },
            title=f"{name}: banding and checkerboard",
            hlines={"band score threshold": th.band_score},
            marker=".",
        )
        draw_series(
            row[3],
            s,
            {"alias score": t.get("alias_score", nan)},
            title=f"{name}: alias score (power share in peaks the ref lacks)",
            hlines={"threshold": th.alias_share},
            marker=".",
        )
    doc.figure(
        fig,
        f"{rd.label}: texture metrics of every stream over time (tile scale, axis ratio and "
        "band score at the steps with a periodic texture only)",
    )


def _series(rd: _RunData) -> dict[str, Any]:
    scal = {k: v for k, v in rd.scalars.items()}
    for t in [k[len("term/") :] for k in rd.scalars if k.startswith("term/")]:
        scal[f"weighted/{t}"] = _weighted(rd.scalars, t)
    return {"scalars": scal, "streams": rd.streams}


def _checkpoint_rows(
    runs: Sequence[_RunData], step: int, val: bool
) -> list[tuple[_RunData, str, int]]:
    rows = []
    for rd in runs:
        for name, t in rd.streams.items():
            if name.startswith(_VAL_PREFIX) != val:
                continue
            i = _row_at(t, step)
            if i is not None:
                rows.append((rd, name, i))
    return rows


def _checkpoint_section(
    doc: _Document, runs: Sequence[_RunData], step: int, max_images: int
) -> dict[str, Any]:
    from texwatch.plots import (
        axes_grid,
        draw_acf,
        draw_image_grid,
        draw_log_spectrum,
        draw_radial_profile,
        new_figure,
        spectrum_panel,
    )

    doc.heading(f"Step {step}", 3, anchor=f"step-{step}")
    columns = []
    rows = _checkpoint_rows(runs, step, val=False) + _checkpoint_rows(runs, step, val=True)
    for rd, name, i in rows:
        t = rd.streams[name]
        columns.append(
            {
                "run": rd.label,
                "stream": name,
                "row_step": int(t["step"][i]),
                "items": int(t["items"][i]),
                **{k: float(t[k][i]) for k in (*TEXTURE_KEYS, *HEALTH_KEYS) if k in t},
            }
        )
        value = columns[-1].get("fundamental_radius_bin")
        f_star = float(value) if isinstance(value, (int, float)) else math.nan
        columns[-1][FFT_PERIOD_KEY] = (
            _fft_period(f_star, rd.sizes[name]) if _finite(f_star) else math.nan
        )
    pictured = [r for r in rows if not r[1].startswith(_VAL_PREFIX)]
    if pictured:
        fig = new_figure(16.0, 3.6 * len(pictured) + 0.4)
        axes = axes_grid(fig, len(pictured), 4, title=False)
        for ax, (rd, name, i) in zip(axes, pictured, strict=True):
            t = rd.streams[name]
            row_step = int(t["step"][i])
            _, data = rd.run.stream_at(name, [row_step])
            ref = _value(t, "ref_radius_bin", i)
            panel = spectrum_panel(data, ref_radius=ref if math.isfinite(ref) else None)
            where = f"{rd.shown} · {name} @ {row_step}"
            draw_image_grid(
                ax[0], data, title=f"{where} ({data.shape[0]} items)", max_images=max_images
            )
            draw_log_spectrum(ax[1], panel, title=f"{name}: log spectrum")
            draw_radial_profile(ax[2], panel, title=f"{name}: radial profile")
            draw_acf(ax[3], panel, title=f"{name}: ACF")
        doc.figure(
            fig,
            f"step {step}: samples, spectra (f* red, 2f* orange, f*/2 violet, "
            "reference black) and ACF, runs side by side",
        )
    if columns:
        at = TEXTURE_KEYS.index("acf_first_peak_radius_bin") + 1
        order = (*TEXTURE_KEYS[:at], FFT_PERIOD_KEY, *TEXTURE_KEYS[at:], *HEALTH_KEYS)
        keys = [k for k in order if any(k in c for c in columns)]
        doc.table(
            ["metric", *(f"{c['run']} · {c['stream']} @ {c['row_step']}" for c in columns)],
            [[k, *(c.get(k) for c in columns)] for k in ["items", *keys]],
        )
    else:
        doc.para("No image rows at or before this step.")
    return {"step": step, "columns": columns}


def _summary_section(doc: _Document, runs: Sequence[_RunData], steps: Sequence[int]) -> None:
    from texwatch.plots import axes_grid, new_figure

    if len(steps) < 2:
        return
    keys = (
        "fundamental_radius_bin",
        "acf_first_peak_radius_bin",
        "tile_scale",
        "band_score",
        "axis_ratio_at_f",
        "alias_score",
        "checkerboard_energy",
        "clip_fraction",
    )
    fig = new_figure(16.0, 7.8)
    axes = axes_grid(fig, 2, 4)
    colours = [f"C{k % 10}" for k in range(len(runs))]
    styles = ("-", "--", ":", "-.")
    for ax, key in zip(axes.ravel(), keys, strict=True):
        for colour, rd in zip(colours, runs, strict=True):
            names = [n for n, t in rd.streams.items() if n != "target" and key in t]
            for k, name in enumerate(names):
                t = rd.streams[name]
                idx = [_row_at(t, s) for s in steps]
                values = [t[key][i] if i is not None else np.nan for i in idx]
                ax.plot(
                    steps,
                    values,
                    color=colour,
                    ls=styles[k % len(styles)],
                    marker="o",
                    ms=3,
                    lw=1.1,
                    label=f"{rd.shown} · {name}",
                )
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=min(len(labels), 4),
        fontsize=7,
        bbox_to_anchor=(0.5, 1 - 0.05 / 7.8),
        frameon=False,
    )
    doc.figure(fig, "metrics at each selected step, every run and stream")


def _validation_section(
    doc: _Document, runs: Sequence[_RunData], steps: Sequence[int], max_images: int
) -> list[dict[str, Any]]:
    from texwatch._images import to_display
    from texwatch.plots import axes_grid, new_figure, set_title

    rows = [
        (rd, n, t)
        for rd in runs
        for n, t in rd.streams.items()
        if n.startswith(_VAL_PREFIX) and t["step"].size
    ]
    if not rows:
        return []
    doc.heading("Fixed validation images over time", 2, anchor="validation")
    out = []
    for rd, name, t in rows:
        hit = sorted({int(t["step"][i]) for s in steps if (i := _row_at(t, s)) is not None})
        if len(hit) < 2:
            pick = np.unique(
                np.linspace(0, t["step"].size - 1, min(max_images, t["step"].size)).round()
            ).astype(int)
            hit = [int(t["step"][i]) for i in pick]
        hit = hit[:max_images]
        out.append({"run": rd.label, "stream": name, "steps": hit})
        _, data = rd.run.stream_at(name, hit)
        got_steps, _ = rd.run.stream_at(name, hit)
        firsts = [int(np.flatnonzero(got_steps == s)[0]) for s in hit]
        fig = new_figure(2.2 * len(hit) + 0.3, 2.6)
        axes = axes_grid(fig, 1, len(hit)).ravel()
        for ax, s, j in zip(axes, hit, firsts, strict=True):
            ax.imshow(to_display(data[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"step {s}", fontsize=8)
            ax.set_axis_off()
        set_title(fig, f"{rd.shown} · {name}", fontsize=10)
        doc.figure(fig, f"{rd.label} · {name}: the same validation input at each step")
    return out


# --------------------------------------------------------------------------------------------
# The report


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    steps: Sequence[int] | None = None,
    checkpoints: bool = False,
    every: int | None = None,
    thresholds: Thresholds | None = None,
    settings: Any = None,
    max_images: int = 8,
    quiet: bool = True,
) -> dict[str, Any]:
    """Write ``index.html``, ``report.pdf`` and ``report.json`` for ``paths`` into ``out_dir``.

    Args:
        paths: run stores (``runs/x.zarr``).
        out_dir: the output folder (created).
        steps: compare exactly these steps (each must be in every run).
        checkpoints: compare the steps recorded with ``checkpoint=True``.
        every: compare the image steps that are multiples of ``every``.
        thresholds: where the probable causes fire.
        settings: :class:`texwatch.derive.DeriveSettings` for rows the daemon has not derived.
        max_images: images per sample grid and validation strip.
        quiet: no progress bar.

    Returns:
        The report's JSON document (also written to ``report.json``).

    Raises:
        ReportError: a missing or unreadable store, an unknown schema version, a run with no
            rows, a step that is not in a run, or an output path that is a file.
    """
    from matplotlib.backends.backend_pdf import PdfPages

    from texwatch._progress import progress
    from texwatch.derive import DeriveSettings

    th = thresholds or Thresholds()
    settings = settings or DeriveSettings()
    if every is not None and every <= 0:
        raise ReportError(f"--every must be a positive number of steps, got {every}")
    if max_images <= 0:
        raise ReportError(f"--max-images must be positive, got {max_images}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ReportError(f"output {str(out)!r} is a file, expected a folder")
    if not paths:
        raise ReportError("no run store given")
    store_paths = [Path(p) for p in paths]
    opened = [_open(p) for p in store_paths]
    labels = _labels(opened, store_paths)
    requested = _check_requested(opened, labels, steps, checkpoints)
    bar = progress(total=2 * len(opened) + 1, desc="report", quiet=quiet)
    try:
        runs = []
        for path, run_, label in zip(store_paths, opened, labels, strict=True):
            bar.set_postfix_str(f"deriving {label}"[:40])
            runs.append(_load(path, run_, label, settings))
            bar.update()
        if requested is not None:
            chosen, how = requested, "--steps" if steps else "--checkpoints"
        else:
            chosen, how = _select_steps(runs, every)
        bar.total = 2 * len(runs) + len(chosen) + 1
        bar.refresh()
        out.mkdir(parents=True, exist_ok=True)
        doc_json: dict[str, Any] = {
            "format": "texwatch-report",
            "version": 1,
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "selection": how,
            "steps": chosen,
            "thresholds": dataclasses.asdict(th),
            "derive_settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "ref"}
            | {"ref": settings.ref is not None},
            "runs": [],
            "checkpoints": [],
            "validation": [],
        }
        with PdfPages(out / "report.pdf", metadata={"Title": "texwatch report"}) as pdf:
            doc = _Document(pdf)
            doc.heading("texwatch report", 1)
            doc.para(
                f"{len(runs)} run(s); steps compared: "
                f"{', '.join(map(str, chosen)) or 'none'} ({how}); generated "
                f"{doc_json['generated']}."
            )
            sections = []
            for rd in runs:
                ids = {
                    int(s): [int(x) for x in rd.run.batch(int(s)).get("sample_id", []) if x >= 0]
                    for s in rd.scalars["step"][rd.scalars.get("spike", np.zeros(0)) > 0]
                }
                causes = probable_causes(
                    rd.scalars, rd.streams, chosen, sizes=rd.sizes, sample_ids=ids, thresholds=th
                )
                sections.append((rd, ids, causes))
            doc.heading("Probable causes", 2, anchor="causes")
            for rd, _, causes in sections:
                if not causes:
                    doc.raw(f'<p class="ok">{html.escape(rd.label)}: no probable cause fired.</p>')
                for c in causes:
                    doc.cause(c, rd.label)
            for k, (rd, ids, causes) in enumerate(sections):
                bar.set_postfix_str(f"figures {rd.label}"[:40])
                run_json: dict[str, Any] = {
                    "label": rd.label,
                    "name": rd.run.attrs.get("run"),
                    "path": str(rd.path),
                    "schema_version": rd.run.schema_version,
                    "committed": rd.run.committed(),
                    "checkpoint_steps": rd.checkpoints,
                    "config": rd.run.config,
                    "causes": [dataclasses.asdict(c) for c in causes],
                }
                doc.heading(f"Run: {rd.label}", 2, anchor=f"run-{k}")
                doc.table(
                    ["store", "schema", "scalar rows", "streams", "checkpoints"],
                    [
                        [
                            str(rd.path),
                            rd.run.schema_version,
                            int(rd.scalars["step"].size),
                            ", ".join(
                                f"{n} ({int(t['step'].size)} steps)" for n, t in rd.streams.items()
                            )
                            or "—",
                            ", ".join(map(str, rd.checkpoints)) or "—",
                        ]
                    ],
                )
                if rd.run.config:
                    doc.pre(json.dumps(rd.run.config, indent=2, sort_keys=True, default=str))
                _loss_section(doc, rd, settings.spike_sigma, ids, run_json)
                _terms_section(doc, rd, run_json)
                _health_section(doc, rd, th, run_json)
                _texture_section(doc, rd, th)
                run_json["series"] = _series(rd)
                doc_json["runs"].append(run_json)
                bar.update()
            if chosen:
                doc.heading("Checkpoints, runs side by side", 2, anchor="checkpoints")
                _summary_section(doc, runs, chosen)
            for step in chosen:
                bar.set_postfix_str(f"step {step}")
                doc_json["checkpoints"].append(_checkpoint_section(doc, runs, step, max_images))
                bar.update()
            doc_json["validation"] = _validation_section(doc, runs, chosen, max_images)
            doc.heading("Settings", 2, anchor="settings")
            doc.table(["threshold", "value"], list(dataclasses.asdict(th).items()))
            doc.table(["derive setting", "value"], list(doc_json["derive_settings"].items()))
            page = doc.finish("texwatch report")
        (out / "index.html").write_text(page, encoding="utf-8")
        (out / "report.json").write_text(
            json.dumps(jsonable(doc_json), indent=1, allow_nan=False, default=str),
            encoding="utf-8",
        )
        bar.update()
    finally:
        bar.close()
    return doc_json


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand to the ``texwatch`` command."""
    from texwatch.derive import add_derive_arguments

    names = ", ".join(f.name for f in dataclasses.fields(Thresholds))
    p = subparsers.add_parser(
        "report",
        help="HTML/PDF/JSON report across runs and checkpoints, with probable causes",
        description="Report on one or more run stores: loss, spikes, loss terms, stream health, "
        "texture metrics per checkpoint side by side, and probable causes.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN.zarr", help="run stores to report on")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    pick = p.add_mutually_exclusive_group()
    pick.add_argument("--steps", metavar="S1,S2,...", help="compare these steps (comma-separated)")
    pick.add_argument(
        "--checkpoints", action="store_true", help="compare the steps recorded with checkpoint=True"
    )
    pick.add_argument(
        "--every", type=int, metavar="N", help="compare the image steps that are multiples of N"
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"change where a probable cause fires; NAME in: {names}",
    )
    add_derive_arguments(p)  # the daemon's own flags: they apply to rows it has not derived
    p.add_argument("--max-images", type=int, default=8, help="images per sample grid (8)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parse_steps(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            step = int(part)
        except ValueError:
            raise ReportError(f"--steps: {part!r} is not an integer step") from None
        if step < 0:
            raise ReportError(f"--steps: {step} is negative")
        out.append(step)
    if not out:
        raise ReportError(f"--steps {text!r}: no step given")
    return out


def run(args: argparse.Namespace) -> int:
    """Run ``texwatch report``: 0 on success, 2 with one line on stderr for a bad input."""
    try:
        from texwatch.derive import settings_from_args

        thresholds = Thresholds.from_pairs(args.threshold)
        steps = _parse_steps(args.steps) if args.steps is not None else None
        try:
            settings = settings_from_args(args)
        except ValueError as err:
            raise ReportError(str(err)) from err
        build_report(
            args.runs,
            args.out,
            steps=steps,
            checkpoints=args.checkpoints,
            every=args.every,
            thresholds=thresholds,
            settings=settings,
            max_images=args.max_images,
            quiet=args.quiet,
        )
    except ReportError as err:
        print(f"{_PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0
