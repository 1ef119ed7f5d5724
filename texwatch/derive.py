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
"""

from __future__ import annotations

import argparse
import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from texwatch import spectral
from texwatch._argtypes import positive_float, positive_int
from texwatch.detectors import SIGMA, SPIKE_RULES, WARN_SIGMA, LossMonitor, TermMonitor
from texwatch.losses import ACFPeriodLoss, LogPolarAlignLoss, SpectralPeriodLoss
from texwatch.metric_names import TEXTURE_LOSSES
from texwatch.store import ITEMS, SCALARS, Run, given_nan, open_run

__all__ = [
    "add_derive_arguments",
    "settings_from_args",
    "DeriveSettings",
    "DerivedBatch",
    "Deriver",
    "derive_all",
]

_log = logging.getLogger("texwatch.derive")
_TARGET_STEPS = 64  # recent steps whose target items are kept for pairing with pred rows


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

    def __post_init__(self) -> None:
        if self.ref is not None and (self.ref.ndim != 4 or self.ref.shape[0] != 1):
            raise ValueError(
                f"Expected the reference tile as (1, C, H, W) but got shape {self.ref.shape}"
            )


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
    read, and readers must trust only the commit marker they just read.

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
        self, run: Run, committed: Mapping[str, int], max_rows: int = 256
    ) -> DerivedBatch | None:
        """Derive up to ``max_rows`` new rows of each table; None when nothing is pending."""
        tables: dict[str, dict[str, np.ndarray]] = {}
        streams = [t for t in committed if t not in (SCALARS, ITEMS)]
        # Targets first, so a pred row finds the target recorded at its step.
        streams.sort(key=lambda t: (t != "target", t))
        for name in streams:
            start, stop = self._cursor.get(name, 0), committed[name]
            stop = min(stop, start + max_rows)
            if stop <= start:
                continue
            steps, data = run.stream(name, start, stop)
            if name == "target":
                self._remember_targets(steps, data)
            pairs = self._targets_for(run, steps) if name == "pred" else None
            tables[name] = self._derive_stream(name, steps, data, pairs)
            self._cursor[name] = stop
        if SCALARS in committed:
            start, stop = self._cursor.get(SCALARS, 0), committed[SCALARS]
            stop = min(stop, start + max_rows)
            if stop > start:
                tables[SCALARS] = self._derive_scalars(run, start, stop, committed.get(ITEMS, 0))
                self._cursor[SCALARS] = stop
        if not tables:
            return None
        return DerivedBatch(tables=tables, cursor=self.cursor, state=self.state())

    def _remember_targets(self, steps: np.ndarray, data: np.ndarray) -> None:
        """Keep the newest steps' target items, for the pred rows of the same steps."""
        for step in np.unique(steps):
            self._targets[int(step)] = data[steps == step]
            self._targets.move_to_end(int(step))
        while len(self._targets) > _TARGET_STEPS:
            self._targets.popitem(last=False)

    def _targets_for(self, run: Run, steps: np.ndarray) -> list[np.ndarray | None] | None:
        """Each pred row's own target item: the item of the same index at the same step."""
        missing = [int(s) for s in np.unique(steps) if int(s) not in self._targets]
        if missing and "target" in run.committed():
            # After a restart the cache is empty: read those steps' targets from the store.
            self._remember_targets(*run.stream_at("target", missing))
        if not any(int(s) in self._targets for s in steps):
            return None
        pairs: list[np.ndarray | None] = []
        for i, step in enumerate(steps):
            items = self._targets.get(int(step))
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
        bad = int(out["nonfinite"].sum())
        if bad:
            self._nonfinite[name] = self._nonfinite.get(name, 0) + bad
        if name == "pred" and ref is not None:
            out.update(self._texture_losses(x, ref))
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

    def _derive_scalars(
        self, run: Run, start: int, stop: int, items_committed: int
    ) -> dict[str, np.ndarray]:
        cols = run.scalars(start, stop, latest_wins=False)
        item_start = self._cursor.get(ITEMS, 0)
        items = (
            run.items(item_start, items_committed)
            if items_committed > item_start
            else {"step": np.empty(0, np.int64)}
        )
        n = stop - start
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
        if j:
            self._cursor[ITEMS] = item_start + j
        return out

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
    path: str | Path, settings: DeriveSettings | None = None, *, batch_rows: int = 512
) -> dict[str, dict[str, np.ndarray]]:
    """Derived columns for every committed row of every table of the run at ``path``.

    Rows the daemon already stored under ``derived/`` are read; the rest are computed in memory
    with the same :class:`Deriver`, resumed from the daemon's cursor and detector state. Nothing
    is written.
    """
    run = open_run(path)
    settings = settings or DeriveSettings()
    parts: dict[str, list[dict[str, np.ndarray]]] = {}
    for table, rows in run.derived_committed().items():
        if rows:
            parts.setdefault(table, []).append(run.derived(table, 0, rows))
    deriver = Deriver(settings, cursor=run.derived_cursor(), state=run.derived_state())
    committed = run.committed()
    while (batch := deriver.advance(run, committed, batch_rows)) is not None:
        for table, cols in batch.tables.items():
            parts.setdefault(table, []).append(cols)
    return {table: _concat(p) for table, p in parts.items()}
