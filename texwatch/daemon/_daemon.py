"""texwatchd's main loop: find runs, give each a turn, export, snapshot, survive faults.

Each turn of a run (open it, derive one batch, commit it) runs on a thread of its own, so a read
that never returns (a hung NFS file) holds up that run only. A round gives every run one turn and
waits at most ``turn_seconds`` for it before going on to the next run; a run whose turn is still
busy gets no new one, and one busy for longer than ``stall_after`` is reported stalled until it
returns. Each run sizes its batches so a turn takes about ``turn_seconds``: a backlog is caught up
one bounded batch at a time, interleaved with the other runs.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from texwatch._location import ObjectPath, Where, is_plain_file
from texwatch.derive import DerivedBatch, DeriveSettings
from texwatch.errors import StoreFormatError, StoreMissingError, TexwatchError
from texwatch.store import run_paths

from ._exporter import MetricsBoard, Sample
from ._runs import RunWorker
from ._shard import Shard
from ._snapshots import SnapshotWriter, newest_snapshot, snapshot_folder_name
from ._watch import Watcher

__all__ = ["Daemon", "DaemonOptions"]

_log = logging.getLogger("texwatch.daemon")


@dataclass(frozen=True)
class DaemonOptions:
    """What texwatchd watches and how often it looks (the non-derivation flags)."""

    stores: tuple[Where, ...] = ()
    root: Where | None = None
    poll: float | None = None
    rescan: float = 5.0
    batch_rows: int = 256
    snapshot_dir: Path | None = None
    snapshot_every: int = 1000
    forget_after: float = 24 * 3600.0
    stall_after: float = 60.0
    turn_seconds: float = 0.5
    shard: Shard = Shard(0, 1)


REMOTE_POLL = 1.0
"""Default seconds between looks at a run's commit marker on object storage (``--poll``)."""


def _is_store(path: Where) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def _runs_at(path: Where) -> dict[Where, bool]:
    """The run stores at ``path`` and whether each is a rank of a per-rank job: ``path``
    itself, or the ``rank<r>`` runs of a per-rank folder."""
    try:
        ranks = run_paths(path)
    except (OSError, ValueError):  # unreadable: opening it names the fault
        ranks = []
    if not ranks or ranks == [path]:
        return {path: False}
    return dict.fromkeys(ranks, True)


class _Run:
    """One watched store: its worker once opened, and the turn in flight on its thread."""

    def __init__(self, path: Where, per_rank: bool) -> None:
        self.path = path
        self.per_rank = per_rank
        self.worker: RunWorker | None = None
        self.thread: threading.Thread | None = None
        self.finished = threading.Event()
        self.awaited = False  # the round is waiting for this turn (it then needs no wake)
        self.started = 0.0
        self.rows = 0
        self.error: Exception | None = None
        self.stalled = False
        self.announced = False

    @property
    def busy(self) -> bool:
        """A turn was started and is not handled yet (it may have finished meanwhile)."""
        return self.thread is not None


class Daemon:
    """Serves every watched run: a turn each per round, results on ``board``, snapshots.

    Args:
        options: what to watch.
        settings: how runs are derived.
        board: where results are published (the exporter's collector).
    """

    def __init__(
        self, options: DaemonOptions, settings: DeriveSettings, board: MetricsBoard
    ) -> None:
        if options.root is None and not options.stores:
            raise ValueError("Expected `--store PATH` or `--root DIR` but got neither")
        if options.root is not None and is_plain_file(options.root):
            raise ValueError(
                f"Expected argument `--root` to be a folder but got {str(options.root)!r}"
            )
        for flag, seconds in (
            ("--stall-after", options.stall_after),
            ("--turn-seconds", options.turn_seconds),
        ):
            if not seconds > 0:
                raise ValueError(f"Expected argument `{flag}` > 0 seconds but got {seconds!r}")
        self._options = options
        self._settings = settings
        self._board = board
        self._stop = threading.Event()
        self._stop_at: float | None = None  # monotonic end of a graceful stop's serving
        self._once = False
        self._runs: dict[Where, _Run] = {}
        self._owners: dict[str, Where] = {}  # run id -> the store serving it
        self._lock = threading.Lock()  # _owners, failure records, turns' ends: shared with turns
        self._failures: dict[Where, tuple[str, str]] = {}
        self._snapshot_failures: dict[str, str] = {}
        self._waiting: set[Where] = set()
        self._snapshot_folders: dict[str, Path] = {}  # served runs' folder names -> folders
        self._snapshots = SnapshotWriter(
            options.snapshot_dir, options.snapshot_every, self._snapshot_failed
        )
        local_root = options.root if isinstance(options.root, Path) else None
        remote = isinstance(options.root, ObjectPath) or any(
            isinstance(p, ObjectPath) for p in options.stores
        )
        # object stores send no events: their markers are looked at every --poll seconds
        rescan = min(options.rescan, options.poll or REMOTE_POLL) if remote else options.rescan
        self._watcher = Watcher(
            root=local_root, poll=None if remote else options.poll, rescan=rescan
        )
        # an object-store root's children: (this shard's?, their runs), kept between listings
        self._remote_runs: dict[Where, tuple[bool, dict[Where, bool]]] = {}
        self._remote_stores: dict[Where, dict[Where, bool]] = {}  # --store runs, object storage
        self._listed_at = -math.inf

    @property
    def workers(self) -> dict[str, RunWorker]:
        """The runs being served, by run id."""
        return {r.worker.run_id: r.worker for r in self._runs.values() if r.worker is not None}

    @property
    def failures(self) -> dict[Where, str]:
        """The stores failing now (their last error) and why, as ``"kind: message"``."""
        with self._lock:
            return {p: f"{kind}: {message}" for p, (kind, message) in self._failures.items()}

    def stop(self, grace: float = 0.0) -> None:
        """Ask the loop to end after the current turn (SIGTERM), or to go on deriving and
        serving for ``grace`` more seconds first, so Prometheus scrapes the runs' last state
        (a run that just finished) before texwatchd goes. A second call ends it at once."""
        if grace > 0 and self._stop_at is None:
            self._stop_at = time.monotonic() + grace
            _log.info("stopping in %.0f s; until then the runs are served as usual", grace)
        else:
            self._stop.set()
        self._watcher.wake()

    def newest_snapshot(self, name: str, suffix: str) -> Path | None:
        """The newest ``<step><suffix>`` (``.png`` or ``.json``) in the snapshot folder called
        ``name`` of a run being served, or None: only these are served over HTTP, so no
        request names a path of its own."""
        with self._lock:
            folder = self._snapshot_folders.get(name)
        return None if folder is None else newest_snapshot(folder, suffix)

    def close(self) -> None:
        """Stop watching and wait for turns in flight, a stalled one no longer; safe twice."""
        self._stop.set()
        self._watcher.close()
        for run in self._runs.values():
            if run.thread is None:
                continue
            run.thread.join(max(0.0, run.started + self._options.stall_after - time.monotonic()))
            if run.thread.is_alive():
                _log.warning("%s: its turn is stalled; leaving it behind", run.path)
        self._snapshots.close()

    # --- finding runs ---------------------------------------------------------------------------

    def _wait_for(self, path: Where, what: str) -> None:
        """A path that does not exist yet: waited for while serving, a failure with ``--once``."""
        if self._once:
            err = StoreMissingError(f"{what} {str(path)!r} does not exist", path)
            self._report(path, err.kind, str(err))
        elif path not in self._waiting:
            self._waiting.add(path)
            _log.info("waiting for %s %s to appear", what, path)

    def _discover(self) -> list[_Run]:
        """The runs to serve now, new ones added and vanished ones dropped."""
        found: dict[Where, bool] = {}
        shard = self._options.shard
        for path in self._options.stores:
            known = self._remote_stores.get(path)
            if known is not None:  # a run on object storage, already found: its marker tells
                found.update(known)
            elif path.exists():
                self._waiting.discard(path)
                runs = _runs_at(path.resolve()) if shard.owns(path) else {}
                found.update(runs)
                if isinstance(path, ObjectPath) and runs in ({}, {path: False}):
                    self._remote_stores[path] = runs  # another shard's, or a single run
            else:
                self._wait_for(path, "run store")
        root = self._options.root
        if isinstance(root, ObjectPath):
            found.update(self._remote_root(root))
        elif root is not None:
            if self._watcher.watch_root():
                self._waiting.discard(root)
                for child in sorted(root.glob("*.zarr")):
                    if _is_store(child) and shard.owns(child):
                        found.update(_runs_at(child.resolve()))
            else:
                self._wait_for(root, "--root folder")
        for path in [p for p in self._runs if p not in found]:
            self._vanished(self._runs[path])
        for path, per_rank in found.items():
            self._runs.setdefault(path, _Run(path, per_rank))
        return [self._runs[p] for p in found]

    def _remote_root(self, root: ObjectPath) -> dict[Where, bool]:
        """The runs under an object-store root, listed every ``--rescan``. A new child is read
        once; only a per-rank job (whose ranks may grow) or a child that is not a store yet is
        read again at the next listing."""
        if time.monotonic() - self._listed_at >= self._options.rescan:
            self._listed_at = time.monotonic()
            children = [c for c in root.iterdir() if c.name.endswith(".zarr")]
            if children:
                self._waiting.discard(root)
            elif root not in self._waiting:
                self._wait_for(root, "--root prefix")
            known, self._remote_runs = self._remote_runs, {}
            for child in children:
                entry = known.get(child)
                if entry is None or (entry[0] and entry[1] != {child: False}):
                    owned = self._options.shard.owns(child)
                    runs = _runs_at(child) if owned and _is_store(child) else {}
                    entry = (owned, runs)
                self._remote_runs[child] = entry
        return {p: r for _, runs in self._remote_runs.values() for p, r in runs.items()}

    def _vanished(self, run: _Run) -> None:
        if run.busy:
            return  # dropped once its turn is handled
        if run.worker is not None and not run.path.exists():
            err = StoreMissingError(f"run store {str(run.path)!r} was deleted", run.path)
            self._report(run.path, err.kind, str(err))
        self._drop(run)

    def _drop(self, run: _Run) -> None:
        self._runs.pop(run.path, None)
        self._watcher.remove_store(run.path)
        if run.worker is not None:
            self._board.forget(run.worker.run_id)
            with self._lock:
                self._owners.pop(run.worker.run_id, None)
                name = snapshot_folder_name(run.worker.name, run.worker.run_id)
                self._snapshot_folders.pop(name, None)
            run.worker = None

    # --- turns ----------------------------------------------------------------------------------

    def _claim(self, worker: RunWorker, path: Where) -> None:
        """Serve each run id from one store only: a copied store would overwrite its series."""
        with self._lock:
            owner = self._owners.setdefault(worker.run_id, path)
        if owner != path:
            raise StoreFormatError(
                f"run store {str(path)!r} holds run_id {worker.run_id!r}, already served from "
                f"{str(owner)!r} (a copy?); give the copy a new run_id in its zarr.json",
                path,
            )

    def _turn(self, run: _Run) -> None:
        """One turn, on the run's own thread: open the run if needed and derive one batch."""
        try:
            if run.worker is None:
                worker = RunWorker(
                    run.path,
                    self._settings,
                    batch_rows=self._options.batch_rows,
                    turn_seconds=None if self._once else self._options.turn_seconds,
                    on_batch=self._on_batch,
                    per_rank=run.per_rank,
                )
                self._claim(worker, run.path)
                run.worker = worker
            run.rows = run.worker.step()
        except Exception as err:  # handed to the loop, which counts and logs it
            run.error = err
        finally:
            with self._lock:
                run.finished.set()
                late = not run.awaited
            if late:  # the round went on without it: wake the loop to harvest it
                self._watcher.wake()

    def _start(self, run: _Run) -> None:
        run.finished.clear()
        run.rows, run.error = 0, None
        run.started = time.monotonic()
        run.awaited = True
        run.thread = threading.Thread(
            target=self._turn, args=(run,), name=f"texwatch-run-{run.path.name}", daemon=True
        )
        run.thread.start()

    def _harvest(self, run: _Run) -> int:
        """Handle a finished turn: count its failure or publish its results; rows derived."""
        assert run.thread is not None
        run.thread.join()
        run.thread = None
        took = time.monotonic() - run.started
        if run.stalled:
            run.stalled = False
            _log.info("%s: its turn returned after %.0f s", run.path, took)
        if run.error is not None:
            self._fail(run, run.error)
            return 0
        worker = run.worker
        assert worker is not None
        if not run.announced:
            run.announced = True
            self._watcher.add_store(run.path)
            with self._lock:
                name = snapshot_folder_name(worker.name, worker.run_id)
                self._snapshot_folders[name] = self._snapshots.folder(worker)
            _log.info("serving run %r (id %s) from %s", worker.name, worker.run_id, run.path)
        self._stream_failures(run.path, worker)
        self._board.observe_processing(worker.run_id, worker.labels, took)
        idle = time.time() - worker.last_activity
        if idle > self._options.forget_after:
            if worker.run_id in self._board.runs():
                _log.info("%s: no commit for %.0f s; its series are dropped", run.path, idle)
                self._board.forget(worker.run_id)
        else:
            extra = [Sample("texwatch_run_stalled", worker.labels, 0.0)]
            snapshot = self._snapshots.newest_step(worker)
            if snapshot is not None:
                folder = snapshot_folder_name(worker.name, worker.run_id)
                labels = {**worker.labels, "folder": folder}
                extra.append(Sample("texwatch_snapshot_step", labels, snapshot))
            self._board.publish(worker.run_id, [*worker.samples(), *extra])
        return run.rows

    def _check_stalled(self, run: _Run) -> None:
        took = time.monotonic() - run.started
        if run.stalled or took < self._options.stall_after:
            return
        run.stalled = True
        self._report(
            run.path,
            "stalled",
            f"its turn has not returned for {took:.0f} s (a hung read?); it gets no new turn "
            "until it does",
        )
        worker = run.worker
        if worker is not None:
            self._board.set_stalled(worker.run_id, worker.labels, True)

    # --- failures -------------------------------------------------------------------------------

    def _report(self, path: Where, kind: str, message: str, error: Exception | None = None) -> None:
        """Count and log a failure once per distinct cause; the run is retried on later turns."""
        with self._lock:
            if self._failures.get(path) == (kind, message):
                return
            self._failures[path] = (kind, message)
        self._board.count_error(kind)
        _log.error("%s: %s error: %s", path, kind, message, exc_info=error)

    def _stream_failures(self, path: Where, worker: RunWorker) -> None:
        """After a turn that returned: the store is well; its stopped streams are reported alone.

        A stream is keyed ``<store>/<stream>``, so a corrupt ``latents`` chunk is counted once,
        fails ``--once`` by name, and is forgotten when the stream derives again.
        """
        errors = worker.deriver.stream_errors()
        with self._lock:
            self._failures.pop(path, None)
            for key in [k for k in self._failures if k.parent == path and k.name not in errors]:
                del self._failures[key]
        for table, err in errors.items():
            self._report(path / table, err.kind, str(err))

    def _fail(self, run: _Run, err: Exception) -> None:
        if isinstance(err, TexwatchError):
            self._report(run.path, err.kind, str(err))
        else:  # not a failure texwatch knows: a bug, logged with its traceback
            self._report(run.path, "internal", f"{type(err).__name__}: {err}", err)
        if isinstance(err, StoreMissingError):
            self._drop(run)

    # --- snapshots ------------------------------------------------------------------------------

    def _on_batch(self, worker: RunWorker, batch: DerivedBatch) -> None:
        try:
            self._snapshots.on_batch(worker, batch.cursor)
        except Exception as err:  # a snapshot must never stop derivation
            self._snapshot_failed(worker.run_id, worker.path, err)

    def _snapshot_failed(self, run_id: str, path: Where, err: Exception) -> None:
        signature = f"{type(err).__name__}:{err}"
        with self._lock:
            if self._snapshot_failures.get(run_id) == signature:
                return
            self._snapshot_failures[run_id] = signature
        self._board.count_error("snapshot")
        _log.error("%s: snapshot error: %s", path, err)

    def snapshot_all(self) -> None:
        """Write a snapshot of every run's newest step now (at the end of ``--once``)."""
        for run in self._runs.values():
            worker = run.worker
            if worker is None or run.busy:
                continue
            try:
                self._snapshots.write_now(worker)
            except Exception as err:
                self._snapshot_failed(worker.run_id, worker.path, err)

    # --- the loop -------------------------------------------------------------------------------

    def pass_once(self) -> int:
        """One round: every run gets one turn (at most one batch); rows derived in all.

        A run whose earlier turn is still busy gets none, and is reported once it has been busy
        for ``stall_after`` seconds.
        """
        done = 0
        for run in self._discover():
            if self._stop.is_set():
                break
            if run.busy and not run.finished.is_set():
                self._check_stalled(run)
                continue
            if run.busy:  # a turn that finished after the round stopped waiting for it
                done += self._harvest(run)
                if run.path not in self._runs:
                    continue
            self._start(run)
            if self._await(run):
                done += self._harvest(run)
        return done

    def _await(self, run: _Run) -> bool:
        """Wait up to ``turn_seconds`` for the turn just started; whether it finished.

        A turn that ends while awaited does not wake the loop: were every turn to wake it, the
        loop would start round after round (an idle texwatchd re-reading every run about 20 times
        a second) instead of sleeping until a commit or the rescan.
        """
        run.finished.wait(self._options.turn_seconds)
        with self._lock:
            run.awaited = False
            return run.finished.is_set()

    def _pending(self) -> bool:
        """Some run has rows left to derive, can take a turn now, and derived some in its last."""
        return any(
            not r.busy and r.worker is not None and r.rows and r.worker.lag
            for r in list(self._runs.values())
        )

    def _busy(self) -> bool:
        """Some turn is in flight and not (yet) reported stalled."""
        return any(r.busy and not r.stalled for r in list(self._runs.values()))

    def catch_up(self) -> int:
        """Rounds until every run has derived what is committed, or fails, or stalls; rows."""
        done = 0
        while not self._stop.is_set():
            done += self.pass_once()
            if self._pending():
                continue
            if not self._busy():
                break
            self._watcher.wait()
        return done

    def run(self, *, once: bool = False) -> None:
        """Serve until :meth:`stop`; with ``once``, derive the backlog, snapshot, and return.

        With ``once`` a store that does not exist is a failure (see :attr:`failures`); serving,
        it is waited for.
        """
        self._once = once
        if once:
            self.catch_up()
            self.snapshot_all()
            return
        while not self._stop.is_set():
            self.pass_once()
            if self._stop_at is None:
                if not self._pending():
                    self._watcher.wait()
                continue
            left = self._stop_at - time.monotonic()
            if left <= 0:
                break
            if not self._pending():
                self._watcher.wait(min(left, self._options.rescan))
