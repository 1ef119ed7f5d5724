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
                             memory budget, write errors)
        nonfinite            {"loss": n, "term/v": n, "latents": n, ...}  rows holding NaN/Inf
        errors               number of failed writes in the client's writer thread
    scalars/step             int64   one row per record() call (fill -1)
    scalars/time             float64 unix seconds at record()
    scalars/loss             float64 step loss (mean of per-item losses); NaN where not given
    scalars/<name>           float64 lr, term/<name>, weight/<name>, user scalars, checkpoint
                             (1.0 at checkpoint steps); NaN for rows without a value
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

Every array grows along axis 0 in pre-allocated, doubling capacity, is chunked along rows for
~1 MiB chunks, compressed with Blosc/zstd and uses flat ``.``-separated chunk keys
(``c.0.0.0.0``). An array's shape is its capacity: only the first ``committed[table]`` rows are
data, the rest is fill or rows a writer was killed while writing.

Commit protocol: a writer writes the chunks of a block of rows first, then publishes the new row
counts (with the column lists and counters) in one atomic write of the group's ``zarr.json``
(zarr>=3.1.3 writes every key to a temporary file and renames it into place). Readers read that
marker first, re-open arrays on every read and never read past it, so a writer killed at any
instant leaves a store whose committed rows are intact. A writer that resumes starts at the
committed counts and overwrites whatever an earlier writer left uncommitted.

Example:
    >>> run = open_run("runs/x.zarr")                                   # doctest: +SKIP
    >>> cols = run.scalars()            # one row per step, the latest row for a repeated step
    >>> steps, data = run.stream("latents", start=0, stop=64)          # raw committed rows
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BloscCodec
from zarr.storage import LocalStore

from texwatch.errors import CorruptChunkError, StoreFormatError, StoreMissingError

__all__ = [
    "CHUNK_TARGET_BYTES",
    "DERIVED",
    "ITEMS",
    "LOSS_NAN",
    "RESERVED_TABLES",
    "SCALARS",
    "SCHEMA_VERSION",
    "DerivedWriter",
    "Run",
    "RunWriter",
    "StoreFormatError",
    "StreamSpec",
    "check_name",
    "given_nan",
    "latest_rows",
    "open_run",
    "run_paths",
]

SCHEMA_VERSION = 1
"""Version of the layout above, kept in the root attribute ``schema_version``."""

CHUNK_TARGET_BYTES = 1 << 20
"""Uncompressed bytes per chunk the row chunking aims for."""

SCALARS = "scalars"
ITEMS = "items"
DERIVED = "derived"


def given_nan(column: str) -> str:
    """The scalar column marking rows whose given ``column`` value was NaN.

    A NaN in ``column`` alone reads like a row recorded without that value; the marker (1.0,
    else NaN) tells a value that was computed and came out NaN from one that was not computed.
    """
    return f"nonfinite/{column}"


LOSS_NAN = given_nan("loss")
"""Scalar column marking rows whose given loss was NaN."""
RESERVED_TABLES = frozenset({SCALARS, ITEMS, DERIVED})
"""Root table names that are not image streams."""

_MAX_CHUNK_ROWS = 1 << 17
_CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}
_SEGMENT = re.compile(r"(?!__)[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_MAX_NAME = 200


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
        or len(name) > _MAX_NAME
        or any(_SEGMENT.fullmatch(s) is None for s in segments)
        or any(s == "zarr.json" or s.endswith(".partial") for s in segments)
    ):
        raise ValueError(
            f"{what} must be '/'-separated segments of letters, digits, '_', '.', '-' "
            f"(not starting with '.' or '__', at most {_MAX_NAME} characters), got {name!r}"
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


def run_paths(path: str | os.PathLike[str]) -> list[Path]:
    """The run groups at ``path``: ``[path]`` for one run, ``path/rank<r>`` for a per-rank store."""
    root = Path(path)
    if _read_attrs(root).get("schema_version") is not None:
        return [root]
    return sorted(
        (p for p in root.glob("rank*") if _read_attrs(p).get("schema_version") is not None),
        key=lambda p: (len(p.name), p.name),
    )


def _ensure_container(path: Path) -> None:
    """Make ``path`` a plain group holding per-rank runs; safe when ranks race to create it."""
    if path.exists() and not path.is_dir():
        raise StoreFormatError(f"run store {str(path)!r} is a file, expected a folder")
    if _read_attrs(path).get("schema_version") is not None:
        raise StoreFormatError(
            f"{str(path)!r} holds a single run; per-rank runs need a folder of their own"
        )
    if not (path / "zarr.json").is_file():
        # another rank may create it first
        with contextlib.suppress(FileExistsError, zarr.errors.ContainsGroupError):
            zarr.open_group(LocalStore(path), mode="a", zarr_format=3)


# --- on-disk helpers ---------------------------------------------------------------------------


def _read_attrs(path: Path) -> dict[str, Any]:
    """Attributes of the group at ``path`` read fresh; {} when there is no group there."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return {}
    node = json.loads(meta.read_text())
    if node.get("node_type") != "group":
        return {}
    attributes = node.get("attributes", {})
    return attributes if isinstance(attributes, dict) else {}


def _check_run_dir(path: Path) -> dict[str, Any]:
    """Root attributes of the run at ``path``; raise a clear error if it is not one."""
    if not path.exists():
        raise StoreMissingError(f"run store {str(path)!r} does not exist", path)
    if not path.is_dir():
        raise StoreFormatError(f"run store {str(path)!r} is a file, expected a Zarr v3 folder")
    meta = path / "zarr.json"
    if not meta.is_file():
        ranks = run_paths(path)
        hint = f"; it holds one run per rank: {[str(p) for p in ranks]}" if ranks else ""
        raise StoreFormatError(f"{str(path)!r} holds no zarr.json: not a Zarr v3 run store{hint}")
    try:
        node = json.loads(meta.read_text())
    except ValueError as err:
        raise StoreFormatError(f"{str(meta)!r} is not valid JSON: {err}") from err
    if node.get("zarr_format") != 3 or node.get("node_type") != "group":
        raise StoreFormatError(
            f"{str(path)!r} is not a Zarr v3 group "
            f"(zarr_format={node.get('zarr_format')!r}, node_type={node.get('node_type')!r})"
        )
    attrs = node.get("attributes") or {}
    version = attrs.get("schema_version")
    if version is None:
        ranks = run_paths(path)
        hint = f"; it holds one run per rank: {[str(p) for p in ranks]}" if ranks else ""
        raise StoreFormatError(f"{str(path)!r} is a Zarr group but not a texwatch run{hint}")
    if version != SCHEMA_VERSION:
        raise StoreFormatError(
            f"{str(path)!r} has schema_version {version!r}; this texwatch reads version "
            f"{SCHEMA_VERSION}"
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
            array = zarr.open_array(self._store, path=self.path(table, name), mode="r+")
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
        for name, block in blocks.items():
            if name not in known:
                self._create(table, name, block, stop)
                known.append(name)
        for name in known:  # every column gets these rows, so no killed writer's debris shows
            col = self.column(table, name)
            given = blocks.get(name)
            if given is None:
                given = np.full((n, *col.inner), _fill(col.dtype), dtype=col.dtype)
            self._grow(col, stop)
            col.array[start:stop] = given.astype(col.dtype, copy=False)
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

    def _create(self, table: str, name: str, block: np.ndarray, rows: int) -> _Column:
        dtype = _storage_dtype(block.dtype, f"column {table}/{name}")
        inner = tuple(int(s) for s in block.shape[1:])
        chunk = _chunk_rows(dtype.itemsize * math.prod(inner))
        capacity = max(chunk, 1 << max(rows - 1, 0).bit_length())
        array = zarr.create_array(
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
        column = _Column(array, dtype, inner, capacity)
        self._open[(table, name)] = column
        return column

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
    path or schema fails there.
    """

    def __init__(self, path: Path, group: zarr.Group, attrs: Mapping[str, Any]) -> None:
        self.path = path
        self._group = group
        self._attrs = dict(attrs)
        self._tables = _Tables(
            group.store, "", attrs.get("committed") or {}, attrs.get("tables") or {}
        )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        run: str | None = None,
        config: Mapping[str, Any] | None = None,
        rank: int | None = None,
        per_rank: bool = False,
    ) -> RunWriter:
        """Create the run at ``path``, or reopen it to resume (appending after committed rows).

        Args:
            path: the run folder (``runs/x.zarr``); created with its parents if missing.
            run: run name; defaults to the folder's stem. Must match the stored name on resume.
            config: JSON-able training configuration; replaces the stored one when given.
            rank: the distributed rank writing this run, or None.
            per_rank: write the run at ``path/rank<rank>`` inside a plain container group, so
                every rank of a job has its own run (see ``run_paths``).

        Raises:
            StoreFormatError: ``path`` is a file, a non-empty non-store folder, or a store of
                another schema version.
            ValueError / TypeError: ``run`` or ``config`` are invalid.
        """
        root = Path(path)
        if run is not None and (not isinstance(run, str) or not run.strip()):
            raise TypeError(f"run must be a non-empty str, got {run!r}")
        if config is not None and not isinstance(config, Mapping):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        config_json = None if config is None else _json_attr(dict(config), "config")
        if per_rank:
            if rank is None or rank < 0:
                raise ValueError(f"per_rank needs rank >= 0, got rank={rank!r}")
            _ensure_container(root)
            root = root / f"rank{rank}"
        if root.exists() and not root.is_dir():
            raise StoreFormatError(f"run store {str(root)!r} is a file, expected a folder")
        if (root / "zarr.json").exists():
            stored = _check_run_dir(root)
            if run is not None and stored.get("run") != run:
                raise ValueError(
                    f"run={run!r} but the store at {str(root)!r} holds run {stored.get('run')!r}; "
                    f"use another path or the stored name"
                )
            group = zarr.open_group(LocalStore(root), mode="r+", zarr_format=3)
            if config_json is not None:
                group = group.update_attributes({"config": config_json})
                stored["config"] = config_json
            return cls(root, group, stored)
        if root.exists() and any(root.iterdir()):
            raise StoreFormatError(
                f"{str(root)!r} exists, is not empty and holds no zarr.json: not a run store"
            )
        attrs: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": run if run is not None else root.name.removesuffix(".zarr"),
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
        # build it aside and rename it into place, so a kill never leaves a half-made store
        root.parent.mkdir(parents=True, exist_ok=True)
        aside = root.parent / f".{root.name}.{uuid.uuid4().hex}.partial"
        zarr.open_group(LocalStore(aside), mode="w-", zarr_format=3, attributes=attrs)
        try:
            os.rename(aside, root)
        except OSError:
            shutil.rmtree(aside, ignore_errors=True)
            if not (root / "zarr.json").is_file():
                raise
            return cls.open(root, run=run, config=config, rank=rank)  # another process won
        group = zarr.open_group(LocalStore(root), mode="r+", zarr_format=3)
        return cls(root, group, attrs)

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
    ) -> dict[str, int]:
        """Publish the appended rows and the counters in one atomic attributes write."""
        update: dict[str, Any] = self._tables.marker()
        if drops is not None:
            update["drops"] = {k: int(v) for k, v in drops.items()}
        if nonfinite is not None:
            update["nonfinite"] = {k: int(v) for k, v in nonfinite.items()}
        if errors is not None:
            update["errors"] = int(errors)
        # One write of zarr.json: Attributes.update would write once per key, publishing
        # `committed` before the `tables` that make those rows readable.
        self._group = self._group.update_attributes(update)
        self._attrs.update(update)
        self._tables.committed_ok()
        return dict(update["committed"])

    def rollback(self) -> None:
        """Forget rows appended since the last commit (after a failed write)."""
        self._tables.rollback()


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

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        _check_run_dir(self.path)
        self._open()

    def _open(self) -> None:
        store = LocalStore(self.path)
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
        if not marker.is_file():
            return {}
        try:
            node = json.loads(marker.read_bytes())
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

    def missing(self) -> Path | None:
        """The first file of committed derived data that is gone (``derived/`` deleted), or None.

        The marker is written when the writer opens, so it is checked from the start.
        """
        derived = self.path / DERIVED
        needed = [derived / "zarr.json"] + [
            derived / table / column / "zarr.json"
            for table, columns in (self._attrs.get("tables") or {}).items()
            for column in columns
        ]
        return next((p for p in needed if not p.is_file()), None)

    def recreate(self) -> None:
        """Delete what is left of ``derived/`` and start it empty, to derive the run again."""
        shutil.rmtree(self.path / DERIVED, ignore_errors=True)
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
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._store = LocalStore(path, read_only=True)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes, read fresh."""
        return _check_run_dir(self.path)

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
        array = zarr.open_array(self._store, path=f"{name}/data", mode="r")
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
        data = np.asarray(self._open(name, "data").get_orthogonal_selection((rows,)))
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
        attrs = _read_attrs(self.path / DERIVED)
        return {t: int(n) for t, n in (attrs.get("committed") or {}).items()}

    def derived_cursor(self) -> dict[str, int]:
        """Source rows the daemon has derived, per source table."""
        attrs = _read_attrs(self.path / DERIVED)
        return {t: int(n) for t, n in (attrs.get("cursor") or {}).items()}

    def derived_state(self) -> dict[str, Any] | None:
        """The daemon's detector state as last committed, or None."""
        text = _read_attrs(self.path / DERIVED).get("state")
        return None if text is None else json.loads(text)

    def derived_names(self) -> list[str]:
        """Derived tables with committed rows."""
        return list(self.derived_committed())

    def derived_columns(self, table: str) -> list[str]:
        """Columns of derived ``table``."""
        return list((_read_attrs(self.path / DERIVED).get("tables") or {}).get(table, []))

    def derived(self, table: str, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
        """Committed rows ``[start, stop)`` of derived ``table``, every column."""
        attrs = _read_attrs(self.path / DERIVED)
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

    def _open(self, table: str, column: str) -> zarr.Array:
        return zarr.open_array(self._store, path=f"{table}/{column}", mode="r")

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
        return np.asarray(self._open(table, column)[start:stop])


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


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open the run at ``path`` for reading.

    Raises:
        StoreMissingError: nothing at ``path`` (a ``FileNotFoundError``).
        StoreFormatError: ``path`` is a file, not a Zarr v3 group, a per-rank container (the
            message lists the rank runs), or of another schema version.
    """
    root = Path(path)
    _check_run_dir(root)
    return Run(root)
