"""The run store: one Zarr v3 group per run, its commit protocol, and a reader of committed rows.

This is the only module that knows array paths. A run written here is plain Zarr v3 and opens
with ``zarr.open_group(path)`` (or tensorstore) without texwatch; nothing is ever pickled.

Layout of ``runs/x.zarr`` (schema version 1)::

    zarr.json                root group; attributes:
        schema_version       1
        run, config, created, rank    run name, user config (JSON), ISO-8601 UTC time, rank or null
        run_id               random hex id fixed at creation: tells apart runs that share a name
        committed            {"scalars": n, "items": k, "latents": m, ...}  rows readers may read
        tables               {"scalars": ["step", "time", "loss", ...], "latents": ["step", "data"]}
        drops                {"latents": n, "scalars": n, ...}  rows the client dropped (queue full,
                             memory budget, write errors); "scalars/over_cap": term, weight
                             and scalar values dropped past the caps on names (rows are kept)
        nonfinite            {"loss": n, "term/v": n, "latents": n, ...}  rows holding NaN/Inf
        errors               number of failed writes in the client's writer thread
        names                {"scalars": {stored: key}, "terms": {...}, "images": {...}}: the
                             key a user logged for each name stored under another (escaped:
                             ``lr/d_lr/unet`` for ``lr/d*lr/unet``; see texwatch.client); a term
                             ``t`` is stored as term/t and weight/t; absent when none was
        finished             ISO-8601 UTC time the recorder was closed cleanly (its last commit);
                             absent or null while the run is written, after a crash, and again
                             once a writer resumes it
    scalars/step             int64   one row per record() call (fill -1)
    scalars/time             float64 unix seconds at record()
    scalars/loss             float64 step loss (mean of per-item losses); NaN where not given
    scalars/<name>           float64 lr, term/<name>, weight/<name>, user scalars, checkpoint
                             (1.0 at checkpoint steps); NaN for rows without a value. At most
                             ``MAX_TERMS`` loss terms (term and weight names together) and
                             ``MAX_SCALARS`` user scalars, so the marker stays small; a name's
                             longest stored column is at most ``MAX_NAME`` characters
    scalars/nonfinite/loss   1.0 where the loss was given and NaN (which ``loss`` alone cannot
                             tell from a row recorded without a loss), else NaN; the same
                             for each loss term as ``nonfinite/term/<name>``
    items/{step,loss,timestep,sample_id}   one row per batch item (int64, float64, float64, int64;
                             sample_id -1 when unknown), the rows of one record() call adjacent
    <stream>/step            int64, one row per kept image item (stream: latents, pred, target,
    <stream>/data            user names such as val/0); data [rows, C, H, W] float16 or float32
    derived/                 written only by texwatchd; attributes committed, tables, cursor
                             (source rows already derived, per source table), state (JSON text)
    derived/<table>/<column> 1-D or N-D columns sharing axis 0, same commit protocol

A job recording on every rank (``all_ranks=True``) writes ``runs/x.zarr/rank<r>``, each a run as
above, inside a plain group whose only attribute is ``job_id`` (a random hex id fixed when the
first rank creates it, shared by every rank: what a sharded texwatchd assigns the job by). Its
ranks' runs are named after the job (``x``) unless given a name.

Every array grows along axis 0 in pre-allocated, doubling capacity, is chunked along rows for
~1 MiB chunks, compressed with Blosc/zstd and uses flat ``.``-separated chunk keys
(``c.0.0.0.0``). An array's shape is its capacity: only the first ``committed[table]`` rows are
data, the rest is fill or rows a writer was killed while writing.

Commit protocol: a writer writes the chunks of a block of rows first, then publishes the new row
counts (with the column lists and counters) in one atomic write of the group's ``zarr.json``
(zarr>=3.1.3 writes every key to a temporary file and renames it into place). Readers read that
marker first, re-open arrays on every read and never read past it, so a writer killed at any
instant leaves a store whose committed rows are intact. A writer that resumes starts at the
committed counts and overwrites whatever an earlier writer left uncommitted. Nothing is fsync'd
unless the writer is opened ``durable``: then every file and folder is on disk, data before
marker, when a commit returns (docs/storage.md says what a power cut can lose either way).

One writer per run: ``RunWriter.open`` holds an exclusive ``flock`` on ``.<name>.lock`` beside
the run folder (``.<name>.rank<r>.lock`` beside a per-rank container), outside the Zarr tree, for
the writer's life. The kernel drops it when the process dies, even by kill -9; a second writer
gets ``StoreLockedError`` naming the holder. Readers never take it.

Example:
    >>> run = open_run("runs/x.zarr")                                   # doctest: +SKIP
    >>> cols = run.scalars()            # one row per step, the latest row for a repeated step
    >>> steps, data = run.stream("latents", start=0, stop=64)          # raw committed rows
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.abc.store import Store
from zarr.codecs import BloscCodec
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.sync import sync as zarr_sync
from zarr.storage import LocalStore

from texwatch._lease import LEASE_SECONDS, Lease
from texwatch._location import ObjectPath, Where, is_plain_file, locate
from texwatch._object_zarr import ObjectZarrStore
from texwatch.errors import (
    CorruptChunkError,
    LockUnsupportedError,
    StoreFormatError,
    StoreLockedError,
    StoreMissingError,
    StoreReadError,
    TexwatchError,
)

__all__ = [
    "CHUNK_TARGET_BYTES",
    "DERIVED",
    "DERIVED_SCALARS",
    "ITEMS",
    "LOSS_NAN",
    "MAX_NAME",
    "MAX_SCALARS",
    "OVER_CAP",
    "RESERVED_SCALARS",
    "RESERVED_TABLES",
    "SCALARS",
    "NONFINITE",
    "SCHEMA_VERSION",
    "DerivedWriter",
    "Run",
    "RunWriter",
    "StoreFormatError",
    "StoreLockedError",
    "StreamSpec",
    "check_name",
    "given_nan",
    "is_user_scalar",
    "latest_rows",
    "logged_name",
    "open_run",
    "remove_run",
    "run_paths",
    "store_id",
]

SCHEMA_VERSION = 1
"""Version of the layout above, kept in the root attribute ``schema_version``."""

CHUNK_TARGET_BYTES = 1 << 20
"""Uncompressed bytes per chunk the row chunking aims for."""

SCALARS = "scalars"
ITEMS = "items"
DERIVED = "derived"

MAX_NAME = 200
"""Longest table or column name, counted as stored (``nonfinite/term/<name>`` included)."""
MAX_SCALARS = 256
"""Distinct user scalar names (``scalars=`` keys) a run may have, so its marker stays small."""
OVER_CAP = f"{SCALARS}/over_cap"
"""The ``drops`` key counting term, weight and scalar values dropped past a cap on names."""


NONFINITE = "nonfinite"
"""Folder of the scalar columns marking given NaN values (see ``given_nan``)."""


def given_nan(column: str) -> str:
    """The scalar column marking rows whose given ``column`` value was NaN.

    A NaN in ``column`` alone reads like a row recorded without that value; the marker (1.0,
    else NaN) tells a value that was computed and came out NaN from one that was not computed.
    """
    return f"{NONFINITE}/{column}"


RESERVED_SCALARS = frozenset({"step", "time", "loss", "checkpoint", "term", "weight", NONFINITE})
"""First segments of the scalar columns texwatch writes itself; every other column is a user
scalar (``record(scalars=...)``)."""


DERIVED_SCALARS = frozenset(
    {"loss_ema", "loss_zscore", "spike", "spike_rule", "warn", "share", "dead", "term_nonfinite"}
    | {"weighted"}  # the report's value x weight of each term
)
"""First segments of the columns derived beside the scalar table (``derived/scalars``, see
:mod:`texwatch.derive`), which readers join with it: no user scalar takes them either."""


def is_user_scalar(column: str) -> bool:
    """Whether a scalar column holds a ``record(scalars=...)`` key's values (``lr``), not one of
    texwatch's own (``loss``, ``term/v``, ``nonfinite/loss``...)."""
    return column.split("/")[0] not in RESERVED_SCALARS


LOSS_NAN = given_nan("loss")
"""Scalar column marking rows whose given loss was NaN."""
RESERVED_TABLES = frozenset({SCALARS, ITEMS, DERIVED})
"""Root table names that are not image streams."""

_MAX_CHUNK_ROWS = 1 << 17
_CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}
_SEGMENT = re.compile(r"(?!__)[A-Za-z0-9_][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class StreamSpec:
    """Shape and dtype of one image stream's rows, fixed when the stream is created."""

    shape: tuple[int, int, int]  # (C, H, W)
    dtype: np.dtype[Any]


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it can name a table or column, else raise naming ``what``.

    Names are ``/``-separated segments of letters, digits, ``_``, ``.`` and ``-``; a segment
    may not start with ``.`` or ``__`` (reserved by Zarr) nor be ``zarr.json``.
    """
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    segments = name.split("/")
    if (
        not name
        or len(name) > MAX_NAME
        or any(_SEGMENT.fullmatch(s) is None for s in segments)
        or any(s == "zarr.json" or s.endswith(".partial") for s in segments)
    ):
        raise ValueError(
            f"{what} must be '/'-separated segments of letters, digits, '_', '.', '-' "
            f"(not starting with '.' or '__', at most {MAX_NAME} characters), got {name!r}"
        )
    return name


def latest_rows(steps: np.ndarray) -> np.ndarray:
    """Indices of the last row of each distinct step, ordered by step.

    This is how a resumed run (steps repeated after a restart from a checkpoint) shows one value
    per step: the latest row for a step wins.

    Example:
        >>> latest_rows(np.array([0, 1, 2, 1, 2, 3])).tolist()
        [0, 3, 4, 5]
    """
    steps = np.asarray(steps)
    if steps.size == 0:
        return np.zeros(0, dtype=np.int64)
    _, first_in_reversed = np.unique(steps[::-1], return_index=True)
    return (steps.size - 1 - first_in_reversed).astype(np.int64)


def run_paths(
    path: str | os.PathLike[str] | ObjectPath, storage_options: Mapping[str, Any] | None = None
) -> list[Where]:
    """The run groups at ``path``: ``[path]`` for one run, ``path/rank<r>`` for a per-rank store."""
    root = locate(path, storage_options)
    if _read_attrs(root).get("schema_version") is not None:
        return [root]
    return sorted(
        (p for p in root.glob("rank*") if _read_attrs(p).get("schema_version") is not None),
        key=lambda p: (len(p.name), p.name),
    )


def store_id(
    path: str | os.PathLike[str] | ObjectPath, storage_options: Mapping[str, Any] | None = None
) -> str | None:
    """The id fixed when the store at ``path`` was made: a run's ``run_id``, a per-rank job's
    ``job_id``; None where there is none (no store, or a per-rank container of an older texwatch).
    """
    attrs = _read_attrs(locate(path, storage_options))
    value = attrs.get("run_id") if attrs.get("schema_version") is not None else attrs.get("job_id")
    return str(value) if value else None


def _ensure_container(path: Where, durable: bool) -> None:
    """Make ``path`` a plain group holding per-rank runs, with a ``job_id``; safe when ranks race
    to create it (the first one's group is everyone's)."""
    if is_plain_file(path):
        raise StoreFormatError(f"run store {str(path)!r} is a file, expected a folder")
    text = _read_meta(path / "zarr.json")
    if text is not None:
        if _attrs_of(text).get("schema_version") is not None:
            raise StoreFormatError(
                f"{str(path)!r} holds a single run; per-rank runs need a folder of their own"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _create_run(path, {"job_id": uuid.uuid4().hex}, durable)
    except OSError as err:
        raise StoreFormatError(
            f"{str(path)!r} exists, is not empty and holds no zarr.json: not a per-rank job"
        ) from err


# --- on-disk helpers ---------------------------------------------------------------------------


def _read_attrs(path: Where) -> dict[str, Any]:
    """Attributes of the group at ``path`` read fresh; {} when there is no group there."""
    text = _read_meta(path / "zarr.json")
    return {} if text is None else _attrs_of(text)


def _attrs_of(text: str) -> dict[str, Any]:
    """The attributes in a ``zarr.json``'s text; {} unless it is a group's."""
    node = json.loads(text)
    if node.get("node_type") != "group":
        return {}
    attributes = node.get("attributes", {})
    return attributes if isinstance(attributes, dict) else {}


def _read_meta(meta: Where) -> str | None:
    """The text of a metadata file, None if there is none (or a folder in its place)."""
    try:
        return meta.read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _create_run(
    root: Where, attrs: dict[str, Any], durable: bool, lease: Lease | None = None
) -> bool:
    """Make the group at ``root`` (a run, or a per-rank container); False if another process
    made one there first.

    On disk it is built aside and renamed into place, so a kill never leaves a half-made store;
    in an object store its one object, the root ``zarr.json``, is created only if absent.
    """
    if isinstance(root, ObjectPath):
        if lease is not None:
            lease.check()
        body = GroupMetadata(attributes=attrs).to_buffer_dict(default_buffer_prototype())
        etag = (root / "zarr.json").create(body["zarr.json"].to_bytes())
        if lease is not None and etag is not None:
            lease.marker_etag = etag
        return etag is not None
    aside = root.parent / f".{root.name}.{uuid.uuid4().hex}.partial"
    zarr.open_group(_zarr_store(aside, durable=durable), mode="w-", zarr_format=3, attributes=attrs)
    try:
        os.rename(aside, root)
    except OSError:
        shutil.rmtree(aside, ignore_errors=True)
        if not (root / "zarr.json").is_file():
            raise
        return False
    if durable:
        _fsync_dir(root.parent)
    return True


def _check_run_dir(path: Where) -> dict[str, Any]:
    """Root attributes of the run at ``path``; raise a clear error if it is not one."""
    meta = path / "zarr.json"
    text = _read_meta(meta)
    if text is None:
        if not path.exists():
            raise StoreMissingError(f"run store {str(path)!r} does not exist", path)
        if is_plain_file(path):
            raise StoreFormatError(
                f"run store {str(path)!r} is a file, expected a Zarr v3 folder", path
            )
        ranks = run_paths(path)
        hint = f"; it holds one run per rank: {[str(p) for p in ranks]}" if ranks else ""
        raise StoreFormatError(
            f"{str(path)!r} holds no zarr.json: not a Zarr v3 run store{hint}", path
        )
    try:
        node = json.loads(text)
    except ValueError as err:
        raise StoreFormatError(f"{str(meta)!r} is not valid JSON: {err}", meta) from err
    if node.get("zarr_format") != 3 or node.get("node_type") != "group":
        raise StoreFormatError(
            f"{str(path)!r} is not a Zarr v3 group "
            f"(zarr_format={node.get('zarr_format')!r}, node_type={node.get('node_type')!r})",
            meta,
        )
    attrs = node.get("attributes") or {}
    version = attrs.get("schema_version")
    if version is None:
        ranks = run_paths(path)
        hint = f"; it holds one run per rank: {[str(p) for p in ranks]}" if ranks else ""
        raise StoreFormatError(f"{str(path)!r} is a Zarr group but not a texwatch run{hint}", meta)
    if version != SCHEMA_VERSION:
        raise StoreFormatError(
            f"{str(path)!r} has schema_version {version!r}; this texwatch reads version "
            f"{SCHEMA_VERSION}",
            meta,
        )
    return attrs


def _storage_dtype(dtype: np.dtype[Any], what: str) -> np.dtype[Any]:
    """The dtype a column of ``dtype`` values is stored as."""
    if dtype.kind in "biu":
        return np.dtype(np.int64)
    if dtype.kind == "f":
        if dtype.itemsize <= 2:
            return np.dtype(np.float16)
        return np.dtype(np.float32) if dtype.itemsize == 4 else np.dtype(np.float64)
    raise TypeError(f"{what} must hold numbers (int or float), got dtype {dtype}")


def _fill(dtype: np.dtype[Any]) -> float | int:
    return -1 if dtype.kind == "i" else math.nan


def _chunk_rows(row_bytes: int) -> int:
    if row_bytes >= CHUNK_TARGET_BYTES:
        return 1
    return min(_MAX_CHUNK_ROWS, 1 << int(math.log2(CHUNK_TARGET_BYTES // max(row_bytes, 1))))


def _json_attr(value: Any, what: str) -> Any:
    """``value`` as plain JSON (numpy numbers and paths converted); raise naming ``what``."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, os.PathLike):
            return os.fspath(obj)
        raise TypeError(f"{what} must be JSON-serialisable, got a {type(obj).__name__} inside")

    try:
        return json.loads(json.dumps(value, default=default, allow_nan=False))
    except ValueError as err:
        raise ValueError(f"{what} must be JSON without NaN/Infinity: {err}") from err


# --- one writer per run, durable writes ---------------------------------------------------------


_held_locks: weakref.WeakSet[_WriterLock] = weakref.WeakSet()


_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})


class _WriterLock:
    """An exclusive ``flock`` on a run's lock file, held from ``take`` until ``release``.

    The lock belongs to the open file, so the kernel drops it when the process dies, however it
    dies. A child forked while it is held closes its copy at once: a DataLoader worker that
    outlives a killed trainer must not keep the run locked.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def take(cls, lock: Path, store: Path) -> _WriterLock:
        """Lock ``lock`` for the writer of ``store``; StoreLockedError naming the holder if held."""
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                os.close(fd)
                raise StoreLockedError(
                    f"run store {str(store)!r} already has a live writer ({holder}); one store "
                    f"takes one writer at a time. Record to another path, pass all_ranks=True if "
                    f"every rank of a distributed job records (each into path/rank<r>), or stop "
                    f"the other job. (lock file {str(lock)!r})",
                    store,
                ) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in _NO_FLOCK:
                    raise
                raise LockUnsupportedError(
                    f"run store {str(store)!r} cannot be fenced: the filesystem of {str(lock)!r} "
                    f"does not support flock ({err.strerror}). texwatch takes one writer per "
                    f"store and will not write unfenced; record to a local disk (or an NFS "
                    f"mount with a lock manager) and copy the store afterwards",
                    store,
                ) from err
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, lock):
                break
            os.close(fd)  # remove_run unlinked the file locked here: lock the one there now
        holder_info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "store": str(store),
        }
        with contextlib.suppress(OSError):  # only the error message of a second writer uses it
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder_info).encode(), 0)
        held = cls(fd)
        _held_locks.add(held)
        return held

    def release(self) -> None:
        """Drop the lock (closing the file drops it); safe to call twice."""
        _held_locks.discard(self)
        self._close()

    def __del__(self) -> None:  # a writer dropped without close() still lets the next one in
        self._close()

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd >= 0


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _lock_holder(fd: int) -> str:
    """Who holds the lock on ``fd``, as its lock file says."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(info['pid'])} on {info['host']}, since {info['started']}"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process"


def _close_locks_in_child() -> None:
    # Closing the child's copy leaves the parent's lock held: flock is dropped only when every
    # copy of the open file is closed.
    for held in list(_held_locks):
        held._close()
    _held_locks.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


def _lock_path(root: Where, per_rank: bool) -> Where:
    """The lock file (or lease object) of the run at ``root``: beside it, or beside its per-rank
    container."""
    real = root if isinstance(root, ObjectPath) else Path(os.path.realpath(root))
    if per_rank:
        return real.parent.parent / f".{real.parent.name}.{real.name}.lock"
    return real.parent / f".{real.name}.lock"


class _DurableStore(LocalStore):
    """A LocalStore whose every write is on disk when it returns (see ``_durable_put``)."""

    async def set(self, key: str, value: Buffer) -> None:
        await self._durable_set(key, value, exclusive=False)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        with contextlib.suppress(FileExistsError):
            await self._durable_set(key, value, exclusive=True)

    async def _durable_set(self, key: str, value: Buffer, exclusive: bool) -> None:
        if not self._is_open:
            await self._open()
        self._check_writable()
        await asyncio.to_thread(_durable_put, self.root / key, value, exclusive)


def _durable_put(path: Path, value: Buffer, exclusive: bool) -> None:
    """Write ``path`` atomically and durably: data fsync'd before the rename, folders after.

    Folders made for the file are synced in their parents too, so a power cut after this
    returns finds the file, whole, under its name.
    """
    made = _make_dirs(path.parent)
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(value.as_buffer_like())
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if path exists
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    for folder in made:
        _fsync_dir(folder.parent)


def _make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders this call made, outermost first."""
    missing: list[Path] = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    made: list[Path] = []
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another thread of this commit made it
            new.mkdir()
            made.append(new)
    return made


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_lock(root: Where, per_rank: bool, lease_seconds: float) -> Lease | _WriterLock:
    """The writer's exclusive hold on ``root``: a flock on disk, a lease in an object store."""
    lock = _lock_path(root, per_rank)
    if isinstance(root, ObjectPath):
        assert isinstance(lock, ObjectPath)
        return Lease.take(lock, root, lease_seconds)
    assert isinstance(lock, Path)
    return _WriterLock.take(lock, root)


def _zarr_store(
    root: Where, *, read_only: bool = False, durable: bool = False, lease: Lease | None = None
) -> Store:
    """The zarr store of the group at ``root``; an object store's every PUT is durable."""
    if isinstance(root, ObjectPath):
        return ObjectZarrStore(root, read_only=read_only, lease=lease)
    if durable:
        return _DurableStore(root)
    return LocalStore(root, read_only=read_only)


def _write_rows(writes: Sequence[tuple[zarr.Array, np.ndarray]], rows: slice) -> None:
    """Write ``rows`` of every array at once: one hop to zarr's event loop, not one per column
    (a derived table has dozens of columns, and each hop costs about a millisecond)."""

    async def write_all() -> None:
        await asyncio.gather(*(a.async_array.setitem(rows, block) for a, block in writes))

    zarr_sync(write_all())


@dataclass
class _Column:
    array: zarr.Array
    dtype: np.dtype[Any]
    inner: tuple[int, ...]
    capacity: int


class _Tables:
    """Tables (groups of row-aligned arrays) under one group, with uncommitted row positions.

    ``append`` writes blocks straight into pre-allocated capacity; ``marker`` is what a commit
    publishes; ``committed_ok`` / ``rollback`` move the committed state forward or back.
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        committed: Mapping[str, int],
        tables: Mapping[str, Sequence[str]],
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._committed = {t: int(n) for t, n in committed.items()}
        self._listed = {t: list(cols) for t, cols in tables.items()}
        self._rows = dict(self._committed)
        self._columns = {t: list(cols) for t, cols in self._listed.items()}
        self._open: dict[tuple[str, str], _Column] = {}

    def path(self, table: str, column: str) -> str:
        return "/".join(p for p in (self._prefix, table, column) if p)

    def columns(self, table: str) -> list[str]:
        return list(self._columns.get(table, []))

    def table_names(self) -> list[str]:
        return list(self._columns)

    def column(self, table: str, name: str) -> _Column:
        """The open column ``name`` of ``table`` (created or listed), opened on first use."""
        key = (table, name)
        if key not in self._open:
            array = zarr.open_array(
                self._store, path=self.path(table, name), mode="r+", zarr_format=3
            )
            self._open[key] = _Column(
                array, np.dtype(array.dtype), tuple(array.shape[1:]), int(array.shape[0])
            )
        return self._open[key]

    def append(self, table: str, columns: Mapping[str, Any]) -> None:
        """Write ``columns`` (sharing their leading length) as the table's next rows."""
        check_name(table, "table")
        if not columns:
            raise ValueError(f"append({table!r}): columns must not be empty")
        blocks = {check_name(k, f"column of {table!r}"): np.asarray(v) for k, v in columns.items()}
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in blocks.items()}
        n = next(iter(lengths.values()))
        if n < 0 or any(length != n for length in lengths.values()):
            raise ValueError(
                f"append({table!r}): columns must be arrays sharing their leading length, got "
                f"lengths {lengths}"
            )
        if n == 0:
            return
        self._check_new_names(table, [k for k in blocks if k not in self._columns.get(table, [])])
        for name, block in blocks.items():
            self._check_block(table, name, block)
        start = self._rows.get(table, 0)
        stop = start + n
        known = self._columns.setdefault(table, [])
        new = {name: block for name, block in blocks.items() if name not in known}
        if new:
            self._create(table, new, stop)
            known += new
        writes = []
        for name in known:  # every column gets these rows, so no killed writer's debris shows
            col = self.column(table, name)
            given = blocks.get(name)
            if given is None:
                given = np.full((n, *col.inner), _fill(col.dtype), dtype=col.dtype)
            self._grow(col, stop)
            writes.append((col.array, given.astype(col.dtype, copy=False)))
        _write_rows(writes, slice(start, stop))
        self._rows[table] = stop

    def _check_new_names(self, table: str, new: list[str]) -> None:
        if not new:
            return
        if table not in self._columns:
            tables = self.table_names()
            for other in tables:
                if other.startswith(table + "/") or table.startswith(other + "/"):
                    raise ValueError(f"table {table!r} clashes with existing table {other!r}")
        existing = self._columns.get(table, [])
        for name in new:
            for other in existing + [k for k in new if k != name]:
                if other.startswith(name + "/") or name.startswith(other + "/"):
                    raise ValueError(
                        f"column {name!r} of {table!r} clashes with column {other!r}: one name "
                        f"may not be a folder of another"
                    )

    def _check_block(self, table: str, name: str, block: np.ndarray) -> None:
        what = f"column {table}/{name}"
        _storage_dtype(block.dtype, what)
        if name not in self._columns.get(table, []):
            return
        col = self.column(table, name)
        if tuple(block.shape[1:]) != col.inner:
            raise ValueError(
                f"{what} has rows of shape {col.inner}, got rows of shape {tuple(block.shape[1:])}"
            )

    def _create(self, table: str, blocks: Mapping[str, np.ndarray], rows: int) -> None:
        """Create the columns of ``blocks`` with room for ``rows``, all in one hop to zarr."""

        async def create(name: str, block: np.ndarray) -> _Column:
            dtype = _storage_dtype(block.dtype, f"column {table}/{name}")
            inner = tuple(int(s) for s in block.shape[1:])
            chunk = _chunk_rows(dtype.itemsize * math.prod(inner))
            capacity = max(chunk, 1 << max(rows - 1, 0).bit_length())
            array = await zarr.api.asynchronous.create_array(
                self._store,
                name=self.path(table, name),
                shape=(capacity, *inner),
                chunks=(chunk, *inner),
                dtype=dtype,
                fill_value=_fill(dtype),
                compressors=BloscCodec(cname="zstd", clevel=1, shuffle="shuffle"),
                chunk_key_encoding=_CHUNK_KEYS,
                overwrite=True,  # an unlisted array here is debris of a killed writer
                zarr_format=3,
            )
            return _Column(zarr.Array(array), dtype, inner, capacity)

        async def create_all() -> list[_Column]:
            return await asyncio.gather(*(create(k, v) for k, v in blocks.items()))

        for name, column in zip(blocks, zarr_sync(create_all()), strict=True):
            self._open[(table, name)] = column

    @staticmethod
    def _grow(col: _Column, rows: int) -> None:
        if rows <= col.capacity:
            return
        capacity = col.capacity
        while capacity < rows:
            capacity *= 2
        col.array.resize((capacity, *col.inner))
        col.capacity = capacity

    def marker(self) -> dict[str, Any]:
        return {
            "committed": {t: n for t, n in self._rows.items() if n > 0},
            "tables": {t: list(c) for t, c in self._columns.items() if self._rows.get(t, 0) > 0},
        }

    def committed_ok(self) -> None:
        self._committed = dict(self._rows)
        self._listed = {t: list(c) for t, c in self._columns.items()}

    def rollback(self) -> None:
        """Forget uncommitted rows and columns; the next append overwrites them."""
        self._rows = dict(self._committed)
        for table, cols in self._columns.items():
            for name in cols:
                if name not in self._listed.get(table, []):
                    self._open.pop((table, name), None)
        self._columns = {t: list(c) for t, c in self._listed.items()}


# --- writers ------------------------------------------------------------------------------------


class RunWriter:
    """Appends rows to a run's root tables and commits them; used by the client's writer thread.

    Not thread-safe: one thread appends and commits. ``open`` runs on the caller's thread so a bad
    path, schema or a live writer already there fails there. ``close`` (or the process's end)
    lets the next writer in.
    """

    def __init__(
        self,
        path: Where,
        group: zarr.Group,
        attrs: Mapping[str, Any],
        lock: _WriterLock | Lease,
    ) -> None:
        self.path = path
        self._group = group
        self._attrs = dict(attrs)
        self._lock = lock
        self._tables = _Tables(
            group.store, "", attrs.get("committed") or {}, attrs.get("tables") or {}
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | ObjectPath,
        *,
        run: str | None = None,
        config: Mapping[str, Any] | None = None,
        rank: int | None = None,
        per_rank: bool = False,
        durable: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        lease_seconds: float = LEASE_SECONDS,
    ) -> RunWriter:
        """Create the run at ``path``, or reopen it to resume (appending after committed rows).

        Args:
            path: the run folder (``runs/x.zarr``), created with its parents if missing, or an
                object-store URL (``s3://bucket/runs/x.zarr``; see ``texwatch._location``).
            run: run name; defaults to the folder's stem. Must match the stored name on resume.
            config: JSON-able training configuration; replaces the stored one when given.
            rank: the distributed rank writing this run, or None.
            per_rank: write the run at ``path/rank<rank>`` inside a plain container group, so
                every rank of a job has its own run (see ``run_paths``).
            durable: fsync every file and folder written, data before marker, so a commit
                survives a power cut once ``commit`` returns (slower: see docs/storage.md). An
                object store's writes are durable when they return, so it changes nothing there.
            storage_options: options of an object store (endpoint, credentials...).
            lease_seconds: on an object store, how long the writer's lease lasts without
                renewal: a killed writer's run can be resumed that long after its death.

        Raises:
            StoreLockedError: another live writer (this process or another) holds the run.
            StoreFormatError: ``path`` is a file, a non-empty non-store folder, or a store of
                another schema version.
            ValueError / TypeError: ``run``, ``config`` or the URL are invalid.
        """
        root = locate(path, storage_options)
        if run is not None and (not isinstance(run, str) or not run.strip()):
            raise TypeError(f"run must be a non-empty str, got {run!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be a bool, got {type(durable).__name__}")
        config_json = None if config is None else _json_attr(dict(config), "config")
        name = root.name.removesuffix(".zarr")  # a new run's name when none is given
        if per_rank:
            if rank is None or rank < 0:
                raise ValueError(f"per_rank needs rank >= 0, got rank={rank!r}")
            _ensure_container(root, durable)
            root = root / f"rank{rank}"  # its ranks are named after the job
        # what is plainly not a run fails before a lock file is made beside it
        if is_plain_file(root):
            raise StoreFormatError(f"run store {str(root)!r} is a file, expected a folder")
        if _read_meta(root / "zarr.json") is not None:
            _check_run_dir(root)
        elif root.exists() and any(root.iterdir()):
            raise StoreFormatError(
                f"{str(root)!r} exists, is not empty and holds no zarr.json: not a run store"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        lock = _take_lock(root, per_rank, lease_seconds)
        lease = lock if isinstance(lock, Lease) else None
        try:
            if _read_meta(root / "zarr.json") is None:
                attrs: dict[str, Any] = {
                    "schema_version": SCHEMA_VERSION,
                    "run": run if run is not None else name,
                    "config": config_json if config_json is not None else {},
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "run_id": uuid.uuid4().hex,
                    "rank": rank,
                    "committed": {},
                    "tables": {},
                    "drops": {},
                    "nonfinite": {},
                    "errors": 0,
                }
                if _create_run(root, attrs, durable, lease):
                    store = _zarr_store(root, durable=durable, lease=lease)
                    group = zarr.open_group(store, mode="r+", zarr_format=3)
                    return cls(root, group, attrs, lock)
            stored = _check_run_dir(root)  # read under the lock: the last writer's final commit
            if run is not None and stored.get("run") != run:
                raise ValueError(
                    f"run={run!r} but the store at {str(root)!r} holds run {stored.get('run')!r}; "
                    f"use another path or the stored name"
                )
            if lease is not None and isinstance(root, ObjectPath):
                lease.marker_etag = (root / "zarr.json").head()["e_tag"]
            store = _zarr_store(root, durable=durable, lease=lease)
            group = zarr.open_group(store, mode="r+", zarr_format=3)
            # One write: a new config, and a resumed run is no longer finished.
            reopened: dict[str, Any] = {}
            if config_json is not None:
                reopened["config"] = config_json
            if stored.get("finished") is not None:
                reopened["finished"] = None
            if reopened:
                group = group.update_attributes(reopened)
                stored.update(reopened)
            return cls(root, group, stored, lock)
        except BaseException:
            lock.release()
            raise

    def close(self) -> None:
        """Let the next writer in; appends and commits fail afterwards. Safe to call twice."""
        self._lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def name(self) -> str:
        return str(self._attrs.get("run"))

    def committed(self) -> dict[str, int]:
        """Rows per table as of the last successful commit."""
        return {t: int(n) for t, n in (self._attrs.get("committed") or {}).items()}

    def columns(self, table: str) -> list[str]:
        """Columns of ``table``, committed or appended since."""
        return self._tables.columns(table)

    def table_names(self) -> list[str]:
        return self._tables.table_names()

    def stream_spec(self, name: str) -> StreamSpec | None:
        """C, H, W and dtype of an existing image stream, or None."""
        if name in RESERVED_TABLES or "data" not in self._tables.columns(name):
            return None
        col = self._tables.column(name, "data")
        if len(col.inner) != 3:
            return None
        c, h, w = col.inner
        return StreamSpec((c, h, w), col.dtype)

    def names(self) -> dict[str, dict[str, str]]:
        """The ``names`` attribute as stored: per kind, the key of each renamed name."""
        return _names_attr(self._attrs)

    def counters(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(drops, nonfinite, errors) as stored, so a resumed client keeps counting from there."""
        return (
            dict(self._attrs.get("drops") or {}),
            dict(self._attrs.get("nonfinite") or {}),
            int(self._attrs.get("errors") or 0),
        )

    def append(self, table: str, columns: Mapping[str, Any]) -> None:
        """Write rows into ``table`` (not visible to readers until ``commit``).

        Image streams take ``{"step": (n,), "data": (n, C, H, W)}``; ``scalars`` and ``items``
        take 1-D columns. Columns not given read NaN (-1 for int) for these rows.
        """
        self._check_open()
        if table == DERIVED or table.startswith(DERIVED + "/"):
            raise ValueError(f"table {table!r} is the daemon's: use DerivedWriter")
        if table not in RESERVED_TABLES:
            if check_name(table, "image stream").split("/")[0] in RESERVED_TABLES:
                raise ValueError(
                    f"image stream {table!r} may not live under {sorted(RESERVED_TABLES)}"
                )
            data = columns.get("data")
            if data is None or np.ndim(data) != 4 or set(columns) != {"step", "data"}:
                raise ValueError(
                    f"image stream {table!r} takes columns step (n,) and data (n, C, H, W), got "
                    f"{ {k: np.shape(v) for k, v in columns.items()} }"
                )
        self._tables.append(table, columns)

    def commit(
        self,
        drops: Mapping[str, int] | None = None,
        nonfinite: Mapping[str, int] | None = None,
        errors: int | None = None,
        *,
        names: Mapping[str, Mapping[str, str]] | None = None,
        finished: bool = False,
    ) -> dict[str, int]:
        """Publish the appended rows and the counters in one atomic attributes write.

        ``names``: the key of each renamed name, by kind (the ``names`` attribute); published
        with the first rows of its columns. ``finished``: this is the run's last commit, by a
        recorder closed cleanly; readers see the run as finished (``finished`` = now) until a
        writer resumes it.
        """
        self._check_open()
        update: dict[str, Any] = self._tables.marker()
        if finished:
            update["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if drops is not None:
            update["drops"] = {k: int(v) for k, v in drops.items()}
        if nonfinite is not None:
            update["nonfinite"] = {k: int(v) for k, v in nonfinite.items()}
        if errors is not None:
            update["errors"] = int(errors)
        if names:
            update["names"] = {kind: dict(renamed) for kind, renamed in names.items()}
        # One write of zarr.json: Attributes.update would write once per key, publishing
        # `committed` before the `tables` that make those rows readable.
        self._group = self._group.update_attributes(update)
        self._attrs.update(update)
        self._tables.committed_ok()
        return dict(update["committed"])

    def rollback(self) -> None:
        """Forget rows appended since the last commit (after a failed write)."""
        self._tables.rollback()

    def _check_open(self) -> None:
        if not self._lock.held:
            raise RuntimeError(f"the writer of {str(self.path)!r} is closed")


class DerivedWriter:
    """Writes the daemon's derived tables under ``derived/`` with their own commit marker.

    It never touches the client's arrays or root attributes. The marker in ``derived/zarr.json``
    holds ``committed`` and ``tables`` (as the root's), ``cursor`` (source rows already derived,
    per source table) and ``state`` (the detectors' JSON state, as JSON text so NaN survives).
    Rows appended but not committed when the process dies are overwritten by the next writer, so
    derived rows have no gap and no duplicate.

    Example:
        >>> w = DerivedWriter("runs/x.zarr")                            # doctest: +SKIP
        >>> w.append("latents", {"step": steps, "mean": means})
        >>> w.commit({"latents": 128}, state={"ema": 0.5})
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | ObjectPath,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = locate(path, storage_options)
        _check_run_dir(self.path)
        self._open()

    def _open(self) -> None:
        store = _zarr_store(self.path)
        self._attrs = self._read_marker()
        self._group = zarr.open_group(store, path=DERIVED, mode="a", zarr_format=3)
        self._tables = _Tables(
            store,
            DERIVED,
            self._attrs.get("committed") or {},
            self._attrs.get("tables") or {},
        )

    def _read_marker(self) -> dict[str, Any]:
        """The attributes of ``derived/zarr.json`` ({} before the first commit), read strictly."""
        marker = self.path / DERIVED / "zarr.json"
        text = _read_meta(marker)
        if text is None:
            return {}
        try:
            node = json.loads(text)
        except ValueError as err:
            raise CorruptChunkError(
                f"derived marker {str(marker)!r} is not valid JSON ({err}); delete "
                f"{str(marker.parent)!r} and texwatchd derives the run again",
                marker,
            ) from err
        attrs = node.get("attributes") if isinstance(node, dict) else None
        if not isinstance(node, dict) or node.get("node_type") != "group":
            raise StoreFormatError(f"derived marker {str(marker)!r} is not a Zarr group", marker)
        return dict(attrs) if isinstance(attrs, dict) else {}

    def missing(self) -> Where | None:
        """The first file of committed derived data that is gone (``derived/`` deleted), or None.

        The marker is written when the writer opens, so it is checked from the start. On object
        storage only the marker is checked (one request, not one per column): deleting
        ``derived/`` deletes it too.
        """
        derived = self.path / DERIVED
        needed = [derived / "zarr.json"]
        if not isinstance(derived, ObjectPath):
            needed += [
                derived / table / column / "zarr.json"
                for table, columns in (self._attrs.get("tables") or {}).items()
                for column in columns
            ]
        return next((p for p in needed if not p.is_file()), None)

    def recreate(self) -> None:
        """Delete what is left of ``derived/`` and start it empty, to derive the run again."""
        derived = self.path / DERIVED
        if isinstance(derived, ObjectPath):
            derived.remove_tree()
        else:
            shutil.rmtree(derived, ignore_errors=True)
        self._open()

    def cursor(self) -> dict[str, int]:
        """Source rows already derived, per source table, as last committed."""
        return {t: int(n) for t, n in (self._attrs.get("cursor") or {}).items()}

    def committed(self) -> dict[str, int]:
        """Derived rows per derived table, as last committed."""
        return {t: int(n) for t, n in (self._attrs.get("committed") or {}).items()}

    def state(self) -> dict[str, Any] | None:
        """The detector state passed to the last ``commit``, or None."""
        text = self._attrs.get("state")
        return None if text is None else json.loads(text)

    def columns(self, table: str) -> list[str]:
        return self._tables.columns(table)

    def append(self, table: str, columns: Mapping[str, Any]) -> None:
        """Write rows into derived ``table``; new columns appear with NaN (-1) for earlier rows.

        Args:
            table: e.g. ``scalars``, ``latents``, ``pred``.
            columns: name -> array, all with the same leading length (rows); floats are stored
                as float16/32/64 by width, ints and bools as int64; trailing shape fixed per column.
        """
        self._tables.append(table, columns)

    def commit(self, cursor: Mapping[str, int], state: Mapping[str, Any] | None = None) -> None:
        """Publish appended rows, the new ``cursor`` and ``state`` in one atomic write."""
        update = self._tables.marker()
        update["cursor"] = {check_name(t, "cursor key"): int(n) for t, n in cursor.items()}
        if any(n < 0 for n in update["cursor"].values()):
            raise ValueError(f"cursor counts must be >= 0, got {dict(cursor)}")
        try:
            update["state"] = None if state is None else json.dumps(dict(state))
        except (TypeError, ValueError) as err:
            raise TypeError(f"state must be JSON-serialisable, got {err}") from err
        # One write of zarr.json: Attributes.update would write once per key, publishing
        # `committed` before the `tables` that make those rows readable.
        self._group = self._group.update_attributes(update)
        self._attrs.update(update)
        self._tables.committed_ok()

    def rollback(self) -> None:
        """Forget rows appended since the last commit."""
        self._tables.rollback()


# --- reader -------------------------------------------------------------------------------------


class Run:
    """Read-only view of one run that only ever returns committed rows.

    Every call re-reads the commit marker and re-opens the arrays it reads, so one ``Run`` can
    follow a store that is being written. Reads take row ranges ``[start, stop)`` clipped to the
    committed count, so incremental readers do work proportional to new rows.

    A failed read raises a :class:`~texwatch.errors.TexwatchError` naming the file at fault:
    ``CorruptChunkError`` for a chunk or metadata file that cannot be decoded,
    ``StoreReadError`` for an I/O error, ``StoreMissingError`` when the store is gone and
    ``StoreFormatError`` when it is not a run this version reads.
    """

    def __init__(self, path: Where) -> None:
        self.path = path
        self._store = _zarr_store(path, read_only=True)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes, read fresh."""
        return _run_attrs(self.path)

    @property
    def name(self) -> str:
        return str(self.attrs.get("run"))

    @property
    def run_id(self) -> str:
        """The id fixed at the run's creation; for a store made before ids, one from its path."""
        stored = self.attrs.get("run_id")
        if isinstance(stored, str) and stored:
            return stored
        return hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:32]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.attrs.get("config") or {})

    @property
    def schema_version(self) -> int:
        return int(self.attrs["schema_version"])

    @property
    def rank(self) -> int | None:
        rank = self.attrs.get("rank")
        return None if rank is None else int(rank)

    def committed(self) -> dict[str, int]:
        """Committed rows per table, re-read on every call."""
        return {t: int(n) for t, n in (self.attrs.get("committed") or {}).items()}

    def drops(self) -> dict[str, int]:
        """Rows the client dropped, per table/stream."""
        return {k: int(v) for k, v in (self.attrs.get("drops") or {}).items()}

    def nonfinite(self) -> dict[str, int]:
        """Recorded rows holding NaN/Inf, per column (``loss``, ``term/v``) or stream."""
        return {k: int(v) for k, v in (self.attrs.get("nonfinite") or {}).items()}

    def errors(self) -> int:
        """Failed writes the client's writer thread counted."""
        return int(self.attrs.get("errors") or 0)

    def finished(self) -> str | None:
        """When the run's recorder was closed cleanly (ISO-8601 UTC), or None while it is live,
        after a crash, and once resumed."""
        value = self.attrs.get("finished")
        return value if isinstance(value, str) and value else None

    def names(self) -> dict[str, dict[str, str]]:
        """Per kind (``scalars``, ``terms``, ``images``), the key logged for each name stored
        under another; :func:`logged_name` reads it."""
        return _names_attr(self.attrs)

    def scalar_names(self) -> list[str]:
        """Scalar columns other than ``step`` and ``time`` (``loss``, ``lr``, ``term/v``...)."""
        cols = (self.attrs.get("tables") or {}).get(SCALARS, [])
        return [c for c in cols if c not in ("step", "time")]

    def stream_names(self) -> list[str]:
        """Image streams with committed rows."""
        committed = self.attrs.get("committed") or {}
        return [t for t in committed if t not in RESERVED_TABLES]

    def stream_spec(self, name: str) -> StreamSpec:
        """C, H, W and dtype of stream ``name``."""
        self._require(name, self.attrs)
        array = zarr.open_array(self._store, path=f"{name}/data", mode="r", zarr_format=3)
        c, h, w = (int(s) for s in array.shape[1:])
        return StreamSpec((c, h, w), np.dtype(array.dtype))

    def scalars(
        self,
        start: int = 0,
        stop: int | None = None,
        *,
        latest_wins: bool = True,
        names: Iterable[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Scalar columns of committed rows ``[start, stop)``.

        Args:
            start, stop: row range, clipped to the committed rows.
            latest_wins: keep one row per step (the latest), ordered by step; False gives raw
                rows in write order.
            names: read only these columns (``step`` and ``time`` always come along).

        Returns:
            ``{"step": int64, "time": float64, "loss": float64, ...}``, all the same length.
        """
        attrs = self.attrs
        cols = (attrs.get("tables") or {}).get(SCALARS, [])
        if not cols:
            return _empty(_SCALAR_BASE)
        if names is not None:
            wanted = set(names)
            unknown = wanted - set(cols)
            if unknown:
                raise KeyError(f"no scalar columns {sorted(unknown)} in {self.path}; have {cols}")
            cols = [c for c in cols if c in wanted or c in ("step", "time")]
        out = self._read(SCALARS, cols, attrs, start, stop)
        if latest_wins and out:
            keep = latest_rows(out["step"])
            out = {k: v[keep] for k, v in out.items()}
        return out

    def stream(
        self, name: str, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Committed rows ``[start, stop)`` of image stream ``name``: (steps (n,), data (n,C,H,W)).

        Rows come in write order; a resumed run may repeat a step (see ``stream_at``).
        """
        attrs = self.attrs
        self._require(name, attrs)
        out = self._read(name, ["step", "data"], attrs, start, stop)
        return out["step"], out["data"]

    def stream_at(self, name: str, steps: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Data of stream ``name`` at ``steps``, each step's latest rows (all items of it).

        Returns (steps (n,), data (n, C, H, W)) for the requested steps that have rows, ordered
        by step; items of one step keep their batch order.
        """
        attrs = self.attrs
        self._require(name, attrs)
        n = int(attrs["committed"][name])
        all_steps = self._rows(name, "step", 0, n)
        wanted = np.unique(np.asarray(list(steps), dtype=np.int64))
        rows = _latest_call_rows(all_steps, wanted)
        if rows.size == 0:
            spec = self.stream_spec(name)
            return np.zeros(0, np.int64), np.zeros((0, *spec.shape), spec.dtype)
        array = self._open(name, "data")
        try:
            data = np.asarray(array.get_orthogonal_selection((rows,)))
        except _READ_FAILURES as err:
            chunks = np.unique(rows // array.chunks[0]).tolist()
            raise self._read_error(array, name, "data", chunks, err) from err
        return all_steps[rows], data

    def items(self, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Per-item rows ``[start, stop)``: ``step``, ``loss``, ``timestep``, ``sample_id``."""
        attrs = self.attrs
        cols = (attrs.get("tables") or {}).get(ITEMS, [])
        if not cols:
            return _empty(_ITEM_BASE)
        return self._read(ITEMS, cols, attrs, start, stop)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The items of ``step``'s latest ``record()`` call (empty arrays if none)."""
        attrs = self.attrs
        cols = (attrs.get("tables") or {}).get(ITEMS, [])
        n = int((attrs.get("committed") or {}).get(ITEMS, 0))
        if not cols or n == 0:
            return _empty(_ITEM_BASE)
        steps = self._rows(ITEMS, "step", 0, n)
        rows = _latest_call_rows(steps, np.array([step], dtype=np.int64))
        if rows.size == 0:
            return _empty(_ITEM_BASE)
        return self._read(ITEMS, cols, attrs, int(rows[0]), int(rows[-1]) + 1)

    def checkpoint_steps(self) -> list[int]:
        """Steps marked ``checkpoint=True`` (in the latest row of each step)."""
        if "checkpoint" not in self.scalar_names():
            return []
        cols = self.scalars(names=["checkpoint"])
        return [int(s) for s in cols["step"][cols["checkpoint"] == 1.0]]

    def derived_committed(self) -> dict[str, int]:
        """Committed rows per derived table, re-read on every call."""
        attrs = self._derived_attrs()
        return {t: int(n) for t, n in (attrs.get("committed") or {}).items()}

    def derived_cursor(self) -> dict[str, int]:
        """Source rows the daemon has derived, per source table."""
        attrs = self._derived_attrs()
        return {t: int(n) for t, n in (attrs.get("cursor") or {}).items()}

    def derived_state(self) -> dict[str, Any] | None:
        """The daemon's detector state as last committed, or None."""
        text = self._derived_attrs().get("state")
        if text is None:
            return None
        try:
            return dict(json.loads(text))
        except (TypeError, ValueError) as err:
            meta = self.path / DERIVED / "zarr.json"
            raise CorruptChunkError(
                f"{str(meta)!r} holds a detector state that is not a JSON object: {err}", meta
            ) from err

    def derived_names(self) -> list[str]:
        """Derived tables with committed rows."""
        return list(self.derived_committed())

    def derived_columns(self, table: str) -> list[str]:
        """Columns of derived ``table``."""
        return list((self._derived_attrs().get("tables") or {}).get(table, []))

    def derived(self, table: str, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Committed rows ``[start, stop)`` of derived ``table``, every column."""
        attrs = self._derived_attrs()
        cols = (attrs.get("tables") or {}).get(table)
        if cols is None:
            have = list(attrs.get("committed") or {})
            raise KeyError(f"no derived table {table!r} in {self.path}; have {have}")
        return self._read(f"{DERIVED}/{table}", cols, attrs, start, stop, key=table)

    # internals

    def _require(self, name: str, attrs: Mapping[str, Any]) -> None:
        committed = attrs.get("committed") or {}
        if name in RESERVED_TABLES or name not in committed:
            streams = [t for t in committed if t not in RESERVED_TABLES]
            raise KeyError(f"no image stream {name!r} in {self.path}; have {streams}")

    def _derived_attrs(self) -> dict[str, Any]:
        """Attributes of ``derived/`` read fresh ({} before the daemon's first commit)."""
        meta = self.path / DERIVED / "zarr.json"
        try:
            return _read_attrs(self.path / DERIVED)
        except OSError as err:
            raise StoreReadError(f"cannot read {str(meta)!r}: {err}", meta) from err
        except ValueError as err:
            raise CorruptChunkError(f"{str(meta)!r} is not valid JSON: {err}", meta) from err

    def _open(self, table: str, column: str) -> zarr.Array:
        meta = self.path / table / column / "zarr.json"
        try:
            return zarr.open_array(self._store, path=f"{table}/{column}", mode="r", zarr_format=3)
        except FileNotFoundError as err:  # zarr's ArrayNotFoundError among them
            if not self.path.is_dir():
                raise StoreMissingError(
                    f"run store {str(self.path)!r} does not exist", self.path
                ) from err
            raise StoreFormatError(
                f"{str(meta)!r} is missing, yet the run lists column {column!r} of {table!r}",
                meta,
            ) from err
        except OSError as err:
            raise StoreReadError(f"cannot read {str(meta)!r}: {err}", meta) from err
        except (ValueError, TypeError, KeyError) as err:
            raise CorruptChunkError(f"{str(meta)!r} cannot be decoded: {err}", meta) from err

    def _read(
        self,
        table: str,
        cols: Sequence[str],
        attrs: Mapping[str, Any],
        start: int,
        stop: int | None,
        key: str | None = None,
    ) -> dict[str, np.ndarray]:
        if not isinstance(start, (int, np.integer)) or start < 0:
            raise ValueError(f"start must be an int >= 0, got {start!r}")
        if stop is not None and (not isinstance(stop, (int, np.integer)) or stop < 0):
            raise ValueError(f"stop must be None or an int >= 0, got {stop!r}")
        n = int((attrs.get("committed") or {}).get(key or table, 0))
        stop = n if stop is None else min(int(stop), n)
        start = min(int(start), stop)
        return {c: self._rows(table, c, start, stop) for c in cols}

    def _rows(self, table: str, column: str, start: int, stop: int) -> np.ndarray:
        array = self._open(table, column)
        try:
            return np.asarray(array[start:stop])
        except _READ_FAILURES as err:
            per = array.chunks[0]
            chunks = range(start // per, (stop - 1) // per + 1)
            raise self._read_error(array, table, column, chunks, err) from err

    def _read_error(
        self,
        array: zarr.Array,
        table: str,
        column: str,
        chunks: Iterable[int],
        err: BaseException,
    ) -> TexwatchError:
        """The typed error of a failed read, naming the first of ``chunks`` that fails alone.

        zarr decodes the chunks of a read together and its error names none, so each chunk is
        read again on its own to find the file at fault.
        """
        folder = self.path / table / column
        per = array.chunks[0]
        for i in chunks:
            try:
                array[i * per : (i + 1) * per]
            except _READ_FAILURES as chunk_err:
                key = array.metadata.encode_chunk_key((i, *(0,) * (array.ndim - 1)))
                return _read_failure(folder / key, chunk_err)
        return _read_failure(folder, err)


_READ_FAILURES = (OSError, RuntimeError, ValueError)
"""What zarr and its codecs raise for an unreadable or undecodable file (blosc: RuntimeError)."""


def _read_failure(path: Where, err: BaseException) -> TexwatchError:
    """``err`` of reading ``path`` as a typed error: I/O is a read error, the rest corruption."""
    if isinstance(err, OSError):
        return StoreReadError(f"cannot read {str(path)!r}: {err}", path)
    return CorruptChunkError(f"{str(path)!r} cannot be decoded: {err}", path)


def logged_name(names: Mapping[str, Mapping[str, str]], name: str, *, stream: bool = False) -> str:
    """A scalar column (or with ``stream``, an image stream) as it was logged, from a run's
    :meth:`Run.names`: ``lr/d*lr/unet`` for ``lr/d_lr/unet``, ``term/d*lr`` for ``term/d_lr``.

    Example:
        >>> logged_name({"scalars": {"lr/d_lr/unet": "lr/d*lr/unet"}}, "lr/d_lr/unet")
        'lr/d*lr/unet'
    """
    if stream:
        return names.get("images", {}).get(name, name)
    for prefix in ("term/", "weight/"):
        if name.startswith(prefix):
            key = name[len(prefix) :]
            return prefix + names.get("terms", {}).get(key, key)
    return names.get("scalars", {}).get(name, name)


def _names_attr(attrs: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The ``names`` attribute, keeping only str -> str entries of dict kinds."""
    stored = attrs.get("names")
    if not isinstance(stored, dict):
        return {}
    return {
        str(kind): {k: v for k, v in renamed.items() if isinstance(v, str)}
        for kind, renamed in stored.items()
        if isinstance(renamed, dict)
    }


def _run_attrs(path: Where) -> dict[str, Any]:
    """Root attributes of the run at ``path``, as :func:`_check_run_dir`, I/O errors typed."""
    meta = path / "zarr.json"
    try:
        return _check_run_dir(path)
    except TexwatchError:
        raise
    except FileNotFoundError as err:  # deleted between the checks and the read
        raise StoreMissingError(f"run store {str(path)!r} does not exist", path) from err
    except OSError as err:
        raise StoreReadError(f"cannot read {str(meta)!r}: {err}", meta) from err


_SCALAR_BASE = {"step": np.int64, "time": np.float64}
_ITEM_BASE = {"step": np.int64, "loss": np.float64, "timestep": np.float64, "sample_id": np.int64}


def _empty(columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.zeros(0, dtype=dtype) for name, dtype in columns.items()}


def _latest_call_rows(steps: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows of the last contiguous run of each wanted step (one ``record()`` call's items)."""
    rows: list[np.ndarray] = []
    for step in wanted:
        hits = np.flatnonzero(steps == step)
        if hits.size == 0:
            continue
        gaps = np.flatnonzero(np.diff(hits) != 1)
        first = hits[gaps[-1] + 1] if gaps.size else hits[0]
        rows.append(np.arange(first, hits[-1] + 1))
    return np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)


def remove_run(
    path: str | os.PathLike[str] | ObjectPath, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Delete the run at ``path`` and its lock file; refuse while a writer holds it.

    Raises:
        StoreLockedError: a live writer holds the run.
        StoreFormatError / StoreMissingError: ``path`` is not a run.
    """
    root = locate(path, storage_options)
    _check_run_dir(root)
    lock_file = _lock_path(root, per_rank=False)
    lock = _take_lock(root, False, LEASE_SECONDS)
    try:
        if isinstance(root, ObjectPath):
            root.remove_tree()
        else:
            shutil.rmtree(root)
        lock_file.unlink()  # a writer that opened it meanwhile finds it gone and locks anew
    finally:
        lock.release()


def open_run(
    path: str | os.PathLike[str] | ObjectPath, storage_options: Mapping[str, Any] | None = None
) -> Run:
    """Open the run at ``path`` (a folder or an object-store URL) for reading.

    Raises:
        StoreMissingError: nothing at ``path`` (a ``FileNotFoundError``).
        StoreFormatError: ``path`` is a file, not a Zarr v3 group, a per-rank container (the
            message lists the rank runs), or of another schema version.
        StoreReadError: its ``zarr.json`` cannot be read (an I/O error).
    """
    root = locate(path, storage_options)
    _run_attrs(root)
    return Run(root)
