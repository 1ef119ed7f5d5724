"""What texwatch derives from a run's committed rows: the daemon's pipeline core.

texwatchd runs a :class:`Deriver` per run, from its cursor, and stores each batch under
``derived/``; ``texwatch report`` calls :func:`derive_all`, which takes what the daemon stored and
computes the rest in memory with the same code.

Derived tables (one row per source row, in source order):

* ``scalars``: ``step``, ``loss``, ``loss_ema``, ``loss_zscore``, ``spike`` (0/1),
  ``spike_rule`` (0 none, else the 1-based index in :data:`texwatch.detectors.SPIKE_RULES`),
  ``warn`` (0/1), and per loss term ``share/<term>`` (share of the weighted total) and
  ``dead/<term>`` (0/1).
* one table per image stream: ``step``, the :func:`texwatch.spectral.texture_metrics` keys, the
  :func:`texwatch.spectral.latent_health` keys, and for ``pred`` with a target at the same step (or
  a reference tile) ``loss/<name>`` for the texture losses.

Memory is bounded by bytes, not rows: :attr:`DeriveSettings.memory_budget` sizes each read and
its torch work from the bytes of a row, splitting a batch into sub-batches that fit. Faults are
bounded by stream: a stream whose rows cannot be read or derived stops alone, keeps its cursor
and is retried on the next advance, while the loss detectors and the other streams go on.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from texwatch import spectral
from texwatch._argtypes import positive_float, positive_int
from texwatch._location import ObjectPath
from texwatch.detectors import SIGMA, SPIKE_RULES, WARN_SIGMA, LossMonitor, TermMonitor
from texwatch.errors import ComputeError, TexwatchError
from texwatch.losses import ACFPeriodLoss, LogPolarAlignLoss, SpectralPeriodLoss
from texwatch.metric_names import TEXTURE_LOSSES
from texwatch.store import ITEMS, SCALARS, Run, StreamSpec, given_nan, open_run

__all__ = [
    "add_derive_arguments",
    "byte_size",
    "settings_from_args",
    "DeriveSettings",
    "DerivedBatch",
    "Deriver",
    "derive_all",
]

_log = logging.getLogger("texwatch.derive")
_TARGET_STEPS = 64  # recent steps whose target items are kept for pairing with pred rows
_MiB = 1 << 20
_DEFAULT_BUDGET = 512 * _MiB
# The working set of deriving image rows, measured by benchmarks/daemon_memory.py (--model): per
# row, this many float32 copies of it (texture_metrics with bands and a target, latent_health,
# the texture losses); per sub-batch whatever its rows, a fixed part and this many float32 H x W
# planes (frequency grids, windows, FFT plans).
_ROW_COPIES = 24
_PLANE_COPIES = 128
_FIXED_BYTES = 32 * _MiB
_TARGET_SHARE = 4  # the cache of target rows for pairing takes at most 1/4 of the budget
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class DeriveSettings:
    """How a run is derived: detector windows and thresholds, the device, the reference tile."""

    device: str = "cpu"
    window: int = 128
    spike_sigma: float = SIGMA
    warn_sigma: float = WARN_SIGMA
    dead_window: int = 100
    clip_range: float = 3.0
    spectral_window: str = "hann"
    ref: np.ndarray | None = field(default=None, compare=False)  # (1, C, H, W) in [0, 1]
    memory_budget: int = _DEFAULT_BUDGET  # bytes of image rows and their torch work at once

    def __post_init__(self) -> None:
        if self.ref is not None and (self.ref.ndim != 4 or self.ref.shape[0] != 1):
            raise ValueError(
                f"Expected the reference tile as (1, C, H, W) but got shape {self.ref.shape}"
            )
        if isinstance(self.memory_budget, bool) or not isinstance(self.memory_budget, int):
            raise TypeError(f"memory_budget must be an int of bytes, got {self.memory_budget!r}")
        if self.memory_budget <= 0:
            raise ValueError(f"memory_budget must be > 0 bytes, got {self.memory_budget}")


def byte_size(text: str) -> int:
    """Bytes from a size such as ``1GiB``, ``512MiB``, ``768M`` or ``1073741824`` (units of 1024).

    Raises:
        argparse.ArgumentTypeError: quoting ``text``, when it is no size > 0.
    """
    match = _SIZE.fullmatch(text)
    value = 0
    if match is not None:
        value = int(float(match[1]) * _UNITS[(match[2] or "")[:1].lower()])
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"expected a size > 0 such as 512MiB or 1GiB but got {text!r}"
        )
    return value


def _format_size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / _MiB:.0f} MiB"


def add_derive_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """The derivation flags texwatchd and ``texwatch report`` share (``parser`` or a group)."""
    parser.add_argument(
        "--device", default=None, help="torch device of the metrics (default: cuda if available)"
    )
    parser.add_argument(
        "--ref",
        type=Path,
        metavar="IMAGE",
        help="reference tile: its f* anchors the energy ratios and texture losses",
    )
    defaults = DeriveSettings()
    parser.add_argument(
        "--spike-sigma",
        type=positive_float,
        default=defaults.spike_sigma,
        help="alarm when the log loss is this many robust σ above its rolling median "
        f"(default {defaults.spike_sigma:g})",
    )
    parser.add_argument(
        "--warn-sigma",
        type=positive_float,
        default=defaults.warn_sigma,
        help=f"warn at this many σ (default {defaults.warn_sigma:g})",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=defaults.window,
        help=f"rolling window of the spike detector, in steps (default {defaults.window})",
    )
    parser.add_argument(
        "--dead-window",
        type=positive_int,
        default=defaults.dead_window,
        help="steps (at the least) a weighted term may stay 0/constant/absent before it is dead "
        f"(default {defaults.dead_window})",
    )
    parser.add_argument(
        "--memory-budget",
        type=byte_size,
        default=defaults.memory_budget,
        metavar="SIZE",
        help="most memory image rows and their metrics take at once, e.g. 512MiB or 1GiB; "
        "batches are split to fit, and the process needs ~300 MiB on top "
        f"(default {_format_size(defaults.memory_budget)})",
    )


def settings_from_args(args: argparse.Namespace) -> DeriveSettings:
    """:class:`DeriveSettings` from :func:`add_derive_arguments`'s flags.

    Raises:
        ValueError: naming the flag, for a device torch cannot use or an unreadable ``--ref``.
    """
    from texwatch._images import load_image

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"argument --device: cannot use {device!r} ({err})") from err
    ref = None
    if args.ref is not None:
        try:
            ref = load_image(args.ref).numpy()
        except (OSError, ValueError) as err:
            raise ValueError(f"argument --ref: {err}") from err
    return DeriveSettings(
        device=device,
        window=args.window,
        spike_sigma=args.spike_sigma,
        warn_sigma=args.warn_sigma,
        dead_window=args.dead_window,
        ref=ref,
        memory_budget=args.memory_budget,
    )


@dataclass
class DerivedBatch:
    """One advance: new derived rows per table, the cursor after them, and detector state."""

    tables: dict[str, dict[str, np.ndarray]]
    cursor: dict[str, int]
    state: dict[str, Any]

    @property
    def rows(self) -> int:
        """How many source rows this batch derived."""
        return sum(len(next(iter(cols.values()))) for cols in self.tables.values() if cols)


class Deriver:
    """Derives one run incrementally: each :meth:`advance` handles the next committed rows.

    The run is passed to each :meth:`advance`, freshly opened: an open array keeps the shape it
    read, and readers must trust only the commit marker they just read. A table (an image
    stream, or ``scalars`` for the loss detectors) whose rows fail to read or derive stops at
    the last good row while the others go on; :meth:`stream_errors` says which and why.

    Args:
        settings: detector and spectral settings.
        cursor: source rows already derived per table (from ``derived/``), or None for none.
        state: detector state stored with that cursor, or None to start fresh.
    """

    def __init__(
        self,
        settings: DeriveSettings,
        *,
        cursor: Mapping[str, int] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._device = torch.device(settings.device)
        self._cursor: dict[str, int] = dict(cursor or {})
        self._loss = LossMonitor(
            window=settings.window, sigma=settings.spike_sigma, warn_sigma=settings.warn_sigma
        )
        self._terms = TermMonitor(window=settings.dead_window)
        self._nonfinite: dict[str, int] = {}
        self._last_step = -1
        if state:
            self._nonfinite = {k: int(v) for k, v in state.get("nonfinite", {}).items()}
            self._last_step = int(state.get("last_step", -1))
            try:
                self._loss.load_state_dict(state["loss"])
                self._terms.load_state_dict(state["terms"])
            except (KeyError, ValueError) as err:
                # A changed --window/--dead-window: the stored histories do not fit; start them
                # afresh rather than refuse to serve the run.
                _log.warning("detector state not resumed (%s); detectors start fresh", err)
                self._loss = LossMonitor(
                    window=settings.window,
                    sigma=settings.spike_sigma,
                    warn_sigma=settings.warn_sigma,
                )
                self._terms = TermMonitor(window=settings.dead_window)
        self._ref = (
            torch.as_tensor(settings.ref, dtype=torch.float32, device=self._device)
            if settings.ref is not None
            else None
        )
        self._targets: OrderedDict[int, np.ndarray] = OrderedDict()
        self._target_budget = settings.memory_budget // _TARGET_SHARE
        self._specs: dict[str, StreamSpec] = {}
        self._errors: dict[str, TexwatchError] = {}
        self._losses = {
            "spectral_period": SpectralPeriodLoss(),
            "log_polar_align": LogPolarAlignLoss(),
            "acf_period": ACFPeriodLoss(),
        }

    @property
    def cursor(self) -> dict[str, int]:
        """Source rows derived so far, per table."""
        return dict(self._cursor)

    @property
    def loss_monitor(self) -> LossMonitor:
        """The loss detectors (counters, recent spikes) after the last advance."""
        return self._loss

    @property
    def nonfinite(self) -> dict[str, int]:
        """Non-finite values seen so far in each image stream (the client counts scalar rows)."""
        return dict(self._nonfinite)

    @property
    def last_step(self) -> int:
        """The newest step derived (-1 before any)."""
        return self._last_step

    def stream_errors(self) -> dict[str, TexwatchError]:
        """Tables stopped by a failure at the last advance, with the failure; empty when none."""
        return dict(self._errors)

    def lag(self, committed: Mapping[str, int]) -> int:
        """Committed rows not derived yet."""
        return sum(max(0, n - self._cursor.get(t, 0)) for t, n in committed.items())

    def state(self) -> dict[str, Any]:
        """JSON-able detector state, stored atomically with the cursor."""
        return {
            "loss": self._loss.state_dict(),
            "terms": self._terms.state_dict(),
            "nonfinite": dict(self._nonfinite),
            "last_step": self._last_step,
        }

    def advance(
        self,
        run: Run,
        committed: Mapping[str, int],
        max_rows: int = 256,
        *,
        image_rows: int | None = None,
    ) -> DerivedBatch | None:
        """Derive up to ``max_rows`` new rows of each table; None when nothing is pending.

        ``image_rows`` caps the rows of each image stream lower (their metrics cost milliseconds
        a row where a scalar row costs microseconds), so a caller bounding a batch's time need
        not starve the loss detectors. Image rows are read and derived in sub-batches sized to
        ``settings.memory_budget``. A table that fails keeps the rows derived before the
        failure, is listed by :meth:`stream_errors` and is retried from its cursor on the next
        call.
        """
        tables: dict[str, dict[str, np.ndarray]] = {}
        streams = [t for t in committed if t not in (SCALARS, ITEMS)]
        # Targets first, so a pred row finds the target recorded at its step.
        streams.sort(key=lambda t: (t != "target", t))
        per_stream = max_rows if image_rows is None else min(max_rows, image_rows)
        for name in streams:
            start = self._cursor.get(name, 0)
            stop = min(committed[name], start + per_stream)
            if stop <= start:
                continue
            parts: list[dict[str, np.ndarray]] = []
            try:
                parts.extend(self._stream_parts(run, name, start, stop))
            except TexwatchError as err:
                self._errors[name] = err
            else:
                self._errors.pop(name, None)
            if parts:
                tables[name] = _concat(parts)
        if SCALARS in committed:
            start = self._cursor.get(SCALARS, 0)
            stop = min(committed[SCALARS], start + max_rows)
            if stop > start:
                try:
                    tables[SCALARS] = self._advance_scalars(run, start, stop, committed)
                except TexwatchError as err:
                    self._errors[SCALARS] = err
                else:
                    self._errors.pop(SCALARS, None)
        if not tables:
            return None
        return DerivedBatch(tables=tables, cursor=self.cursor, state=self.state())

    def _stream_parts(
        self, run: Run, name: str, start: int, stop: int
    ) -> Iterator[dict[str, np.ndarray]]:
        """Derived columns of rows ``[start, stop)``, one sub-batch that fits the budget at a time.

        The cursor follows each sub-batch. A read that fails is narrowed to the rows before the
        failing one, those are derived, then the failure is raised.
        """
        rows = self._rows_per_batch(run, name)
        for first in range(start, stop, rows):
            last = min(stop, first + rows)
            failure: TexwatchError | None = None
            try:
                steps, data = run.stream(name, first, last)
            except TexwatchError as err:
                failure = err
                last = first + _readable_rows(run, name, first, last)
                if last == first:
                    raise
                steps, data = run.stream(name, first, last)
            cols = self._derive_rows(run, name, first, steps, data)
            self._cursor[name] = last
            yield cols
            if failure is not None:
                raise failure

    def _rows_per_batch(self, run: Run, name: str) -> int:
        """The most rows of stream ``name`` whose read and torch work fit the memory budget."""
        spec = self._specs.get(name)
        if spec is None:
            spec = self._specs[name] = run.stream_spec(name)
        c, h, w = spec.shape
        per_row = c * h * w * (2 * spec.dtype.itemsize + 4 * _ROW_COPIES)
        fixed = _FIXED_BYTES + _PLANE_COPIES * h * w * 4
        budget = self._settings.memory_budget
        rows = (budget - self._target_budget - fixed) // per_row
        if rows < 1:
            need = (fixed + per_row) * _TARGET_SHARE // (_TARGET_SHARE - 1) + 1
            raise ComputeError(
                f"argument --memory-budget: {_format_size(budget)} is too small to derive one "
                f"row of stream {name!r} ({c}x{h}x{w} {spec.dtype}) of {str(run.path)!r}; "
                f"expected at least {_format_size(need)}",
                run.path / name,
            )
        return int(rows)

    def _derive_rows(
        self, run: Run, name: str, first: int, steps: np.ndarray, data: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Derived columns of rows read from ``first``; a failure of the metrics a ComputeError."""
        if name == "target":
            self._remember_targets(steps, data)
        pairs = self._targets_for(run, steps) if name == "pred" else None
        try:
            return self._derive_stream(name, steps, data, pairs)
        except Exception as err:  # any failure of torch or the metrics on rows that read fine
            raise ComputeError(
                f"cannot derive rows {first}-{first + len(steps) - 1} of stream {name!r} of "
                f"{str(run.path)!r}: {type(err).__name__}: {err}",
                run.path / name,
            ) from err

    def _remember_targets(self, steps: np.ndarray, data: np.ndarray) -> None:
        """Keep the newest steps' target items, for the pred rows of the same steps.

        At most ``_TARGET_STEPS`` steps and a quarter of the memory budget are kept.
        """
        for step in np.unique(steps):
            self._targets[int(step)] = data[steps == step]
            self._targets.move_to_end(int(step))
        kept = sum(items.nbytes for items in self._targets.values())
        while self._targets and (len(self._targets) > _TARGET_STEPS or kept > self._target_budget):
            kept -= self._targets.popitem(last=False)[1].nbytes

    def _targets_for(self, run: Run, steps: np.ndarray) -> list[np.ndarray | None] | None:
        """Each pred row's own target item: the item of the same index at the same step."""
        wanted = [int(s) for s in np.unique(steps)]
        found = {s: self._targets[s] for s in wanted if s in self._targets}
        missing = [s for s in wanted if s not in found]
        if missing and "target" in run.committed():
            # After a restart, or past the cache: read those steps' targets from the store.
            target_steps, data = run.stream_at("target", missing)
            for step in np.unique(target_steps):
                found[int(step)] = data[target_steps == step]
        if not found:
            return None
        pairs: list[np.ndarray | None] = []
        for i, step in enumerate(steps):
            items = found.get(int(step))
            index = int(np.sum(steps[:i] == step))  # the row's item index within its step
            pairs.append(items[index] if items is not None and index < len(items) else None)
        return pairs

    def _derive_stream(
        self,
        name: str,
        steps: np.ndarray,
        data: np.ndarray,
        pairs: list[np.ndarray | None] | None,
    ) -> dict[str, np.ndarray]:
        x = torch.as_tensor(np.ascontiguousarray(data), device=self._device).float()  # (N,C,H,W)
        ref: torch.Tensor | None
        if pairs is not None:
            ref = torch.stack(
                [
                    torch.as_tensor(p, device=self._device).float()
                    if p is not None
                    else torch.full_like(x[0], math.nan)
                    for p in pairs
                ]
            )
        else:
            ref = self._ref if name != "latents" else None
        metrics = spectral.texture_metrics(
            x, ref=ref, window=self._settings.spectral_window, bands=True
        )
        health = spectral.latent_health(x, clip_range=self._settings.clip_range)
        out: dict[str, np.ndarray] = {"step": np.asarray(steps, dtype=np.int64)}
        out.update({k: v.detach().cpu().numpy().astype(np.float64) for k, v in metrics.items()})
        out.update({k: v.detach().cpu().numpy().astype(np.float64) for k, v in health.items()})
        if name == "pred" and ref is not None:
            out.update(self._texture_losses(x, ref))
        bad = int(out["nonfinite"].sum())
        if bad:
            self._nonfinite[name] = self._nonfinite.get(name, 0) + bad
        if len(steps):
            self._last_step = max(self._last_step, int(np.max(steps)))
        return out

    def _texture_losses(self, x: torch.Tensor, ref: torch.Tensor) -> dict[str, np.ndarray]:
        cols = {f"loss/{n}": np.full(x.shape[0], np.nan) for n in TEXTURE_LOSSES}
        with torch.no_grad():
            for i in range(x.shape[0]):
                target = ref[i if ref.shape[0] > 1 else 0][None]
                if not torch.isfinite(target).all() or target.shape[-2:] != x.shape[-2:]:
                    continue
                pred = x[i][None]
                mask = torch.ones_like(pred[:, :1])
                for n in TEXTURE_LOSSES:
                    cols[f"loss/{n}"][i] = float(self._losses[n](pred, target, mask))
        return cols

    def _advance_scalars(
        self, run: Run, start: int, stop: int, committed: Mapping[str, int]
    ) -> dict[str, np.ndarray]:
        """Feed scalar rows ``[start, stop)`` to the loss detectors; all or nothing of them.

        A failure after the rows were read leaves the detectors as they were, so a retry does
        not feed them a row twice.
        """
        cols = run.scalars(start, stop, latest_wins=False)
        item_start, item_stop = self._cursor.get(ITEMS, 0), committed.get(ITEMS, 0)
        items = (
            run.items(item_start, item_stop)
            if item_stop > item_start
            else {"step": np.empty(0, np.int64)}
        )
        saved = (self._loss.state_dict(), self._terms.state_dict(), self._last_step)
        try:
            out, used = self._derive_scalars(cols, items, stop - start)
        except Exception as err:  # a detector failing on rows that read fine
            self._loss.load_state_dict(saved[0])
            self._terms.load_state_dict(saved[1])
            self._last_step = saved[2]
            raise ComputeError(
                f"cannot derive scalar rows {start}-{stop - 1} of {str(run.path)!r}: "
                f"{type(err).__name__}: {err}",
                run.path / SCALARS,
            ) from err
        self._cursor[SCALARS] = stop
        if used:
            self._cursor[ITEMS] = item_start + used
        return out

    def _derive_scalars(
        self, cols: Mapping[str, np.ndarray], items: Mapping[str, np.ndarray], n: int
    ) -> tuple[dict[str, np.ndarray], int]:
        """The scalars table of ``n`` rows, and how many ``items`` rows belonged to them."""
        terms = sorted(k[len("term/") :] for k in cols if k.startswith("term/"))
        out: dict[str, np.ndarray] = {
            "step": np.asarray(cols["step"], dtype=np.int64),
            "loss": np.asarray(cols.get("loss", np.full(n, np.nan)), dtype=np.float64),
            "loss_ema": np.full(n, np.nan),
            "loss_zscore": np.full(n, np.nan),
            "spike": np.zeros(n),
            "spike_rule": np.zeros(n),
            "warn": np.zeros(n),
        }
        for t in terms:
            out[f"share/{t}"] = np.full(n, np.nan)
            out[f"dead/{t}"] = np.zeros(n)
            out[f"term_nonfinite/{t}"] = np.zeros(n)
        j = 0  # items rows are written right after their scalar row, in record order
        item_steps = items["step"]
        for i in range(n):
            step = int(out["step"][i])
            k = j
            while k < len(item_steps) and int(item_steps[k]) == step:
                k += 1
            batch = slice(j, k)
            j = k
            loss = float(out["loss"][i])
            if _recorded(cols, "loss", i) is not None or k > batch.start:
                self._update_loss(out, i, step, loss, items, batch)
            values = {t: v for t in terms if (v := _recorded(cols, f"term/{t}", i)) is not None}
            weights = {
                t: float(cols[f"weight/{t}"][i]) if f"weight/{t}" in cols else 1.0 for t in terms
            }
            if terms:
                update = self._terms.update(step, values, weights)
                for t in terms:
                    out[f"share/{t}"][i] = update.shares.get(t, math.nan)
                    out[f"dead/{t}"][i] = float(t in update.dead)
                    out[f"term_nonfinite/{t}"][i] = float(t in update.nonfinite)
            self._last_step = step
        return out, j

    def _update_loss(
        self,
        out: dict[str, np.ndarray],
        i: int,
        step: int,
        loss: float,
        items: Mapping[str, np.ndarray],
        batch: slice,
    ) -> None:
        def _column(name: str) -> np.ndarray | None:
            col = items.get(name)
            if col is None or batch.stop <= batch.start:
                return None
            values = np.asarray(col[batch])
            return values if np.isfinite(values).any() else None

        ids = _column("sample_id")
        update = self._loss.update(
            step,
            loss,
            item_losses=_column("loss"),
            timesteps=_column("timestep"),
            sample_ids=[int(s) for s in ids if s >= 0] if ids is not None else None,
        )
        out["loss_ema"][i] = update.ema
        out["loss_zscore"][i] = update.zscore
        if update.rule is not None:
            out["spike"][i] = 1.0
            out["spike_rule"][i] = SPIKE_RULES.index(update.rule) + 1
        out["warn"][i] = float(update.warning)


def _recorded(cols: Mapping[str, np.ndarray], column: str, i: int) -> float | None:
    """Row ``i``'s value of a scalar column; None where it was not recorded (NaN, unmarked)."""
    if column not in cols:
        return None
    value = float(cols[column][i])
    if math.isnan(value):
        marker = cols.get(given_nan(column))
        if marker is None or marker[i] != 1.0:
            return None
    return value


def _readable_rows(run: Run, name: str, start: int, stop: int) -> int:
    """How many rows of stream ``name`` from ``start`` read before the first that fails.

    Rows ``[start, stop)`` are known to fail together; the first row is tried alone first, so a
    stream stuck at a bad row costs one more read per retry, not a bisection.
    """
    good, bad, probe = 0, stop - start, 1
    while bad - good > 1:
        try:
            run.stream(name, start, start + probe)
        except TexwatchError:
            bad = probe
        else:
            good = probe
        probe = (good + bad) // 2
    return good


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join column dicts row-wise; a column missing from a part reads NaN there."""
    names = {k for p in parts for k in p}
    out: dict[str, np.ndarray] = {}
    for k in sorted(names):
        chunks = []
        for p in parts:
            n = len(next(iter(p.values())))
            chunks.append(p[k] if k in p else np.full(n, np.nan))
        out[k] = np.concatenate(chunks) if chunks else np.empty(0)
    return out


def derive_all(
    path: str | Path | ObjectPath,
    settings: DeriveSettings | None = None,
    *,
    batch_rows: int = 512,
    tables: Iterable[str] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Derived columns for every committed row of every table of the run at ``path``.

    Rows the daemon already stored under ``derived/`` are read; the rest are computed in memory
    with the same :class:`Deriver`, resumed from the daemon's cursor and detector state. Nothing
    is written. ``tables`` limits it to those tables (``scalars``, image streams), so a caller
    can read a long scalar table its own way (``texwatch report`` reads it in chunks).

    Raises:
        TexwatchError: the first table that could not be read or derived (it names the file).
    """
    run = open_run(path)
    settings = settings or DeriveSettings()
    wanted = None if tables is None else set(tables)
    if wanted is not None and SCALARS in wanted:
        wanted.add(ITEMS)  # the loss detectors read the per-item rows beside the scalar rows
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for table, rows in run.derived_committed().items():
        if rows and (wanted is None or table in wanted):
            parts.setdefault(table, []).append(run.derived(table, 0, rows))
    deriver = Deriver(settings, cursor=run.derived_cursor(), state=run.derived_state())
    committed = {t: n for t, n in run.committed().items() if wanted is None or t in wanted}
    while (batch := deriver.advance(run, committed, batch_rows)) is not None:
        for table, cols in batch.tables.items():
            parts.setdefault(table, []).append(cols)
    for error in deriver.stream_errors().values():
        raise error
    return {table: _concat(p) for table, p in parts.items()}
