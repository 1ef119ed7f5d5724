"""Probable causes: texwatch's readings of a run's numbers, and the thresholds that decide them.

Shared by ``texwatch report`` (runs over time) and ``texwatch diagnose`` (single images), which
both import this module and not each other. Each :class:`ProbableCause` names what probably went
wrong, the evidence that fired it and the :class:`Thresholds` fields a user can change.

The texture readings judge per-step tables of derived image metrics at chosen steps
(:func:`stream_causes`); the loss readings (spikes, dead and non-finite terms) read a run's
per-step scalar table, which :class:`ScalarEvidence` takes in step-ordered chunks so a run of
millions of steps is read in bounded memory. :func:`probable_causes` does both on whole tables.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from texwatch import alarms
from texwatch._steptable import column_value, periodic_rows, row_at

__all__ = [
    "ProbableCause",
    "ReportError",
    "ScalarEvidence",
    "SpikeReading",
    "Thresholds",
    "fft_period",
    "probable_causes",
    "stream_causes",
]

_MAX_LISTED = 12  # evidence lines listed per cause before "... and N more"
_LR_LOOKBACK = 100  # steps before a spike whose median lr is the baseline of the lr reading
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
        reading: what it usually means and what to check.
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


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: Any) -> bool:
    return math.isfinite(_float(v))


def _listed(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LISTED:
        return lines
    return [*lines[:_MAX_LISTED], f"... and {len(lines) - _MAX_LISTED} more"]


# --------------------------------------------------------------------------------------------
# Texture and stream-health readings: per-step tables of derived image metrics


def fft_period(f_star: float, size: tuple[int, int]) -> float:
    """The period in px that radius ``f_star`` stands for on an (H, W) image: max(H, W) / f*.

    :mod:`texwatch.spectral` measures radii as ``N·√((kx/W)² + (ky/H)²)`` with ``N = max(H, W)``,
    so a period of T px sits at ``N / T`` at every angle.
    """
    return max(size) / f_star if f_star > 0 else math.nan


def _texture_rows(
    streams: Mapping[str, Mapping[str, np.ndarray]], steps: Sequence[int]
) -> Iterator[tuple[str, int, int, Mapping[str, np.ndarray]]]:
    """(stream, requested step, row index, table) for every judged stream and selected step."""
    for name, table in streams.items():
        if name == "target" or table["step"].size == 0:
            continue
        seen: set[int] = set()
        for step in steps:
            i = row_at(table, step)
            if i is not None and i not in seen:
                seen.add(i)
                yield name, step, i, table


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
        "reference's: the model learned tiles ×2 or ×½. Usual "
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
        "another texture scale. Usual causes: batch-norm imbalance, periodicity in the "
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

        f = column_value(table, "fundamental_radius_bin", i)
        cb = column_value(table, "checkerboard_energy", i)
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
        alias = column_value(table, "alias_score", i)
        if alarms.aliasing(alias, th.alias_share):
            add(
                aliasing,
                f"alias_score = {alias:.3g} (≥ {th.alias_share:g}): {alias:.0%} of the power "
                "sits in strong peaks the reference lacks",
                "alias_score",
                alias,
            )
        if nyquist or not periodic_rows(table)[i]:
            # no periodic texture (or f* is the checkerboard's): periods, f* and its ring
            # mean nothing, and tile_scale / band_score read noise
            continue
        scale = column_value(table, "tile_scale", i)
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
        acf = column_value(table, "acf_first_peak_radius_bin", i)
        fft = fft_period(f, size) if _finite(f) else math.nan
        if _finite(acf) and _finite(fft) and acf > 0 and abs(acf / fft - 1) > th.acf_fft_mismatch:
            add(
                mixup,
                f"ACF period {acf:.3g} px vs FFT period {fft:.3g} px (ratio {acf / fft:.2f})",
                "acf_over_fft_period",
                acf / fft,
            )
        axis = column_value(table, "axis_ratio_at_f", i)
        if _finite(axis) and axis > th.axis_ratio:
            add(
                bands,
                f"axis_ratio_at_f = {axis:.3g} > {th.axis_ratio:g}: the ring at f gathers on "
                "the FFT axes",
                "axis_ratio_at_f",
                axis,
            )
        band = column_value(table, "band_score", i)
        # a doubled period over the whole image reads doubled in every strip: that is the
        # harmonic lock above, not a band
        if lock != "half" and alarms.banding(band, th.band_score):
            run = column_value(table, "band_max_run", i)
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
        "model produces values a DDIM-style clamp would cut (the colour noise of unclipped x0): "
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


def stream_causes(
    streams: Mapping[str, Mapping[str, np.ndarray]],
    steps: Sequence[int],
    *,
    sizes: Mapping[str, tuple[int, int]],
    thresholds: Thresholds | None = None,
) -> list[ProbableCause]:
    """The texture readings at ``steps`` and the value-range reading over every row.

    Args:
        streams: per stream, a per-step table of its derived columns
            (:func:`texwatch.report.step_table`). The period-based readings (harmonic lock,
            ACF/FFT mix-up, banding) are judged only at rows whose ``periodic`` is > 0; the
            checkerboard and aliasing readings at every judged row; ``target`` is not judged.
        steps: the steps whose texture metrics are judged (each stream's latest row at or
            before each).
        sizes: (H, W) of each stream, to turn f* into a period and for the white-noise
            Nyquist share the checkerboard is compared with.
        thresholds: where each reading fires (defaults: :class:`Thresholds`).
    """
    th = thresholds or Thresholds()
    causes = _texture_causes(streams, sizes, steps, th)
    for c in causes:
        c.evidence = _listed(c.evidence)
    return causes + _health_cause(streams, th)


# --------------------------------------------------------------------------------------------
# Loss readings: a run's per-step scalar table, read in step-ordered chunks

_EVIDENCE_COLUMNS = ("loss", "loss_ema", "loss_zscore", "spike", "spike_rule", "lr")


@dataclass
class SpikeReading:
    """One loss spike and the rows around it that the spike readings look at.

    Attributes:
        step: the spiking step.
        loss: the loss at it.
        loss_ema: the EMA at it.
        ema_before: the EMA at the row before (NaN for the first row).
        zscore: the loss z-score at it.
        rule: the spike detector's rule that fired (``texwatch.detectors.SPIKE_RULES``).
        after_rows: rows read after it (``spike_recovery_steps``, fewer at the run's end).
        median_after: median finite loss over those rows (NaN when none is finite).
        lr: the learning rate at it (NaN without an ``lr`` column).
        lr_before: median finite lr over the 100 rows before it (NaN when none).
    """

    step: int
    loss: float
    loss_ema: float
    ema_before: float
    zscore: float
    rule: str
    after_rows: int
    median_after: float
    lr: float
    lr_before: float


@dataclass
class TermFlags:
    """How often one loss term is flagged (dead, or non-finite) and the first step it is."""

    rows: int = 0
    first_step: int | None = None


class _Counts:
    """A multiset of floats as sorted distinct values and their counts, for an exact median.

    A term's weight takes few values over a run (a constant, a schedule's steps), so its weights
    at a million dead rows take a few bytes, not eight a row.
    """

    def __init__(self) -> None:
        self._values = np.zeros(0)
        self._counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        new, counts = np.unique(values, return_counts=True)
        merged = np.concatenate([self._values, new])
        self._values, at = np.unique(merged, return_inverse=True)
        self._counts = np.bincount(
            at, weights=np.concatenate([self._counts, counts]), minlength=self._values.size
        ).astype(np.int64)

    def median(self) -> float:
        """The median (the mean of the two middle values for an even count); NaN when empty."""
        total = int(self._counts.sum())
        if total == 0:
            return math.nan
        ends = np.cumsum(self._counts)  # ends[k]: values before the end of the k-th distinct one
        lo = self._values[int(np.searchsorted(ends, (total - 1) // 2, side="right"))]
        hi = self._values[int(np.searchsorted(ends, total // 2, side="right"))]
        return float((lo + hi) / 2)


@dataclass
class _DeadTerm(TermFlags):
    finite: bool = False  # some value at a dead row is finite
    all_zero: bool = True  # every finite value at a dead row is 0
    first_value: float = math.nan  # the first finite value at a dead row
    finite_weight: bool = False
    weights: _Counts = field(default_factory=_Counts)  # non-NaN weights at dead rows


class ScalarEvidence:
    """The loss readings' evidence, gathered from a per-step scalar table in step order.

    Feed the table in consecutive chunks ordered by step (one chunk, or many for a run too long
    to hold), call :meth:`finish`, then :meth:`causes`. Between chunks it keeps the last
    ``100 + spike_recovery_steps`` rows of the columns the spike readings look around (loss,
    EMA, z-score, spike flags, lr), the spikes read so far and a few numbers per loss term, so
    its memory does not grow with the run.

    Example:
        >>> ev = ScalarEvidence()
        >>> for chunk in chunks:  # doctest: +SKIP
        ...     ev.update(chunk)
        >>> causes = ev.finish().causes(sample_ids={})  # doctest: +SKIP

    Args:
        thresholds: where the readings fire (``spike_recovery_steps`` also sets how many rows
            after a spike are read).
    """

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self._th = thresholds or Thresholds()
        self._recovery = max(1, int(self._th.spike_recovery_steps))
        self._window = _LR_LOOKBACK + self._recovery
        self._carry: dict[str, np.ndarray] = {}
        self._carry_start = 0  # row index (in step order) of the carry's first row
        self._next = 0  # first row whose spike is not read yet
        self._finished = False
        self.rows = 0
        """Rows read so far."""
        self.spikes: list[SpikeReading] = []
        """Every spike read so far, by step (complete after :meth:`finish`)."""
        self.dead: dict[str, _DeadTerm] = {}
        """Per loss term with a ``dead/<term>`` column: its dead rows and first dead step."""
        self.nonfinite: dict[str, TermFlags] = {}
        """Per loss term with a ``term_nonfinite/<term>`` column: its flagged rows."""

    def update(self, chunk: Mapping[str, np.ndarray]) -> None:
        """Read the next rows: ``step`` and any of ``loss``, ``loss_ema``, ``loss_zscore``,
        ``spike``, ``spike_rule``, ``lr``, ``dead/<term>``, ``term_nonfinite/<term>``,
        ``term/<term>``, ``weight/<term>`` (a missing column reads NaN, a missing flag 0)."""
        if self._finished:
            raise RuntimeError("ScalarEvidence.update() after finish()")
        steps = np.asarray(chunk["step"], dtype=np.int64)
        n = steps.size
        if n == 0:
            return
        self._read_terms(chunk, steps)
        cols: dict[str, np.ndarray] = {"step": steps}
        for name in _EVIDENCE_COLUMNS:
            flag = name in ("spike", "spike_rule")
            col = chunk.get(name)
            cols[name] = (
                np.asarray(col, dtype=np.float64)
                if col is not None
                else np.full(n, 0.0 if flag else math.nan)
            )
        if self._carry:
            cols = {k: np.concatenate([self._carry[k], v]) for k, v in cols.items()}
        self.rows += n
        self._read_spikes(cols, final=False)
        dropped = max(0, cols["step"].size - self._window)
        self._carry = {k: v[dropped:].copy() for k, v in cols.items()}
        self._carry_start += dropped

    def finish(self) -> ScalarEvidence:
        """Read the spikes of the last rows (fewer than ``spike_recovery_steps`` after them)."""
        if not self._finished and self._carry:
            self._read_spikes(self._carry, final=True)
        self._finished = True
        self._carry = {}
        return self

    def causes(self, sample_ids: Mapping[int, list[int]] | None = None) -> list[ProbableCause]:
        """The loss-spike, dead-term and non-finite-term causes that fired (after :meth:`finish`).

        Args:
            sample_ids: sample ids of each spiking step's batch, by step.
        """
        self.finish()
        return [
            *self._spike_causes(sample_ids or {}),
            *self._dead_term_cause(),
            *self._nonfinite_term_cause(),
        ]

    # reading

    def _read_terms(self, chunk: Mapping[str, np.ndarray], steps: np.ndarray) -> None:
        for key in chunk:
            if key.startswith("dead/"):
                term = key[len("dead/") :]
                dead = self.dead.setdefault(term, _DeadTerm())
                flagged = np.asarray(chunk[key], dtype=np.float64) > 0
                if not flagged.any():
                    continue
                self._count(dead, flagged, steps)
                values = _column(chunk, f"term/{term}", steps.size, math.nan)[flagged]
                finite = values[np.isfinite(values)]
                if finite.size:
                    if not dead.finite:
                        dead.first_value, dead.finite = float(finite[0]), True
                    dead.all_zero = dead.all_zero and bool(np.all(finite == 0))
                weights = _column(chunk, f"weight/{term}", steps.size, 1.0)[flagged]
                dead.finite_weight = dead.finite_weight or bool(np.isfinite(weights).any())
                dead.weights.add(weights[~np.isnan(weights)])
            elif key.startswith("term_nonfinite/"):
                term = key[len("term_nonfinite/") :]
                broken = self.nonfinite.setdefault(term, TermFlags())
                flagged = np.asarray(chunk[key], dtype=np.float64) > 0
                if flagged.any():
                    self._count(broken, flagged, steps)

    @staticmethod
    def _count(flags: TermFlags, flagged: np.ndarray, steps: np.ndarray) -> None:
        flags.rows += int(flagged.sum())
        if flags.first_step is None:
            flags.first_step = int(steps[int(np.argmax(flagged))])

    def _read_spikes(self, cols: Mapping[str, np.ndarray], *, final: bool) -> None:
        """Read each spike of ``cols`` not read yet whose rows after it are all there."""
        from texwatch.detectors import SPIKE_RULES

        n = cols["step"].size
        loss, ema, lr = cols["loss"], cols["loss_ema"], cols["lr"]
        for p in np.flatnonzero(cols["spike"] > 0):
            row = self._carry_start + int(p)
            if row < self._next:
                continue
            if not final and p + self._recovery >= n:
                break  # its rows after are in the next chunk
            code = _float(cols["spike_rule"][p])
            code = int(code) if math.isfinite(code) else 0
            after = loss[p + 1 : p + 1 + self._recovery]
            finite_after = after[np.isfinite(after)]
            window = lr[max(0, p - _LR_LOOKBACK) : p]
            window = window[np.isfinite(window)]
            self.spikes.append(
                SpikeReading(
                    step=int(cols["step"][p]),
                    loss=float(loss[p]),
                    loss_ema=float(ema[p]),
                    ema_before=float(ema[p - 1]) if p > 0 else math.nan,
                    zscore=float(cols["loss_zscore"][p]),
                    rule=SPIKE_RULES[code - 1] if 0 < code <= len(SPIKE_RULES) else "unknown",
                    after_rows=int(after.size),
                    median_after=float(np.median(finite_after)) if finite_after.size else math.nan,
                    lr=float(lr[p]),
                    lr_before=float(np.median(window)) if window.size else math.nan,
                )
            )
            self._next = row + 1

    # the causes

    def _spike_causes(self, sample_ids: Mapping[int, list[int]]) -> list[ProbableCause]:
        th = self._th
        bad = ProbableCause(
            "loss_spike_bad_batch",
            "Loss spikes that recover at once: a bad batch",
            "The loss jumps and is back at its EMA within a few steps: one batch was unusual "
            "(corrupt image, wrong mask, extreme timestep). The sample ids of each spiking batch "
            "are listed; a sample that recurs is the first to inspect.",
            thresholds={
                "spike_recovery_steps": th.spike_recovery_steps,
                "ema_break_ratio": th.ema_break_ratio,
            },
        )
        lr_cause = ProbableCause(
            "loss_spike_learning_rate",
            "Loss spikes after the learning rate rose",
            "The learning rate at the spike is well above its level just before (warm-up end, "
            "schedule restart, a wrong multiplier): the step size overshoots. Lower "
            "the peak lr or lengthen the warm-up.",
            thresholds={"lr_jump": th.lr_jump},
        )
        ema_break = ProbableCause(
            "loss_spike_ema_break",
            "EMA break: the loss jumped to a new level and stayed",
            "After the spike the loss does not come back to its EMA: training broke off its "
            "trajectory (divergence, a corrupted optimizer or EMA state after a resume, a changed "
            "data distribution). Compare the checkpoints before and after.",
            thresholds={
                "ema_break_ratio": th.ema_break_ratio,
                "spike_recovery_steps": th.spike_recovery_steps,
            },
        )
        counts: dict[int, int] = {}
        for s in self.spikes:
            ids = list(sample_ids.get(s.step, []))
            for x in ids:
                counts[x] = counts.get(x, 0) + 1
            pre, level = s.ema_before, s.median_after
            record: dict[str, Any] = {
                "step": s.step,
                "loss": s.loss,
                "ema_before": pre,
                "zscore": s.zscore,
                "rule": s.rule,
                "sample_ids": ids,
                "median_after": level,
            }
            text = (
                f"step {s.step}: loss {s.loss:.4g} (EMA before {pre:.4g}, z {s.zscore:.3g}, "
                f"rule {s.rule})"
            )
            if (
                _finite(s.lr_before)
                and s.lr_before > 0
                and _finite(s.lr)
                and s.lr > th.lr_jump * s.lr_before
            ):
                record["lr"], record["lr_before"] = s.lr, s.lr_before
                lr_cause.evidence.append(f"{text}; lr {s.lr:.3g} vs {s.lr_before:.3g} before")
                lr_cause.values.append(record)
            elif (s.after_rows and not _finite(level)) or (
                _finite(level) and _finite(pre) and level > th.ema_break_ratio * pre
            ):
                ema_break.evidence.append(
                    f"{text}; median loss over the next {s.after_rows} steps {level:.4g} "
                    f"(> {th.ema_break_ratio:g} × EMA)"
                )
                ema_break.values.append(record)
            else:
                shown = ", ".join(str(x) for x in ids[:16]) + (" ..." if len(ids) > 16 else "")
                bad.evidence.append(f"{text}; samples [{shown}]" if ids else text)
                bad.values.append(record)
        recurring = sorted((x for x, c in counts.items() if c > 1), key=lambda x: -counts[x])
        if recurring and bad.evidence:
            bad.evidence.append(
                "samples in more than one spiking batch: "
                + ", ".join(f"{x} (×{counts[x]})" for x in recurring[:16])
            )
        for c in (bad, lr_cause, ema_break):
            c.evidence = _listed(c.evidence)
        return [c for c in (bad, lr_cause, ema_break) if c.evidence]

    def _dead_term_cause(self) -> list[ProbableCause]:
        cause = ProbableCause(
            "dead_term",
            "Dead loss term: weighted in, but contributes nothing",
            "The term's weight is > 0 while its value is exactly 0, constant, or missing: it is "
            "defined but never computed (an edge loss initialised to 0 and never assigned, "
            "say). Check that the code path computing it actually runs.",
        )
        for term in sorted(self.dead):
            dead = self.dead[term]
            if not dead.rows:
                continue
            if not dead.finite:
                what = "its value is missing"
            elif dead.all_zero:
                what = "its value is always 0"
            else:
                what = f"its value stays at {dead.first_value:.4g}"
            w = dead.weights.median() if dead.finite_weight else math.nan
            cause.evidence.append(
                f"term {term!r}: dead at {dead.rows} of {self.rows} steps (first at step "
                f"{dead.first_step}); weight {w:.3g} while {what}"
            )
            cause.values.append(
                {"term": term, "first_step": dead.first_step, "steps": dead.rows, "weight": w}
            )
        return [cause] if cause.evidence else []

    def _nonfinite_term_cause(self) -> list[ProbableCause]:
        cause = ProbableCause(
            "nonfinite_term",
            "Non-finite loss term: computed, but NaN or Inf",
            "The term is computed and comes out NaN or ±Inf (a log or a division by 0, an "
            "overflow in half precision): it poisons the total wherever it is summed in. Unlike "
            "a dead term, the code path runs; check its inputs and its precision.",
        )
        for term in sorted(self.nonfinite):
            broken = self.nonfinite[term]
            if not broken.rows:
                continue
            cause.evidence.append(
                f"term {term!r}: non-finite at {broken.rows} of {self.rows} steps "
                f"(first at step {broken.first_step})"
            )
            cause.values.append(
                {"term": term, "first_step": broken.first_step, "steps": broken.rows}
            )
        return [cause] if cause.evidence else []


def _column(chunk: Mapping[str, np.ndarray], name: str, n: int, fill: float) -> np.ndarray:
    col = chunk.get(name)
    return np.full(n, fill) if col is None else np.asarray(col, dtype=np.float64)


def probable_causes(
    scalars: Mapping[str, np.ndarray],
    streams: Mapping[str, Mapping[str, np.ndarray]],
    steps: Sequence[int],
    *,
    sizes: Mapping[str, tuple[int, int]],
    sample_ids: Mapping[int, list[int]] | None = None,
    thresholds: Thresholds | None = None,
) -> list[ProbableCause]:
    """Turn one run's derived numbers into probable causes, each with its evidence.

    Args:
        scalars: per-step scalar table: ``step``, ``loss``, ``loss_ema``, ``loss_zscore``,
            ``spike``, ``spike_rule``, ``dead/<term>``, ``term_nonfinite/<term>``, ``term/<term>``,
            ``weight/<term>``, optional ``lr`` (a run too long to hold: :class:`ScalarEvidence`).
        streams: per stream, a per-step table of its derived columns (see :func:`stream_causes`).
        steps: the steps whose texture metrics are judged (the report's checkpoints).
        sizes: (H, W) of each stream, to turn f* into a period and for the white-noise
            Nyquist share the checkerboard is compared with.
        sample_ids: sample ids of each spiking step's batch.
        thresholds: where each reading fires (defaults: :class:`Thresholds`).
    """
    th = thresholds or Thresholds()
    causes = stream_causes(streams, steps, sizes=sizes, thresholds=th)
    if scalars.get("step") is not None and scalars["step"].size:
        evidence = ScalarEvidence(th)
        evidence.update(scalars)
        causes += evidence.finish().causes(sample_ids)
    return causes
