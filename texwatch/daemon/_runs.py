"""One watched run inside texwatchd: derive its new rows, store them, publish its metrics."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from texwatch.derive import DerivedBatch, Deriver, DeriveSettings
from texwatch.metric_names import STREAM_HEALTH_NAMES, STREAM_METRIC_NAMES
from texwatch.store import ITEMS, SCALARS, DerivedWriter, Run, open_run

from ._exporter import Sample

__all__ = ["RunWorker"]

_log = logging.getLogger("texwatch.daemon")
_RESERVED = {"step", "time", "loss", "checkpoint"}
_TAIL_ROWS = 64  # derived rows re-read at start, to export the newest values after a restart


class RunWorker:
    """Derives one run from its cursor in bounded batches and keeps its exported samples.

    Args:
        path: the run's store.
        settings: derivation settings shared by every run of the daemon.
        batch_rows: the most source rows per table derived (and committed) at once.
        on_batch: called after each committed batch (snapshots hook), with the worker and batch.
    """

    def __init__(
        self,
        path: Path,
        settings: DeriveSettings,
        *,
        batch_rows: int = 256,
        on_batch: Callable[[RunWorker, DerivedBatch], None] | None = None,
    ) -> None:
        self.path = path
        self._settings = settings
        self._batch_rows = batch_rows
        self._on_batch = on_batch
        run = open_run(path)
        self.name = run.name or path.stem
        self._writer = DerivedWriter(path)
        cursor = self._writer.cursor()
        self._deriver = Deriver(settings, cursor=cursor, state=self._writer.state())
        self._latest_streams: dict[str, dict[str, float]] = {}
        self._latest_scalars: dict[str, float] = {}
        self._latest_derived: dict[str, float] = {}
        self._lag = 0
        self._drops: dict[str, int] = {}
        self._scalar_nonfinite: dict[str, int] = {}
        self._processed_at = math.nan
        self.last_activity = time.time()  # last new commit or derived batch: idle runs are dropped
        self._committed: dict[str, int] = {}
        self._load_tail(run, cursor)

    @property
    def deriver(self) -> Deriver:
        """The run's deriver (cursor, detectors)."""
        return self._deriver

    @property
    def latest_streams(self) -> dict[str, dict[str, float]]:
        """Per stream, the derived values of its newest step (means over that step's rows)."""
        return {k: dict(v) for k, v in self._latest_streams.items()}

    def _load_tail(self, run: Run, cursor: Mapping[str, int]) -> None:
        """After a restart, export the newest stored values before anything new arrives."""
        for table, rows in cursor.items():
            if table == ITEMS or rows == 0:
                continue
            tail = run.derived(table, max(0, rows - _TAIL_ROWS), rows)
            self._remember(table, tail)
        scalars = cursor.get(SCALARS, 0)
        if scalars:
            self._remember_source(run.scalars(scalars - 1, scalars, latest_wins=False))

    def process(self, stop: threading.Event) -> int:
        """Derive everything committed past the cursor (or until ``stop``); rows derived."""
        run = open_run(self.path)
        committed = run.committed()
        if committed != self._committed:
            self.last_activity = time.time()
            self._committed = dict(committed)
        self._drops = run.drops()
        # The client saw the given values: its counts of non-finite loss / term rows are exact.
        streams = set(committed)
        self._scalar_nonfinite = {k: v for k, v in run.nonfinite().items() if k not in streams}
        backlog = self._deriver.lag(committed)
        done = 0
        while not stop.is_set():
            batch = self._deriver.advance(run, committed, self._batch_rows)
            if batch is None:
                break
            for table, cols in batch.tables.items():
                self._writer.append(table, cols)
            self._writer.commit(batch.cursor, batch.state)
            for table, cols in batch.tables.items():
                self._remember(table, cols)
            if SCALARS in batch.tables:
                end = batch.cursor[SCALARS]
                self._remember_source(run.scalars(end - 1, end, latest_wins=False))
            done += batch.rows
            self._lag = self._deriver.lag(committed)
            self._processed_at = time.time()
            if backlog > 4 * self._batch_rows:
                _log.info("%s: caught up %d of %d rows", self.name, done, backlog)
            if self._on_batch is not None:
                self._on_batch(self, batch)
        self._lag = self._deriver.lag(committed)
        if done:
            self.last_activity = time.time()
        return done

    def _remember(self, table: str, cols: Mapping[str, np.ndarray]) -> None:
        steps = cols.get("step")
        if steps is None or len(steps) == 0:
            return
        newest = steps == steps[-1]
        values = {
            k: float(np.nanmean(v[newest])) if np.isfinite(v[newest]).any() else math.nan
            for k, v in cols.items()
            if k != "step"
        }
        if table == SCALARS:
            self._latest_derived = values
        else:
            self._latest_streams[table] = values

    def _remember_source(self, row: Mapping[str, np.ndarray]) -> None:
        self._latest_scalars = {k: float(v[-1]) for k, v in row.items() if len(v)}

    def samples(self) -> Iterator[Sample]:
        """Everything this run exports, from the latest derived results (no computation)."""
        run = {"run": self.name}
        yield Sample("texwatch_daemon_lag_rows", run, self._lag)
        yield Sample("texwatch_last_step", run, self._deriver.last_step)
        if not math.isnan(self._processed_at):
            yield Sample("texwatch_last_processed_timestamp_seconds", run, self._processed_at)
        for stream, values in self._latest_streams.items():
            labels = {"run": self.name, "stream": stream}
            for key, value in values.items():
                name = STREAM_METRIC_NAMES.get(key) or STREAM_HEALTH_NAMES.get(key)
                if name is not None:
                    yield Sample(name, labels, value)
                elif key.startswith("loss/"):
                    loss_labels = {**labels, "loss": key[len("loss/") :]}
                    yield Sample("texwatch_texture_loss", loss_labels, value)
        derived = self._latest_derived
        if derived:
            yield Sample("texwatch_loss", run, derived.get("loss", math.nan))
            yield Sample("texwatch_loss_ema", run, derived.get("loss_ema", math.nan))
            yield Sample("texwatch_loss_zscore", run, derived.get("loss_zscore", math.nan))
        monitor = self._deriver.loss_monitor
        for rule, count in monitor.counts.items():
            yield Sample("texwatch_loss_spikes", {"run": self.name, "rule": rule}, count)
        yield Sample("texwatch_loss_spike_warnings", run, monitor.warnings)
        yield from self._term_samples()
        for key, value in self._latest_scalars.items():
            if key in _RESERVED or key.startswith(("term/", "weight/", "nonfinite/")):
                continue
            yield Sample("texwatch_scalar", {"run": self.name, "name": key}, value)
        # Known sources start at 0, so the first NaN shows as an increase, not a new series.
        nonfinite = dict.fromkeys(["loss", *self._latest_streams], 0)
        nonfinite.update(self._scalar_nonfinite)
        nonfinite.update(self._deriver.nonfinite)
        for stream, count in nonfinite.items():
            yield Sample("texwatch_nonfinite", {"run": self.name, "stream": stream}, count)
        for stream, count in self._drops.items():
            labels = {"run": self.name, "stream": stream}
            yield Sample("texwatch_client_dropped_rows", labels, count)

    def _term_samples(self) -> Iterator[Sample]:
        terms = sorted(k[len("term/") :] for k in self._latest_scalars if k.startswith("term/"))
        dead = 0
        for term in terms:
            labels = {"run": self.name, "term": term}
            is_dead = self._latest_derived.get(f"dead/{term}", 0.0) == 1.0
            dead += is_dead
            yield Sample("texwatch_loss_term", labels, self._latest_scalars[f"term/{term}"])
            weight = self._latest_scalars.get(f"weight/{term}", 1.0)
            yield Sample("texwatch_loss_term_weight", labels, weight)
            share = self._latest_derived.get(f"share/{term}", math.nan)
            yield Sample("texwatch_loss_term_share", labels, share)
            yield Sample("texwatch_loss_term_dead", labels, float(is_dead))
            broken = self._latest_derived.get(f"term_nonfinite/{term}", 0.0) == 1.0
            yield Sample("texwatch_loss_term_nonfinite", labels, float(broken))
        yield Sample("texwatch_dead_loss_terms", {"run": self.name}, dead)
