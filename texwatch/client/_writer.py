"""The background writer thread: batches queued rows into blocks and commits them to the store.

Like TensorBoard's ``_AsyncWriter``: a bounded queue, a daemon worker, a sentinel to stop it,
flush markers the caller waits on, and a worker exception kept for the caller. Unlike it, an
error never stops the worker: it is counted, the failed block is retried without its image
streams (so scalars survive a full disk), and the rest is dropped and counted. Every row taken
from the queue ends committed or counted in ``drops``, whatever fails, the error handling
included; a row that cannot be stored is dropped alone, its neighbours kept.

Unlike it too, the worker does not block on the queue: it wakes every ``POLL`` seconds (or when
``flush()``/``close()`` set ``wake``) and drains it. A ``put`` that wakes a blocked ``get``
makes the woken thread runnable, and on a busy machine the scheduler lets it preempt the
training thread: 26 µs median and 4.5 ms p90 per ``put`` between training steps on the 2-core
VM of docs/performance.md, against 5.6 µs and 7.4 µs for a ``put`` nobody waits on.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from texwatch.store import ITEMS, SCALARS, RunWriter, given_nan

from ._capture import Captured, Copy, resolve
from ._layout import stored_rows
from ._stats import Counters

__all__ = ["POLL", "Flush", "Layout", "Row", "STOP", "Writer", "as_row"]

STOP = object()
"""Sentinel: commit what is pending and end the thread."""

POLL = 0.02
"""Seconds between the writer's looks at the queue (at most ``flush_interval``)."""

_ITEM_COLUMNS = {"loss": np.float64, "timestep": np.float64, "sample_id": np.int64}
_MAX_BLOCK_ROWS = 1 << 16
_INT64_MAX = int(np.iinfo(np.int64).max)


@dataclass(slots=True)
class Row:
    """One ``record()`` call, as copied on the training thread."""

    step: int
    time: float
    loss: float | Copy | None = None
    scalars: dict[str, float | Copy] | None = None
    items: dict[str, Copy] | None = None  # timestep, sample_id
    images: dict[str, tuple[Copy, np.dtype[Any], str]] | None = None  # copy, stored, layout
    nbytes: int = 0  # image bytes reserved from the memory budget

    def counts(self) -> dict[str, int]:
        """Rows this call adds per table, from the copies' shapes (nothing is resolved)."""
        out = {SCALARS: 1}
        per_item = list((self.items or {}).values())
        if self.loss is not None and not isinstance(self.loss, float) and len(self.loss.shape):
            per_item.append(self.loss)
        if per_item:
            out[ITEMS] = int(per_item[0].shape[0])
        for name, (copy, _, layout) in (self.images or {}).items():
            out[name] = int(copy.shape[0]) if layout.startswith("N") else 1
        return out

    def copies(self) -> list[Captured]:
        """Every copy the row holds, to release once its rows are written or dropped."""
        out = [self.loss] if isinstance(self.loss, Captured) else []
        out += [v for v in (self.scalars or {}).values() if isinstance(v, Captured)]
        out += [v for v in (self.items or {}).values() if isinstance(v, Captured)]
        out += [c for c, *_ in (self.images or {}).values() if isinstance(c, Captured)]
        return out


class Layout:
    """Names for the copies of a row queued as a tuple by ``record()``'s signature cache.

    ``record()`` puts ``(layout, step, time, loss, values, items, images, nbytes)`` on the queue:
    a tuple is the one object ``SimpleQueue.put`` needs, where a ``Row`` would cost an
    ``__init__`` call and a dict per argument on the training thread. ``values`` line up with
    ``columns`` and ``items`` with ``item_keys``; ``as_row`` builds the ``Row`` here.
    """

    __slots__ = ("checkpoint", "columns", "item_keys")

    def __init__(
        self, columns: tuple[str, ...], item_keys: tuple[str, ...], checkpoint: bool
    ) -> None:
        self.columns = columns  # terms/weights/scalars columns, in call order
        self.item_keys = item_keys  # "sample_id", "timestep"
        self.checkpoint = checkpoint  # the row adds checkpoint = 1.0


def as_row(item: Row | tuple[Any, ...]) -> Row:
    """The ``Row`` of a queued item: a ``Row`` as is, or a ``record()`` tuple (see ``Layout``)."""
    if isinstance(item, Row):
        return item
    layout, step, when, loss, values, items, images, nbytes = item
    scalars: dict[str, float | Copy] | None = None
    if values or layout.checkpoint:
        scalars = dict(zip(layout.columns, values or (), strict=True))
        if layout.checkpoint:
            scalars["checkpoint"] = 1.0
    return Row(
        step,
        when,
        loss,
        scalars,
        dict(zip(layout.item_keys, items, strict=True)) if items else None,
        images,
        nbytes,
    )


class Flush:
    """Marker: commit everything queued before it, then set ``done``."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


def _as_float(value: float | Copy) -> float:
    if isinstance(value, float):
        return value
    array = resolve(value)
    return float(array) if array.ndim == 0 else float(array.astype(np.float64).mean())


class _Batch:
    """Rows taken from the queue and not yet committed, kept as columns."""

    def __init__(self) -> None:
        self.rows = 0
        self.item_rows = 0
        self.nbytes = 0
        self._steps: list[int] = []
        self._times: list[float] = []
        self._scalars: dict[str, list[tuple[int, float]]] = {}
        self._items: dict[str, list[np.ndarray]] = {k: [] for k in ("step", *_ITEM_COLUMNS)}
        self._streams: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        self.nonfinite: dict[str, int] = {}
        self._copies: list[Captured] = []

    def release(self) -> None:
        """Give the rows' buffers back (after their blocks were written or dropped)."""
        for captured in self._copies:
            captured.release()
        self._copies = []

    def add(self, row: Row) -> None:
        """Resolve the row's copies (waiting on CUDA events) and add it to the columns.

        Everything is resolved and checked before the batch changes, so a row that fails leaves
        no trace.
        """
        if not 0 <= row.step <= _INT64_MAX:
            raise ValueError(f"step {row.step} does not fit int64")
        columns: dict[str, float | Copy] = {}
        item_values = dict(row.items or {})
        if row.loss is not None:
            columns["loss"] = row.loss
            if not isinstance(row.loss, float) and resolve(row.loss).ndim == 1:
                item_values["loss"] = row.loss
        columns.update(row.scalars or {})
        numbers = {name: _as_float(value) for name, value in columns.items()}
        # A NaN loss or term reads like a row without one; a marker says it was given, and NaN.
        for name in [k for k in numbers if k == "loss" or k.startswith("term/")]:
            if math.isnan(numbers[name]):
                numbers[given_nan(name)] = 1.0
        items: dict[str, np.ndarray] = {}
        if item_values:
            arrays = {k: resolve(v).reshape(-1) for k, v in item_values.items()}
            n = next(iter(arrays.values())).shape[0]
            items["step"] = np.full(n, row.step, dtype=np.int64)
            for key, dtype in _ITEM_COLUMNS.items():
                values = arrays.get(key)
                fill = -1 if key == "sample_id" else np.nan
                items[key] = (
                    np.full(n, fill, dtype=dtype) if values is None else values.astype(dtype)
                )
        images: dict[str, np.ndarray] = {}
        for name, (captured, stored, layout) in (row.images or {}).items():
            images[name] = stored_rows(resolve(captured), layout, stored)

        self._copies += row.copies()
        index = self.rows
        self.rows += 1
        self.nbytes += row.nbytes
        self._steps.append(row.step)
        self._times.append(row.time)
        for name, number in numbers.items():
            if not math.isfinite(number):
                self.nonfinite[name] = self.nonfinite.get(name, 0) + 1
            self._scalars.setdefault(name, []).append((index, number))
        for key, values in items.items():
            self._items[key].append(values)
        self.item_rows += len(items.get("step", ()))
        for name, data in images.items():
            bad = int((~np.isfinite(data).reshape(data.shape[0], -1).all(axis=1)).sum())
            if bad:
                self.nonfinite[name] = self.nonfinite.get(name, 0) + bad
            steps, blocks = self._streams.setdefault(name, ([], []))
            steps.append(np.full(data.shape[0], row.step, dtype=np.int64))
            blocks.append(data)

    def tables(self, images: bool = True) -> dict[str, dict[str, np.ndarray]]:
        """The batch as ``{table: {column: block}}``; without image streams if ``images=False``."""
        out: dict[str, dict[str, np.ndarray]] = {}
        if self.rows:
            scalars = {
                "step": np.asarray(self._steps, dtype=np.int64),
                "time": np.asarray(self._times, dtype=np.float64),
            }
            for name, pairs in self._scalars.items():
                column = np.full(self.rows, np.nan)
                index, values = zip(*pairs, strict=True)
                column[list(index)] = values
                scalars[name] = column
            out[SCALARS] = scalars
        if self._items["step"]:
            out[ITEMS] = {k: np.concatenate(v) for k, v in self._items.items()}
        if images:
            for name, (steps, blocks) in self._streams.items():
                out[name] = {"step": np.concatenate(steps), "data": np.concatenate(blocks)}
        return out

    def row_counts(self) -> dict[str, int]:
        """Rows per table, kept as plain counts: taking them cannot fail."""
        counts = {SCALARS: self.rows, ITEMS: self.item_rows, **self.stream_rows()}
        return {table: n for table, n in counts.items() if n}

    def stream_rows(self) -> dict[str, int]:
        return {name: sum(len(s) for s in steps) for name, (steps, _) in self._streams.items()}


class Writer(threading.Thread):
    """Takes rows from ``inbox``, commits them on a size or time policy, and on flush markers.

    ``wake`` is set by whoever queues a ``Flush`` or ``STOP`` (never by ``record()``).
    """

    def __init__(
        self,
        store: RunWriter,
        inbox: queue.SimpleQueue[Any],
        counters: Counters,
        flush_interval: float,
        block_bytes: int,
    ) -> None:
        super().__init__(name=f"texwatch-writer[{store.name}]", daemon=True)
        self._store = store
        self._inbox = inbox
        self._counters = counters
        self._interval = flush_interval
        self._block_bytes = block_bytes
        self._poll = min(POLL, flush_interval)
        self._published = -1  # counters version last written
        self.wake = threading.Event()

    def run(self) -> None:
        batch = _Batch()
        deadline: float | None = None
        while True:
            timeout = self._poll
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - time.monotonic()))
            self.wake.wait(timeout)
            self.wake.clear()  # before draining: a marker queued from here on wakes the next wait
            while True:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, (Row, tuple)):
                    self._add(batch, item)
                    if deadline is None:
                        deadline = time.monotonic() + self._interval
                    if batch.nbytes < self._block_bytes and batch.rows < _MAX_BLOCK_ROWS:
                        continue
                self._commit(batch)  # a full block, a flush marker or STOP
                batch, deadline = _Batch(), None
                if isinstance(item, Flush):
                    item.done.set()
                elif item is STOP:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                self._commit(batch)
                batch, deadline = _Batch(), None

    def finish(self, finished: bool = False) -> None:
        """Commit the rows left in the queue once the thread has stopped; on the closing thread.

        ``record()`` takes no lock against ``close()``: a call that passed its closed check
        before ``close()`` began may put its row after ``STOP``. ``close()`` joins the thread,
        then calls this, so such a row is committed too (a later one is taken back by the
        ``record()`` call itself, which then raises). ``finished``: the recorder closes cleanly,
        and the last commit marks the run finished.
        """
        batch = _Batch()
        markers: list[Flush] = []
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Flush):
                markers.append(item)
            elif item is not STOP:
                self._add(batch, item)
        if batch.rows:
            self._commit(batch)
        if finished:
            try:
                self._publish(force=True, finished=True)
            except Exception as err:  # the run reads as unfinished, as after a crash
                self._counters.fail(err)
        for marker in markers:
            marker.done.set()

    def _add(self, batch: _Batch, item: Row | tuple[Any, ...]) -> None:
        row: Row | None = None
        try:
            row = as_row(item)
            batch.add(row)
        except Exception as err:  # a failed CUDA copy, a bad value: count it, keep going
            self._counters.fail(err)
            if row is None:  # a malformed item: nothing to read its rows from
                self._counters.drop(SCALARS, 1)
                return
            try:
                counts = row.counts()
            except Exception:  # shapes unreadable: the row itself is still counted
                counts = {SCALARS: 1}
            for table, rows in counts.items():
                self._counters.drop(table, rows)
            self._counters.release(row.nbytes)
            for captured in row.copies():
                captured.release()

    def _commit(self, batch: _Batch) -> None:
        """Write the batch and publish it; on failure retry without images, then drop.

        Never raises: every failure is counted and kept for flush()/close(), and the rows not
        committed when anything fails, the error handling included, are counted as dropped.
        """
        pending = batch.row_counts()
        failed = committed = False
        try:
            if batch.nonfinite:
                self._counters.add_nonfinite(batch.nonfinite)
            streams = batch.stream_rows()
            for images in (True, False) if streams else (False,):
                if not batch.rows:
                    break
                try:
                    for table, columns in batch.tables(images).items():
                        self._store.append(table, columns)
                    self._publish(force=True)
                    pending, committed = {}, True
                    return
                except Exception as err:
                    failed = True
                    self._counters.fail(err)
                    self._rollback()
                    if images:  # the retry goes without them
                        for table, rows in streams.items():
                            self._counters.drop(table, pending.pop(table, rows))
        except Exception as err:
            if not failed:  # else the same failure again, already counted
                self._counters.fail(err)
            failed = True
            self._rollback()
        finally:
            for table, rows in pending.items():
                self._counters.drop(table, rows)
            if not committed:
                # counters only, so readers see the drops and errors; if this fails too, the
                # counters stay pending and the next commit publishes them
                with contextlib.suppress(Exception):
                    self._publish()
            batch.release()
            self._counters.release(batch.nbytes)

    def _rollback(self) -> None:
        try:
            self._store.rollback()
        except Exception as err:
            self._counters.fail(err)

    def _publish(self, force: bool = False, finished: bool = False) -> None:
        drops, nonfinite, errors, names, version = self._counters.published()
        if not force and version == self._published:
            return
        committed = self._store.commit(drops, nonfinite, errors, names=names, finished=finished)
        self._published = version
        self._counters.set_committed(committed)
