"""Typed failures of reading, writing and deriving a run; texwatchd counts them by ``kind``.

Each error is raised where the failure happens, names the file or folder at fault in its message
and in ``path``, and carries the ``texwatch_errors_total`` kind (one of ``ERROR_KINDS`` in
:mod:`texwatch.metric_names`), so nobody has to guess a cause from a traceback afterwards.
"""

from __future__ import annotations

__all__ = [
    "ComputeError",
    "CorruptChunkError",
    "LockUnsupportedError",
    "StoreFormatError",
    "StoreLockedError",
    "StoreMissingError",
    "StoreReadError",
    "TexwatchError",
]


class TexwatchError(Exception):
    """Base of texwatch's typed failures: ``kind`` for the error counter, ``path`` at fault."""

    kind = "read"

    def __init__(self, message: str, path: object | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class StoreFormatError(TexwatchError, ValueError):
    """The path is not a texwatch run store this version can read or write."""

    kind = "schema"


class StoreMissingError(TexwatchError, FileNotFoundError):
    """There is no run store (yet) at the path."""

    kind = "store_missing"


class CorruptChunkError(TexwatchError):
    """A chunk or metadata file of a store cannot be decoded (truncated, garbage, wrong size)."""

    kind = "corrupt_chunk"


class StoreReadError(TexwatchError, OSError):
    """A store file could not be read (I/O error, permission, a hung or vanished file)."""

    kind = "read"


class ComputeError(TexwatchError):
    """Deriving metrics from rows that were read fine failed (spectral metrics, losses, torch)."""

    kind = "compute"


class StoreLockedError(TexwatchError, RuntimeError):
    """Another live writer holds the run store: one store takes one writer at a time.

    Raised by the client on the caller's thread, never by texwatchd; its kind is "schema" (the
    store cannot be written by this process).
    """

    kind = "schema"


class LockUnsupportedError(TexwatchError, OSError):
    """The store's filesystem cannot ``flock`` (some FUSE mounts, NFS without a lock manager).

    texwatch refuses to write rather than write unfenced: two writers would interleave rows.
    Raised by the client on the caller's thread; its kind is "schema".
    """

    kind = "schema"
