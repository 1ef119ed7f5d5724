"""Snapshots: one PNG and one JSON per run and interval, written atomically.

``<dir>/<run>-<id>/<step>.png`` shows the newest samples, their spectrum, radial profile and ACF,
the loss with EMA and spikes, and the diff heatmap when a target exists; ``<step>.json`` holds
every metric of the interval (means over the interval's derived rows) and its spikes. ``<id>`` is
the first 8 characters of the run's unique id, so runs that share a name keep their own folders.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from texwatch import plots
from texwatch._location import Where
from texwatch.detectors import SPIKE_RULES
from texwatch.store import ITEMS, SCALARS, Run, latest_rows, open_run

from ._runs import RunWorker

__all__ = ["SnapshotWriter", "newest_snapshot", "write_atomic"]

_log = logging.getLogger("texwatch.daemon")
_LOSS_HISTORY = 4096  # derived loss rows drawn in a snapshot
_PREFERRED = ("pred", "latents", "target")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename: never half a file.

    The file gets mode 0644 less the process umask, as a plain ``open()`` of a snapshot would
    (``tempfile`` makes 0600 files, which a dashboard or web server beside us could not read).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def snapshot_folder_name(name: str, run_id: str) -> str:
    """The snapshot folder of a run: ``<run name>-<first 8 of the run id>``, safe for any name.

    The id keeps apart runs that share a name (a job started twice, the ranks of an
    ``all_ranks`` job).
    """
    return f"{_safe_name(name)}-{_safe_name(run_id[:8])}"


def _steps(folder: Path, suffix: str) -> Iterator[tuple[int, Path]]:
    """(step, path) of the ``<step><suffix>`` files in ``folder`` (none if it does not exist)."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        stem = entry.name.removesuffix(suffix)
        if stem != entry.name and stem.isdigit() and entry.is_file():
            yield int(stem), Path(entry.path)


def newest_snapshot(folder: Path, suffix: str) -> Path | None:
    """The ``<step><suffix>`` file (``.png`` or ``.json``) of the highest step in ``folder``."""
    return max(_steps(folder, suffix), default=(-1, None))[1]


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _loss_history(run: Run, rows: int) -> dict[str, np.ndarray]:
    """The loss panel's series: the newest derived rows, the latest row per step, by step.

    A resumed run stores its repeated steps again; readers keep the latest row of a step, and so
    does the panel (drawn in storage order, its lines would jump back at each resume).
    """
    names = ("step", "loss", "loss_ema", "spike", "warn")
    if not rows:
        return {name: np.empty(0) for name in names}
    cols = run.derived(SCALARS, max(0, rows - _LOSS_HISTORY), rows)
    keep = latest_rows(cols["step"])
    return {name: cols[name][keep] for name in names}


@dataclass(frozen=True)
class _Request:
    """A snapshot to write: what it shows of the run, taken on the run's turn (the renderer
    never reads a worker that its next turn is changing)."""

    path: Where
    name: str
    run_id: str
    step: int
    cursor: dict[str, int]
    latest_streams: dict[str, dict[str, float]]
    spike_counts: dict[str, int]
    nonfinite: dict[str, int]
    live: bool  # its interval is the newest committed one: no later snapshot supersedes it
    since: float  # monotonic time of the oldest request this one superseded


def _request(worker: RunWorker, cursor: dict[str, int], live: bool, since: float) -> _Request:
    deriver = worker.deriver
    return _Request(
        path=worker.path,
        name=worker.name,
        run_id=worker.run_id,
        step=deriver.last_step,
        cursor=dict(cursor),
        latest_streams=worker.latest_streams,
        spike_counts=dict(deriver.loss_monitor.counts),
        nonfinite=dict(deriver.nonfinite),
        live=live,
        since=since,
    )


class SnapshotWriter:
    """Writes a run's snapshot each time its steps cross a multiple of ``every``, on a thread of
    its own, so rendering (about a third of a second of CPU) never holds up derivation.

    A run at its live edge gets one snapshot per interval, written at once. While a run catches
    up a backlog, each interval's request replaces the last, and one is written when the run
    reaches its newest committed interval, or once a request has waited ``defer`` seconds (a
    run that never catches up still shows progress).

    Args:
        directory: where ``<run>-<id>/<step>.png|.json`` go; None for ``snapshots/`` next to
            each store.
        every: steps between snapshots.
        on_error: called with the run id, its store and the exception when a snapshot fails.
        defer: longest a backlog's snapshot waits, in seconds.
    """

    def __init__(
        self,
        directory: Path | None,
        every: int,
        on_error: Callable[[str, Where, Exception], None],
        *,
        defer: float = 60.0,
    ) -> None:
        if every < 1:
            raise ValueError(f"Expected argument `--snapshot-every` >= 1 but got {every!r}")
        self._directory = directory
        self._every = every
        self._on_error = on_error
        self._defer = defer
        self._last_interval: dict[str, int] = {}  # turn threads: the interval last requested
        self._rows_at_last: dict[str, dict[str, int]] = {}  # renders: cursor at the last one
        self._rendered_step: dict[str, int] = {}  # renders: step of the last one
        self._newest: dict[str, int] = {}  # run id -> step of its newest snapshot on disk
        self._newest_lock = threading.Lock()
        self._pending: dict[str, _Request] = {}
        self._wake = threading.Condition()
        self._render_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="texwatch-snapshots", daemon=True)
        self._thread.start()

    def folder(self, worker: RunWorker) -> Path:
        """Where the snapshots of ``worker``'s run go."""
        return self._folder_of(worker.path, worker.name, worker.run_id)

    def _folder_of(self, path: Where, name: str, run_id: str) -> Path:
        base = self._directory
        if base is None:  # beside a local store; a run on object storage: here
            base = path.parent / "snapshots" if isinstance(path, Path) else Path("snapshots")
        return base / snapshot_folder_name(name, run_id)

    def newest_step(self, worker: RunWorker) -> int | None:
        """The step of the run's newest snapshot, or None before its first: the folder is read
        once (snapshots an earlier texwatchd wrote), then each render updates it."""
        with self._newest_lock:
            step = self._newest.get(worker.run_id)
        if step is None:
            found = max((s for s, _ in _steps(self.folder(worker), ".json")), default=-1)
            with self._newest_lock:
                step = self._newest.setdefault(worker.run_id, found)
        return None if step < 0 else step

    def on_batch(self, worker: RunWorker, cursor: dict[str, int]) -> None:
        """On the run's turn: ask for a snapshot when the newest derived step entered a new
        interval."""
        step = worker.deriver.last_step
        if step < 0:
            return
        interval = step // self._every
        with self._wake:
            previous = self._last_interval.setdefault(worker.run_id, interval)
            if interval <= previous:
                return
            self._last_interval[worker.run_id] = interval
        newest = worker.newest_committed_step()
        live = newest is None or newest // self._every <= interval
        with self._wake:
            older = self._pending.get(worker.run_id)
            since = older.since if older is not None else time.monotonic()
            self._pending[worker.run_id] = _request(worker, cursor, live, since)
            self._wake.notify()

    def write_now(self, worker: RunWorker) -> Path | None:
        """Write the snapshot of ``worker``'s newest step now, on this thread; its PNG, or None
        with no rows. A request of the run still waiting is dropped: this one is newer."""
        if worker.deriver.last_step < 0:
            return None
        with self._wake:
            self._pending.pop(worker.run_id, None)
            self._last_interval[worker.run_id] = worker.deriver.last_step // self._every
        return self._render(_request(worker, worker.deriver.cursor, True, time.monotonic()))

    def close(self) -> None:
        """Write the snapshots due now, then stop the renderer; a backlog's deferred request is
        dropped. Safe twice."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._wake:
                request = self._next_ready()
                while request is None and not self._closed:
                    self._wake.wait(self._wait_seconds())
                    request = self._next_ready()
                if request is None:
                    return
                del self._pending[request.run_id]
            try:
                self._render(request)
            except Exception as err:  # a snapshot must never stop texwatchd
                self._on_error(request.run_id, request.path, err)

    def _next_ready(self) -> _Request | None:
        now = time.monotonic()
        ready = [r for r in self._pending.values() if r.live or now - r.since >= self._defer]
        return min(ready, key=lambda r: r.since) if ready else None

    def _wait_seconds(self) -> float | None:
        if not self._pending:
            return None
        oldest = min(r.since for r in self._pending.values())
        return max(0.0, oldest + self._defer - time.monotonic())

    def _render(self, request: _Request) -> Path | None:
        with self._render_lock:
            if request.step < self._rendered_step.get(request.run_id, -1):
                return None  # write_now wrote a newer one meanwhile
            run = open_run(request.path)
            since = self._rows_at_last.get(request.run_id, {})
            summary = self._summary(run, request, since)
            folder = self._folder_of(request.path, request.name, request.run_id)
            png = self._figure(run, request, summary)
            if png is not None:
                write_atomic(folder / f"{request.step}.png", png)
            body = json.dumps(summary, indent=2, sort_keys=True, allow_nan=False).encode()
            write_atomic(folder / f"{request.step}.json", body)
            self._rows_at_last[request.run_id] = dict(request.cursor)
            self._rendered_step[request.run_id] = request.step
            with self._newest_lock:
                newest = self._newest.get(request.run_id, -1)
                self._newest[request.run_id] = max(newest, request.step)
            return folder / f"{request.step}.png"

    def _summary(self, run: Run, request: _Request, since: dict[str, int]) -> dict[str, Any]:
        cursor = request.cursor
        streams: dict[str, dict[str, float | None]] = {}
        loss: dict[str, Any] = {}
        for table, rows in cursor.items():
            start = since.get(table, 0)
            if table == ITEMS or rows <= start:
                continue
            cols = run.derived(table, start, rows)
            ema_last = math.nan
            if table == SCALARS:  # one row a step (image tables: one row an item)
                ema_last = float(cols["loss_ema"][-1])  # the newest, in storage order
                # A resumed run's repeated steps: the latest row of each wins, ordered by step,
                # as in the loss panel and the report.
                keep = latest_rows(cols["step"])
                cols = {k: v[keep] for k, v in cols.items()}
            means = {
                k: _finite_or_none(float(np.nanmean(v))) if np.isfinite(v).any() else None
                for k, v in cols.items()
                if k != "step" and v.dtype.kind == "f"
            }
            if table == SCALARS:
                flagged = cols["spike"] == 1
                loss = {
                    "mean": means.get("loss"),
                    "ema_last": _finite_or_none(ema_last),
                    "spikes": [
                        {"step": int(s), "rule": SPIKE_RULES[int(r) - 1]}
                        for s, r in zip(
                            cols["step"][flagged], cols["spike_rule"][flagged], strict=True
                        )
                    ],
                    "warnings": int(np.sum(cols["warn"] == 1)),
                    "terms": {k: v for k, v in means.items() if k.startswith(("share/", "dead/"))},
                }
            else:
                streams[table] = means
        # A stream with no row in this interval shows its newest values.
        for table, values in request.latest_streams.items():
            streams.setdefault(table, {k: _finite_or_none(v) for k, v in values.items()})
        return {
            "run": request.name,
            "store": str(request.path),
            "step": request.step,
            "interval_start_rows": since,
            "interval_end_rows": cursor,
            "streams": streams,
            "loss": loss,
            "spike_counts": request.spike_counts,
            "nonfinite": request.nonfinite,
        }

    def _figure(self, run: Run, request: _Request, summary: dict[str, Any]) -> bytes | None:
        # Rows up to the cursor, not the commit marker: while a backlog is caught up, an interval's
        # snapshot shows that interval's samples.
        derived = request.cursor
        stream = next((s for s in _PREFERRED if derived.get(s)), None)
        if stream is None:
            stream = next((s for s in derived if s not in (SCALARS, ITEMS) and derived[s]), None)
        if stream is None:
            return None
        rows = derived[stream]
        steps, data = run.stream(stream, max(0, rows - 16), rows)
        newest = steps == steps[-1]
        images = data[newest].astype(np.float32)
        target = None
        if stream == "pred" and derived.get("target"):
            t_steps, t_data = run.stream(
                "target", max(0, derived["target"] - 16), derived["target"]
            )
            match = t_steps == steps[-1]
            if match.sum() == len(images):
                target = t_data[match].astype(np.float32)
        hist = _loss_history(run, derived.get(SCALARS, 0))
        ref = summary["streams"].get(stream, {}).get("ref_radius_bin")
        metrics = {
            k: v
            for k, v in summary["streams"].get(stream, {}).items()
            if v is not None and "/" not in k
        }
        return plots.snapshot_figure(
            images=images,
            loss_steps=hist["step"],
            loss=hist["loss"],
            loss_ema=hist["loss_ema"],
            spike_steps=[int(s) for s in hist["step"][hist["spike"] == 1]],
            warn_steps=[int(s) for s in hist["step"][hist["warn"] == 1]],
            target=target,
            ref_radius=ref,
            metrics=metrics,
            title=f"{request.name} — {stream} at step {request.step}",
        )
