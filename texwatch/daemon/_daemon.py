"""texwatchd's main loop: find runs, wake on commits, derive, export, snapshot, survive faults."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from texwatch.derive import DerivedBatch, DeriveSettings
from texwatch.store import StoreFormatError

from ._exporter import MetricsBoard
from ._runs import RunWorker
from ._snapshots import SnapshotWriter
from ._watch import Watcher

__all__ = ["Daemon", "DaemonOptions"]

_log = logging.getLogger("texwatch.daemon")


@dataclass(frozen=True)
class DaemonOptions:
    """What texwatchd watches and how often it looks (the non-derivation flags)."""

    stores: tuple[Path, ...] = ()
    root: Path | None = None
    poll: float | None = None
    rescan: float = 5.0
    batch_rows: int = 256
    snapshot_dir: Path | None = None
    snapshot_every: int = 1000
    forget_after: float = 24 * 3600.0


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "zarr.json").is_file()


def _classify(err: BaseException, path: Path) -> str:
    """The ``texwatch_errors_total`` kind of a failure while working on the store at ``path``."""
    if isinstance(err, StoreFormatError):
        return "schema"
    if not path.exists() or isinstance(err, FileNotFoundError):
        return "store_missing"
    modules = {
        frame.f_globals.get("__name__", "") for frame, _ in traceback.walk_tb(err.__traceback__)
    }
    if any(m.startswith(("texwatch.spectral", "texwatch.losses", "torch")) for m in modules):
        return "compute"
    if any(m.startswith(("numcodecs", "zarr.codecs", "json")) for m in modules):
        return "corrupt_chunk"
    return "read"


class Daemon:
    """Serves every watched run: derive on wake, publish to ``board``, snapshot on intervals.

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
        if options.root is not None and not options.root.is_dir():
            raise ValueError(
                f"Expected argument `--root` to be a folder but got {str(options.root)!r}"
            )
        self._options = options
        self._settings = settings
        self._board = board
        self._stop = threading.Event()
        self._workers: dict[Path, RunWorker] = {}
        self._failures: dict[Path, str] = {}
        self._snapshots = SnapshotWriter(options.snapshot_dir, options.snapshot_every)
        self._watcher = Watcher(root=options.root, poll=options.poll, rescan=options.rescan)

    @property
    def workers(self) -> dict[Path, RunWorker]:
        """The runs being served, by store path."""
        return dict(self._workers)

    def stop(self) -> None:
        """Ask the loop to end after the current batch (SIGTERM)."""
        self._stop.set()
        self._watcher.wake()

    def close(self) -> None:
        """Stop watching; safe to call twice."""
        self._watcher.close()

    def _candidates(self) -> list[Path]:
        paths = [p.resolve() for p in self._options.stores]
        if self._options.root is not None:
            paths += sorted(p.resolve() for p in self._options.root.glob("*.zarr") if _is_store(p))
        return list(dict.fromkeys(paths))

    def _fail(self, path: Path, err: BaseException) -> None:
        """Log and count a failure once per distinct cause; the run is retried on later wakes."""
        kind = _classify(err, path)
        signature = f"{kind}:{type(err).__name__}:{err}"
        if self._failures.get(path) != signature:
            self._failures[path] = signature
            self._board.count_error(kind)
            _log.error("%s: %s error: %s", path, kind, err)
        if kind == "store_missing" and path in self._workers:
            self._board.forget(self._workers.pop(path).name)
            self._watcher.remove_store(path)

    def _worker(self, path: Path, on_batch: Callable[[RunWorker, DerivedBatch], None]) -> RunWorker:
        worker = self._workers.get(path)
        if worker is None:
            worker = RunWorker(
                path, self._settings, batch_rows=self._options.batch_rows, on_batch=on_batch
            )
            self._workers[path] = worker
            self._watcher.add_store(path)
            _log.info("serving run %r from %s", worker.name, path)
        return worker

    def _on_batch(self, worker: RunWorker, batch: DerivedBatch) -> None:
        self._board.publish(worker.name, worker.samples())
        try:
            self._snapshots.on_batch(worker, batch.cursor)
        except Exception as err:  # a snapshot must never stop derivation
            self._snapshot_failed(worker, err)

    def _snapshot_failed(self, worker: RunWorker, err: Exception) -> None:
        signature = f"snapshot:{type(err).__name__}:{err}"
        if self._failures.get(worker.path) != signature:
            self._failures[worker.path] = signature
            self._board.count_error("snapshot")
            _log.error("%s: snapshot error: %s", worker.path, err)

    def pass_once(self) -> int:
        """Look at every run once and derive what is pending; rows derived in all."""
        done = 0
        for path in self._candidates():
            if self._stop.is_set():
                break
            started = time.perf_counter()
            try:
                worker = self._worker(path, self._on_batch)
                done += worker.process(self._stop)
            except Exception as err:  # one bad run must not stop the others
                self._fail(path, err)
                continue
            self._failures.pop(path, None)
            self._board.observe_processing(worker.name, time.perf_counter() - started)
            idle = time.time() - worker.last_activity
            if idle > self._options.forget_after:
                if worker.name in self._board.runs():
                    _log.info("%s: no commit for %.0f s; its series are dropped", path, idle)
                    self._board.forget(worker.name)
            else:
                self._board.publish(worker.name, worker.samples())
        for path in [p for p in self._workers if not p.exists()]:
            self._fail(path, FileNotFoundError(f"store {path} was deleted"))
        return done

    def snapshot_all(self) -> None:
        """Write a snapshot of every run's newest step now (at the end of ``--once``)."""
        for worker in self._workers.values():
            try:
                self._snapshots.write(worker, worker.deriver.cursor)
            except Exception as err:
                self._snapshot_failed(worker, err)

    def run(self, *, once: bool = False) -> None:
        """Serve until :meth:`stop`; with ``once``, derive the backlog, snapshot, and return."""
        while not self._stop.is_set():
            self.pass_once()
            if once:
                self.snapshot_all()
                return
            self._watcher.wait()
