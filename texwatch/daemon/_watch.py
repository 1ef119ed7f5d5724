"""Wake-ups for texwatchd: a store committed, or a new run appeared under ``--root``.

A wake only says "look": the pipeline then reads the commit marker and works from its cursor,
so a missed or duplicated event costs nothing but latency. zarr (>= 3.1.3) writes every key to a
``*.partial`` file and renames it into place; a commit is the rename onto the store's root
``zarr.json``. We watch each store's top folder (non-recursive) and ``--root`` itself, ignore
``*.partial``, and also wake on a timer because inotify queue overflows are only logged. A root
that does not exist yet is watched from the first :meth:`Watcher.watch_root` that finds it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from texwatch._location import ObjectPath

__all__ = ["Watcher"]

_log = logging.getLogger("texwatch.daemon")


_READS = {"opened", "closed_no_write"}
"""inotify events of a file being read: texwatchd's own reads of a marker must not wake it."""


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _READS:
            return
        for raw in (event.src_path, getattr(event, "dest_path", "")):
            path = raw.decode() if isinstance(raw, bytes) else raw
            if path and self._watcher._is_interesting(Path(path), event.is_directory):
                self._watcher.wake()
                return


class Watcher:
    """Watches stores (and optionally a root folder for new ``*.zarr`` runs) for commits.

    Args:
        root: folder whose new ``*.zarr`` children are runs to pick up, or None; it may appear
            later (see :meth:`watch_root`).
        poll: seconds between polls to use the polling backend (NFS, CIFS, FUSE); None for the
            native observer, with polling as the fallback when it cannot start.
        rescan: the longest :meth:`wait` sleeps without an event.
        debounce: after a first event, how long to gather more before waking once.

    Example:
        >>> with Watcher(rescan=0.01) as w:
        ...     w.wait()
        False
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        poll: float | None = None,
        rescan: float = 5.0,
        debounce: float = 0.05,
    ) -> None:
        if poll is not None and not poll > 0:
            raise ValueError(f"Expected argument `--poll` to be > 0 seconds but got {poll!r}")
        if not rescan > 0:
            raise ValueError(f"Expected argument `rescan` to be > 0 seconds but got {rescan!r}")
        self._root = Path(root).resolve() if root is not None else None
        self._poll = poll
        self._rescan = rescan
        self._debounce = debounce
        self._event = threading.Event()
        self._stores: set[Path] = set()
        self._lock = threading.Lock()
        self._handler = _Handler(self)
        self._observer = self._start_observer()
        self._root_watched = False
        self.watch_root()

    @property
    def backend(self) -> str:
        """``"native"`` or ``"polling"``: which observer is running."""
        return "polling" if isinstance(self._observer, PollingObserver) else "native"

    def _start_observer(self) -> BaseObserver:
        if self._poll is None:
            observer: BaseObserver = Observer()
            try:
                observer.start()
                return observer
            except OSError as err:
                _log.warning("native file watching unavailable (%s); polling every 1 s", err)
                self._poll = 1.0
        observer = PollingObserver(timeout=self._poll)
        observer.start()
        return observer

    def _schedule(self, folder: Path) -> None:
        try:
            self._observer.schedule(self._handler, str(folder), recursive=False)
        except OSError as err:
            # Out of inotify watches, or the folder vanished: the rescan timer still wakes us.
            _log.warning(
                "cannot watch %s (%s); relying on the %.1f s rescan", folder, err, self._rescan
            )

    def watch_root(self) -> bool:
        """Start watching the root folder if it exists now (idempotent); whether it is watched."""
        if self._root is None or self._root_watched or not self._root.is_dir():
            return self._root_watched
        self._root_watched = True
        self._schedule(self._root)
        return True

    def add_store(self, path: str | Path | ObjectPath) -> None:
        """Start watching one store's top folder for commits (idempotent); a store on object
        storage sends no events, so nothing is watched (its marker is polled)."""
        if isinstance(path, ObjectPath):
            return
        store = Path(path).resolve()
        with self._lock:
            if store in self._stores:
                return
            self._stores.add(store)
        self._schedule(store)

    def remove_store(self, path: str | Path | ObjectPath) -> None:
        """Forget a store (deleted); its watch ends with the folder."""
        if isinstance(path, ObjectPath):
            return
        with self._lock:
            self._stores.discard(Path(path).resolve())

    def _is_interesting(self, path: Path, is_directory: bool) -> bool:
        if path.name.endswith(".partial"):
            return False
        if path.name == "zarr.json" and path.parent in self._stores:
            return True
        return (
            self._root is not None
            and is_directory
            and path.parent == self._root
            and path.suffix == ".zarr"
        )

    def wake(self) -> None:
        """Make the current or next :meth:`wait` return at once."""
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until an event (True) or the rescan interval / ``timeout`` passes (False)."""
        woke = self._event.wait(self._rescan if timeout is None else timeout)
        if woke:
            time.sleep(self._debounce)
            self._event.clear()
        return woke

    def close(self) -> None:
        """Stop the observer thread; safe to call twice."""
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
