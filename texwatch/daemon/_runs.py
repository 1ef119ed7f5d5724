"""One watched run inside texwatchd: derive its new rows a batch at a time, store them, keep the
values it exports."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from texwatch._location import ObjectPath, Where
from texwatch.derive import DerivedBatch, Deriver, DeriveSettings
from texwatch.metric_names import STREAM_HEALTH_NAMES, STREAM_METRIC_NAMES
from texwatch.store import ITEMS, SCALARS, DerivedWriter, Run, is_user_scalar, open_run

from ._exporter import Sample

__all__ = ["RunWorker"]

_log = logging.getLogger("texwatch.daemon")
_TAIL_ROWS = 64  # derived rows re-read at start, to export the newest values after a restart


def _rank_label(rank: int | None) -> str:
    return "" if rank is None else str(rank)


class RunWorker:
    """Derives one run from its cursor, one bounded batch per :meth:`step`, and keeps its samples.

    Not thread-safe: texwatchd runs each step on a thread of its own, never two at once.

    Args:
        path: the run's store.
        settings: derivation settings shared by every run of the daemon.
        batch_rows: the most source rows per table derived (and committed) in one step.
        turn_seconds: how long one step should take. The first step derives one image row per
            stream, and the image rows of the next step are halved after a step that took longer
            and doubled (up to ``batch_rows``) after one that took under a quarter, so a new run's
            backlog of large images does not hold up other runs, not even on its first step.
            None: no bound, image rows go ``batch_rows`` at a time (``--once``, where nobody
            waits: whole batches cost the least CPU per row). Scalar rows, microseconds each,
            always go ``batch_rows`` at a time, and new ones in a step of their own before the
            images committed with them.
        on_batch: called after each committed batch (snapshots hook), with the worker and batch.
        per_rank: the run is one rank of a per-rank job (``job.zarr/rank<r>``): its series carry
            the rank as the ``rank`` label, empty otherwise.
    """

    def __init__(
        self,
        path: Where,
        settings: DeriveSettings,
        *,
        batch_rows: int = 256,
        turn_seconds: float | None = 0.5,
        on_batch: Callable[[RunWorker, DerivedBatch], None] | None = None,
        per_rank: bool = False,
    ) -> None:
        self.path = path
        self._settings = settings
        self._batch_rows = batch_rows
        self._rows = batch_rows if turn_seconds is None else 1
        self._turn_seconds = turn_seconds
        self._on_batch = on_batch
        run = open_run(path)
        self.name = str(run.attrs.get("run") or path.stem)
        self.run_id = run.run_id
        self.rank = run.rank if per_rank else None
        self._finished = run.finished()  # the recorder's clean-close time, as last read
        self._writer = DerivedWriter(path)
        self._committed: dict[str, int] = {}
        self._drops: dict[str, int] = {}
        self._scalar_nonfinite: dict[str, int] = {}
        self._scalars_only_last = False
        self._marker = b""  # the root marker as last read (object storage only)
        self.last_activity = time.time()  # last new commit or derived batch: idle runs are dropped
        self._start_over_if_derived_is_gone()
        self._reset(self._writer.cursor(), self._writer.state())
        self._load_tail(run, self._deriver.cursor)

    @property
    def labels(self) -> dict[str, str]:
        """The labels naming this run on every series: its name, its unique id and its rank in a
        per-rank job (empty for a run of its own, which Prometheus stores as no label)."""
        return {"run": self.name, "run_id": self.run_id, "rank": _rank_label(self.rank)}

    @property
    def finished(self) -> bool:
        """The run's recorder closed cleanly (as last read) and every committed row is derived:
        nothing more will come, so its alerts are over."""
        return self._finished is not None and not self.lag

    @property
    def deriver(self) -> Deriver:
        """The run's deriver (cursor, detectors)."""
        return self._deriver

    @property
    def lag(self) -> int:
        """Rows committed (as last read, after the newest step) that are not derived yet."""
        return self._deriver.lag(self._committed)

    def newest_committed_step(self) -> int | None:
        """The step of the newest committed loss row (as last read), or None without one."""
        rows = self._committed.get(SCALARS, 0)
        if not rows:
            return None
        return int(open_run(self.path).scalars(rows - 1, rows, latest_wins=False)["step"][-1])

    @property
    def latest_streams(self) -> dict[str, dict[str, float]]:
        """Per stream, the derived values of its newest step (means over that step's rows)."""
        return {k: dict(v) for k, v in self._latest_streams.items()}

    def _reset(self, cursor: Mapping[str, int], state: Mapping[str, Any] | None) -> None:
        self._deriver = Deriver(self._settings, cursor=cursor, state=state)
        self._latest_streams: dict[str, dict[str, float]] = {}
        self._latest_scalars: dict[str, float] = {}
        self._latest_derived: dict[str, float] = {}
        self._processed_at = math.nan

    def _start_over_if_derived_is_gone(self) -> bool:
        """Re-create ``derived/`` from scratch when its marker or one of its arrays is gone."""
        gone = self._writer.missing()
        if gone is None:
            return False
        _log.warning(
            "%s: %s is gone (derived/ deleted?); re-creating derived/ and deriving the run again "
            "from its first row",
            self.path,
            gone,
        )
        self._writer.recreate()
        return True

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

    def step(self) -> int:
        """Derive and commit at most one batch of the rows committed past the cursor; its rows.

        The commit marker is read again after the batch, so :attr:`lag` counts what arrived
        meanwhile.
        """
        started = time.perf_counter()
        if self._unchanged_remote():
            return 0
        if self._start_over_if_derived_is_gone():
            self._reset({}, None)
        run = open_run(self.path)
        committed = run.committed()
        if committed != self._committed:
            self.last_activity = time.time()
        self._committed = committed
        self._finished = run.finished()
        self._drops = run.drops()
        # The client saw the given values: its counts of non-finite loss / term rows are exact.
        self._scalar_nonfinite = {k: v for k, v in run.nonfinite().items() if k not in committed}
        # New loss rows go out in a turn of their own, so a commit carrying images reaches
        # /metrics as fast as a scalar one; the next turn takes the images (and any newer loss).
        cursor = self._deriver.cursor
        pending = {t for t, n in committed.items() if n > cursor.get(t, 0)}
        scalars_only = SCALARS in pending and bool(pending - {SCALARS, ITEMS})
        scalars_only = scalars_only and not self._scalars_only_last
        self._scalars_only_last = scalars_only
        image_rows = 0 if scalars_only else self._rows
        batch = self._deriver.advance(run, committed, self._batch_rows, image_rows=image_rows)
        if batch is None:
            return 0
        for table, cols in batch.tables.items():
            self._writer.append(table, cols)
        self._writer.commit(batch.cursor, batch.state)
        for table, cols in batch.tables.items():
            self._remember(table, cols)
        if SCALARS in batch.tables:
            end = batch.cursor[SCALARS]
            self._remember_source(run.scalars(end - 1, end, latest_wins=False))
        self._processed_at = self.last_activity = time.time()
        self._committed = run.committed()
        if self._on_batch is not None:
            self._on_batch(self, batch)
        took = time.perf_counter() - started
        if scalars_only or self._turn_seconds is None:  # image rows stay as they are
            return batch.rows
        if took > self._turn_seconds:
            self._rows = max(1, self._rows // 2)
        elif took < self._turn_seconds / 4:
            self._rows = min(self._batch_rows, 2 * self._rows)
        return batch.rows

    def _unchanged_remote(self) -> bool:
        """A run on object storage with nothing left to derive whose marker is as last seen.

        One GET a turn for an idle run, where a full look costs a few GETs and a HEAD per
        derived column: a daemon serving hundreds of runs from a bucket must not re-read what
        has not changed. (On disk the full look is cheap and also notices a deleted
        ``derived/`` while the run is idle.)
        """
        if not isinstance(self.path, ObjectPath):
            return False
        try:
            marker = (self.path / "zarr.json").read_bytes()
        except OSError:
            return False  # the full look names the fault
        if marker == self._marker and not self.lag:
            return True
        self._marker = marker
        return False

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
        run = self.labels
        yield Sample("texwatch_daemon_lag_rows", run, self.lag)
        yield Sample("texwatch_run_finished", run, float(self.finished))
        yield Sample("texwatch_last_step", run, self._deriver.last_step)
        if not math.isnan(self._processed_at):
            yield Sample("texwatch_last_processed_timestamp_seconds", run, self._processed_at)
        for stream, values in self._latest_streams.items():
            labels = {**run, "stream": stream}
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
            yield Sample("texwatch_loss_spikes", {**run, "rule": rule}, count)
        yield Sample("texwatch_loss_spike_warnings", run, monitor.warnings)
        yield from self._term_samples()
        for key, value in self._latest_scalars.items():
            if not is_user_scalar(key):
                continue
            yield Sample("texwatch_scalar", {**run, "name": key}, value)
        # Known sources start at 0, so the first NaN shows as an increase, not a new series.
        nonfinite = dict.fromkeys(["loss", *self._latest_streams], 0)
        nonfinite.update(self._scalar_nonfinite)
        nonfinite.update(self._deriver.nonfinite)
        for stream, count in nonfinite.items():
            yield Sample("texwatch_nonfinite", {**run, "stream": stream}, count)
        for stream, count in self._drops.items():
            labels = {**run, "stream": stream}
            yield Sample("texwatch_client_dropped_rows", labels, count)

    def _term_samples(self) -> Iterator[Sample]:
        terms = sorted(k[len("term/") :] for k in self._latest_scalars if k.startswith("term/"))
        dead = 0
        for term in terms:
            labels = {**self.labels, "term": term}
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
        yield Sample("texwatch_dead_loss_terms", self.labels, dead)
