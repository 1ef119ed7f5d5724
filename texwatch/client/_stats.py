"""Counters shared by the training thread and the writer thread, and their public snapshot."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Counters", "RecorderStats", "WriterError"]


class WriterError(RuntimeError):
    """The writer thread failed to store rows (disk full, permission lost...).

    Raised by ``flush()`` / ``close()``, never by ``record()``; the cause is chained.
    """


@dataclass(frozen=True)
class RecorderStats:
    """A snapshot of what a ``Recorder`` has done.

    Attributes:
        recorded: ``record()`` calls accepted into the queue.
        committed: rows readers can see, per table (``scalars``, ``items``, stream names).
        drops: rows dropped (queue full, memory budget, failed writes), per table or stream.
        nonfinite: recorded rows holding NaN/Inf, per column (``loss``, ``term/v``) or stream.
        errors: failed writes in the writer thread.
        pending_bytes: image bytes copied but not yet written.
        object_store: for a store on object storage, the requests the process made to its
            bucket: ``requests``, ``retries`` (transient failures retried with backoff),
            ``failures`` and ``throttled_seconds`` (waits for the request cap); else empty.
    """

    recorded: int = 0
    committed: Mapping[str, int] = field(default_factory=dict)
    drops: Mapping[str, int] = field(default_factory=dict)
    nonfinite: Mapping[str, int] = field(default_factory=dict)
    errors: int = 0
    pending_bytes: int = 0
    object_store: Mapping[str, float] = field(default_factory=dict)


class Counters:
    """Thread-safe counters, and the original keys of renamed names: what the writer publishes
    in the store's root attributes."""

    def __init__(
        self,
        drops: Mapping[str, int],
        nonfinite: Mapping[str, int],
        errors: int,
        committed: Mapping[str, int],
        max_pending_bytes: int,
    ) -> None:
        self._lock = threading.Lock()
        self._drops = dict(drops)
        self._nonfinite = dict(nonfinite)
        self._committed = dict(committed)
        self._max_pending = max_pending_bytes
        self.errors = errors
        self.pending_bytes = 0
        self.recorded = 0
        self._new_error: BaseException | None = None  # first error not yet raised by flush()
        self._new_errors = 0
        self.failed = False  # a write failed in this session (the caller warns once)
        self.version = 0  # bumped on every change the store should see
        self._names: dict[str, dict[str, str]] = {}

    def reserve(self, nbytes: int) -> bool:
        """Take ``nbytes`` of the image memory budget; False, taking nothing, if over it."""
        with self._lock:
            if self.pending_bytes + nbytes > self._max_pending:
                return False
            self.pending_bytes += nbytes
            return True

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.pending_bytes -= nbytes

    def drop(self, table: str, rows: int) -> None:
        with self._lock:
            self._drops[table] = self._drops.get(table, 0) + rows
            self.version += 1

    def add_nonfinite(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            for key, n in counts.items():
                self._nonfinite[key] = self._nonfinite.get(key, 0) + n
            self.version += 1

    def fail(self, error: BaseException) -> None:
        """Count a failed write; keep the first one not yet reported (its frames cleared)."""
        with self._lock:
            self.errors += 1
            self._new_errors += 1
            self.failed = True
            self.version += 1
            if self._new_error is None:
                traceback.clear_frames(error.__traceback__)  # free the rows its frames held
                self._new_error = error

    def take_errors(self) -> tuple[BaseException | None, int]:
        """The first unreported error and how many failed writes it stands for."""
        with self._lock:
            taken = (self._new_error, self._new_errors)
            self._new_error, self._new_errors = None, 0
            return taken

    def set_committed(self, committed: Mapping[str, int]) -> None:
        with self._lock:
            self._committed = dict(committed)

    def set_names(self, names: Mapping[str, Mapping[str, str]]) -> None:
        """The original key of every renamed name, by kind (``NameBook.renamed``)."""
        with self._lock:
            self._names = {kind: dict(renamed) for kind, renamed in names.items()}
            self.version += 1

    def published(
        self,
    ) -> tuple[dict[str, int], dict[str, int], int, dict[str, dict[str, str]], int]:
        """(drops, nonfinite, errors, names, version) to write into the store."""
        with self._lock:
            return (
                dict(self._drops),
                dict(self._nonfinite),
                self.errors,
                self._names,
                self.version,
            )

    def snapshot(self) -> RecorderStats:
        with self._lock:
            return RecorderStats(
                recorded=self.recorded,
                committed=dict(self._committed),
                drops=dict(self._drops),
                nonfinite=dict(self._nonfinite),
                errors=self.errors,
                pending_bytes=self.pending_bytes,
            )
