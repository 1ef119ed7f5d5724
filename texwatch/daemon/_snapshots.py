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
from pathlib import Path
from typing import Any

import numpy as np

from texwatch import plots
from texwatch.detectors import SPIKE_RULES
from texwatch.store import ITEMS, SCALARS, Run, latest_rows, open_run

from ._runs import RunWorker

__all__ = ["SnapshotWriter", "write_atomic"]

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


class SnapshotWriter:
    """Writes a run's snapshot each time its steps cross a multiple of ``every``.

    Args:
        directory: where ``<run>-<id>/<step>.png|.json`` go; None for ``snapshots/`` next to
            each store.
        every: steps between snapshots.
    """

    def __init__(self, directory: Path | None, every: int) -> None:
        if every < 1:
            raise ValueError(f"Expected argument `--snapshot-every` >= 1 but got {every!r}")
        self._directory = directory
        self._every = every
        self._last_interval: dict[str, int] = {}
        self._rows_at_last: dict[str, dict[str, int]] = {}

    def folder(self, worker: RunWorker) -> Path:
        """The folder holding ``worker``'s snapshots (see :func:`snapshot_folder_name`)."""
        base = self._directory if self._directory is not None else worker.path.parent / "snapshots"
        return base / snapshot_folder_name(worker.name, worker.run_id)

    def on_batch(self, worker: RunWorker, cursor: dict[str, int]) -> None:
        """Write a snapshot when the newest derived step entered a new interval."""
        step = worker.deriver.last_step
        if step < 0:
            return
        interval = step // self._every
        previous = self._last_interval.setdefault(worker.run_id, interval)
        if interval > previous:
            self.write(worker, cursor)

    def write(self, worker: RunWorker, cursor: dict[str, int]) -> Path | None:
        """Write the snapshot of the newest step now; the PNG's path, or None with no rows."""
        step = worker.deriver.last_step
        if step < 0:
            return None
        run = open_run(worker.path)
        since = self._rows_at_last.get(worker.run_id, {})
        summary = self._summary(run, worker, cursor, since)
        folder = self.folder(worker)
        png = self._figure(run, worker, step, summary)
        if png is not None:
            write_atomic(folder / f"{step}.png", png)
        body = json.dumps(summary, indent=2, sort_keys=True, allow_nan=False).encode()
        write_atomic(folder / f"{step}.json", body)
        self._last_interval[worker.run_id] = step // self._every
        self._rows_at_last[worker.run_id] = dict(cursor)
        return folder / f"{step}.png"

    def _summary(
        self, run: Run, worker: RunWorker, cursor: dict[str, int], since: dict[str, int]
    ) -> dict[str, Any]:
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
        for table, values in worker.latest_streams.items():
            streams.setdefault(table, {k: _finite_or_none(v) for k, v in values.items()})
        return {
            "run": worker.name,
            "store": str(worker.path),
            "step": worker.deriver.last_step,
            "interval_start_rows": since,
            "interval_end_rows": cursor,
            "streams": streams,
            "loss": loss,
            "spike_counts": dict(worker.deriver.loss_monitor.counts),
            "nonfinite": worker.deriver.nonfinite,
        }

    def _figure(
        self, run: Run, worker: RunWorker, step: int, summary: dict[str, Any]
    ) -> bytes | None:
        # Rows up to the cursor, not the commit marker: while a backlog is caught up, an interval's
        # snapshot shows that interval's samples.
        derived = worker.deriver.cursor
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
        hist = _loss_history(run, worker.deriver.cursor.get(SCALARS, 0))
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
            title=f"{worker.name} — {stream} at step {step}",
        )
