"""``Recorder``: validates and copies on the training thread, hands rows to the writer thread.

The training thread only checks arguments, takes host copies (no ``.item()``, no CUDA sync) and
puts one row on a bounded queue; a background thread does everything else. When the queue or the
image memory budget is full, image rows are dropped first and scalar rows last, every drop is
counted (root attribute ``drops``) and a warning is printed once.

Sampling defaults (override with ``every=`` / ``max_items=``):

======== ===== ========= ==================================================================
stream   every max_items why
======== ===== ========= ==================================================================
latents  1     4         small (SD: 4x64x64 fp16 = 32 KiB an item) and where range blow-ups,
                         NaN/Inf and clipping show first, often within a few steps
pred     100   4         decoded images are large (3x512x512 fp32 = 3 MiB an item) and
target   100   4         texture scale drifts over hundreds of steps; pred and target share
                         steps so the daemon can compare them
others   1     4         user streams (``images=``): the caller already picks when to pass
                         them (validation steps); 4 items bound the bytes
======== ===== ========= ==================================================================

A stream is kept on steps where ``step % every == 0``, so sampled steps line up across streams,
runs and checkpoints. Scalars and per-item rows (loss, timesteps, sample ids) are kept every call.
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from texwatch.detectors import MAX_TERMS
from texwatch.store import (
    ITEMS,
    MAX_NAME,
    MAX_SCALARS,
    NONFINITE,
    OVER_CAP,
    RESERVED_TABLES,
    SCALARS,
    RunWriter,
    check_name,
    given_nan,
)

from ._capture import (
    BufferPool,
    Capture,
    Meta,
    check_tensor,
    describe,
    is_tensor,
    release,
    torch_kind,
)
from ._options import RecorderOptions, count, options_from, per_stream
from ._stats import Counters, RecorderStats, WriterError
from ._writer import STOP, Flush, Row, Writer

__all__ = [
    "DEFAULT_EVERY",
    "DEFAULT_MAX_ITEMS",
    "ENV_STORE",
    "STREAM_EVERY",
    "STREAM_MAX_ITEMS",
    "Recorder",
    "detect_rank",
]

ENV_STORE = "TEXWATCH_STORE"
"""Environment variable naming the store when ``init()`` gets no path."""

DEFAULT_EVERY: Mapping[str, int] = MappingProxyType({"latents": 1, "pred": 100, "target": 100})
DEFAULT_MAX_ITEMS: Mapping[str, int] = MappingProxyType({"latents": 4, "pred": 4, "target": 4})
STREAM_EVERY = 1
"""``every`` of a user stream (``images=``) not named in ``every=``."""
STREAM_MAX_ITEMS = 4
"""``max_items`` of a user stream not named in ``max_items=``."""

_BUILTIN_STREAMS = ("latents", "pred", "target")
_RESERVED_SCALARS = frozenset({"step", "time", "loss", "checkpoint"})
_TERM, _WEIGHT, _USER = "term/", "weight/", ""  # column prefixes of terms=, weights=, scalars=
# first segments a user scalar name may not have: the columns texwatch writes itself
_RESERVED_SEGMENTS = _RESERVED_SCALARS | {_TERM[:-1], _WEIGHT[:-1], NONFINITE}
_MAX_STEP = 2**63 - 1  # steps are stored as int64
_BLOCK_BYTES = 16 << 20  # commit early once this many image bytes are pending
_POLL = 0.0005


_open_lock = threading.Lock()
_open: set[Recorder] = set()
_exit_hooked = False


def _close_open_recorders() -> None:
    for recorder in list(_open):
        recorder._close_at_exit()


def _track(recorder: Recorder) -> None:
    """Remember an open recorder so the interpreter's exit commits and closes it.

    zarr writes through thread pools, and ``concurrent.futures`` stops every pool in threading's
    exit hooks, which run before ``atexit``: so the hook goes there too (it runs first, being
    registered later), with ``atexit`` as the fallback.
    """
    global _exit_hooked
    with _open_lock:
        _open.add(recorder)
        if not _exit_hooked:
            getattr(threading, "_register_atexit", atexit.register)(_close_open_recorders)
            _exit_hooked = True


def _untrack(recorder: Recorder) -> None:
    with _open_lock:
        _open.discard(recorder)


def detect_rank() -> int | None:
    """This process's distributed rank: ``torch.distributed`` if initialised, else ``RANK``.

    None when neither says the job is distributed. Torch is only consulted if already imported.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    env = os.environ.get("RANK")
    if env is None or env == "":
        return None
    try:
        rank = int(env)
    except ValueError as err:
        raise ValueError(f"environment variable RANK must be an int, got {env!r}") from err
    if rank < 0:
        raise ValueError(f"environment variable RANK must be >= 0, got {rank}")
    return rank


def _show_int(n: int) -> str:
    """``n`` for an error message; a huge int by its size (str() refuses past 4300 digits)."""
    return str(n) if n.bit_length() <= 256 else f"an int of {n.bit_length()} bits"


def _check_step(step: Any) -> int:
    if type(step) is int:
        if step < 0:
            raise ValueError(f"record(): step must be >= 0, got {_show_int(step)}")
        if step > _MAX_STEP:
            raise ValueError(f"record(): step must fit int64 (<= 2**63 - 1), got {_show_int(step)}")
        return step
    if isinstance(step, np.integer) and not isinstance(step, np.bool_):
        return _check_step(int(step))
    if is_tensor(step):
        raise TypeError(
            "record(): step must be a Python int, got a torch.Tensor (reading it would sync "
            "the device; pass the loop counter)"
        )
    raise TypeError(f"record(): step must be an int >= 0, got {type(step).__name__} {step!r}")


def _number(value: Any, arg: str, key: str | None, batch_ok: bool) -> Any:
    """A Python float, or a 0-d (or, if ``batch_ok``, 1-D) numeric tensor or ndarray.

    Errors name ``arg`` (``loss``) or ``arg[key]`` (``terms['v']``).
    """
    kind = type(value)
    if kind is float:
        return value
    if kind is int or (isinstance(value, np.number) and not isinstance(value, np.complexfloating)):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"{_arg_name(arg, key)} is {_show_int(int(value))}, too large for a float64"
            ) from None
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        check_tensor(value, lambda: _arg_name(arg, key))
        shape = value.shape
        dtype_kind = torch_kind(value.dtype)
    elif kind is bool or isinstance(value, np.bool_):
        raise TypeError(f"{_arg_name(arg, key)} must be a number or tensor, got bool")
    else:
        value = describe(value, lambda: _arg_name(arg, key)).value  # an ndarray from here on
        shape, dtype_kind = value.shape, value.dtype.kind
    if dtype_kind not in "fiu":
        raise TypeError(
            f"{_arg_name(arg, key)} must hold real numbers, got dtype kind {dtype_kind!r}"
        )
    if len(shape) > (1 if batch_ok else 0):
        want = "a scalar or a 1-D (B,) tensor" if batch_ok else "a scalar (0-d)"
        raise ValueError(f"{_arg_name(arg, key)} must be {want}, got shape {tuple(shape)}")
    if len(shape) and shape[0] == 0:
        raise ValueError(f"{_arg_name(arg, key)} is empty (shape {tuple(shape)})")
    return value


def _arg_name(arg: str, key: str | None) -> str:
    return f"record(): {arg}" if key is None else f"record(): {arg}[{key!r}]"


def _label(what: str) -> Callable[[], str]:
    """An error label for ``describe``, formatted only when an error is raised."""
    return lambda: f"record(): {what}"


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"record(): {what} must be a dict of name -> value, got {type(value)}")
    return value


class _StreamPlan:
    __slots__ = ("dtype", "items", "keep", "meta", "name", "shape")

    def __init__(
        self,
        name: str,
        meta: Meta,
        shape: tuple[int, int, int],
        dtype: np.dtype[Any],
        keep: bool,
        items: int | None,
    ) -> None:
        self.name, self.meta, self.shape, self.dtype = name, meta, shape, dtype
        self.keep, self.items = keep, items  # items: rows to copy, None for a (C, H, W) input

    @property
    def rows(self) -> int:
        return 1 if self.items is None else self.items

    @property
    def nbytes(self) -> int:
        c, h, w = self.shape
        return self.rows * c * h * w * self.meta.itemsize


class Recorder:
    """Records training telemetry into one run store from any number of threads.

    Args:
        path: the run folder (``runs/x.zarr``); falls back to ``$TEXWATCH_STORE``.
        options: a :class:`RecorderOptions`; keyword arguments (its fields: ``run``, ``config``,
            ``every``, ``max_items``, ``all_ranks``, ``flush_interval``, ``queue_size``,
            ``max_wait``, ``max_pending_bytes``, ``durable``) override its values.
        rank: override the detected rank (``torch.distributed`` or ``$RANK``).

    One store takes one writer: a second ``Recorder`` on the same path, in this process or
    another, raises ``StoreLockedError`` until the first is closed or its process ends. A run
    keeps at most ``MAX_TERMS`` loss terms and ``MAX_SCALARS`` user scalar names; values of
    further names are dropped and counted (``drops["scalars/over_cap"]``), their rows kept.

    Example:
        >>> with Recorder("runs/x.zarr", run="lora", every={"pred": 50}) as rec:  # doctest: +SKIP
        ...     rec.record(step, loss, latents=z0, terms={"v": l_v})
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        options: RecorderOptions | None = None,
        rank: int | None = None,
        **overrides: Any,
    ) -> None:
        self._closed = True  # until the writer runs
        opts = options_from(options, overrides, "Recorder()")
        if path is None:
            path = os.environ.get(ENV_STORE) or None
            if path is None:
                raise ValueError(f"path: none given and ${ENV_STORE} is not set; expected a folder")
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        self._every, self._every_other = per_stream(
            "every", opts.every, DEFAULT_EVERY, STREAM_EVERY, allow_int=False
        )
        self._max_items, self._max_items_other = per_stream(
            "max_items", opts.max_items, DEFAULT_MAX_ITEMS, STREAM_MAX_ITEMS, allow_int=True
        )
        self.rank = detect_rank() if rank is None else count("rank", rank, minimum=0)
        all_ranks = opts.all_ranks
        self.active = all_ranks or self.rank in (None, 0)
        self.path = Path(path) if not all_ranks else Path(path) / f"rank{self.rank or 0}"
        self._max_wait = float(opts.max_wait)
        self._queue_lock = threading.Lock()
        self._names_lock = threading.Lock()
        self._warned_drop = False
        self._warned_error = False
        self._streams: dict[str, tuple[tuple[int, int, int], np.dtype[Any]]] = {}
        self._scalar_cols: set[str] = {"step", "time", "loss"}
        self._known: dict[str, set[str]] = {_TERM: set(), _WEIGHT: set(), _USER: set()}
        self._warned_cap: set[str] = set()
        self._tables: set[str] = set()
        self._counters = Counters({}, {}, 0, {}, opts.max_pending_bytes)
        if not self.active:
            self.run = opts.run
            self._closed = False
            return
        if all_ranks and self.rank is None:
            self.rank = 0
        store = RunWriter.open(
            path,
            run=opts.run,
            config=opts.config,
            rank=self.rank,
            per_rank=all_ranks,
            durable=opts.durable,
        )
        try:
            self.path = store.path
            self.run = store.name
            for table in store.table_names():
                self._tables.add(table)
                if table == SCALARS:
                    self._know(store.columns(table))
                elif table not in RESERVED_TABLES:
                    spec = store.stream_spec(table)
                    if spec is not None:
                        self._streams[table] = (spec.shape, spec.dtype)
            drops, nonfinite, errors = store.counters()
            self._counters = Counters(
                drops, nonfinite, errors, store.committed(), opts.max_pending_bytes
            )
            self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._queue_size = opts.queue_size
            self._pool = BufferPool(opts.max_pending_bytes)
            self._store = store
            self._writer = Writer(
                store, self._queue, self._counters, float(opts.flush_interval), _BLOCK_BYTES
            )
            self._writer.start()
        except BaseException:
            store.close()
            raise
        self._closed = False
        _track(self)

    # --- public API -----------------------------------------------------------------------------

    @property
    def stats(self) -> RecorderStats:
        """Counts of recorded, committed, dropped and non-finite rows, and writer errors."""
        return self._counters.snapshot()

    @property
    def closed(self) -> bool:
        return self._closed

    def record(
        self,
        step: int | np.integer[Any],
        loss: Any = None,
        *,
        latents: Any = None,
        pred: Any = None,
        target: Any = None,
        images: Mapping[str, Any] | None = None,
        terms: Mapping[str, Any] | None = None,
        weights: Mapping[str, Any] | None = None,
        scalars: Mapping[str, Any] | None = None,
        sample_ids: Any = None,
        timesteps: Any = None,
        checkpoint: bool = False,
    ) -> None:
        """Record one training step; returns after copying, never waits on the device or disk.

        Args:
            step: the optimizer step, an int >= 0 (repeats after a resume are fine: latest wins).
            loss: a number or 0-d tensor, or a (B,) tensor of per-item losses (mean = step loss).
            latents, pred, target: image batches (B, C, H, W) or (C, H, W), any float dtype, on
                any device; sampled per ``every`` / ``max_items``.
            images: more image streams by name, e.g. ``{"val/0": x}``.
            terms: unweighted loss terms by name (stored as ``term/<name>``); 0-d or (B,).
            weights: loss-term weights by name (stored as ``weight/<name>``).
            scalars: other scalars by name (``lr``, ``grad_norm``...).
            sample_ids: (B,) ints naming the batch's samples.
            timesteps: (B,) diffusion timesteps of the batch's items.
            checkpoint: True at steps where a checkpoint was saved.

        Raises:
            TypeError / ValueError: bad input (naming the argument); nothing is recorded.
            RuntimeError: the recorder is closed.
        """
        if not self.active:
            return
        if self._closed:
            raise RuntimeError(f"record(): the Recorder for {str(self.path)!r} is closed")
        if self._counters.failed and not self._warned_error:
            self._warn_error()
        if type(step) is not int or step < 0 or step > _MAX_STEP:
            step = _check_step(step)
        row = Row(step, time.time())

        # 1. validate everything; nothing is registered or copied before all of it passes
        batch: dict[str, int] | None = None
        loss_value = None
        if loss is not None:
            loss_value = _number(loss, "loss", None, batch_ok=True)
            if type(loss_value) is not float and loss_value.ndim:
                batch = {"loss": loss_value.shape[0]}
        values: list[tuple[str, Any]] = []
        if terms is not None:
            for name, value in _mapping(terms, "terms").items():
                column = self._column("term/", name, "terms")
                values.append((column, _number(value, "terms", name, batch_ok=True)))
        if weights is not None:
            for name, value in _mapping(weights, "weights").items():
                column = self._column("weight/", name, "weights")
                values.append((column, _number(value, "weights", name, batch_ok=False)))
        if scalars is not None:
            for name, value in _mapping(scalars, "scalars").items():
                column = self._column("", name, "scalars")
                values.append((column, _number(value, "scalars", name, batch_ok=False)))
        if checkpoint is not False and checkpoint is not True:
            if not isinstance(checkpoint, np.bool_):
                raise TypeError(
                    f"record(): checkpoint must be a bool, got {type(checkpoint).__name__}"
                )
            checkpoint = bool(checkpoint)
        item_metas: dict[str, Meta] | None = None
        if sample_ids is not None or timesteps is not None:
            item_metas = self._item_metas(sample_ids, timesteps)
            batch = batch or {}
            for key, meta in item_metas.items():
                batch[key] = meta.shape[0]
            if len(set(batch.values())) > 1:
                raise ValueError(
                    f"record(): per-item arguments disagree on the batch size B: {batch}"
                )
        plans: list[_StreamPlan] = []
        if latents is not None or pred is not None or target is not None or images is not None:
            plans = self._plan_streams(step, latents, pred, target, images)

        # 2. register names first seen here (fails without side effects on a clash)
        if values or checkpoint or plans:
            columns = [name for name, _ in values]
            if checkpoint:
                columns.append("checkpoint")
            new_columns = [c for c in columns if c not in self._scalar_cols]
            new_streams = [p for p in plans if p.name not in self._streams]
            if new_columns or new_streams:
                refused = self._register(new_columns, new_streams)
                if refused:
                    values = [(c, v) for c, v in values if c not in refused]

        # 3. copy
        capture = Capture(self._pool)
        if loss_value is not None:
            row.loss = loss_value if type(loss_value) is float else capture.copy_value(loss_value)
        if values or checkpoint:
            row.scalars = {
                name: value if type(value) is float else capture.copy_value(value)
                for name, value in values
            }
            if checkpoint:
                row.scalars["checkpoint"] = 1.0
        if item_metas:
            row.items = {key: capture.copy(meta) for key, meta in item_metas.items()}
        for plan in plans:
            if not plan.keep:
                continue
            if not self._counters.reserve(plan.nbytes):
                self._drop(plan.name, plan.rows, "image bytes pending exceed max_pending_bytes", 3)
                continue
            if row.images is None:
                row.images = {}
            row.images[plan.name] = (capture.copy(plan.meta, plan.items), plan.dtype)
            row.nbytes += plan.nbytes
        capture.seal()

        # 4. queue
        self._enqueue(row, plans, next(iter(batch.values())) if batch else 0)

    def _column(self, prefix: str, name: Any, what: str) -> str:
        """The scalar column for key ``name`` of ``terms``/``weights``/``scalars``, checked.

        Every column the name is stored as (``nonfinite/term/<name>`` for a term) must fit
        ``MAX_NAME``, and user scalars may not take the names of texwatch's own columns.
        """
        if type(name) is str and name in self._known[prefix]:
            return prefix + name
        check_name(name, f"record(): {what} key")
        if prefix == _USER and name.split("/")[0] in _RESERVED_SEGMENTS:
            raise ValueError(
                f"record(): scalars key {name!r} is reserved (it may not start with "
                f"{sorted(_RESERVED_SEGMENTS)}); pass loss=, terms=, weights= or checkpoint="
            )
        column = prefix + name
        longest = given_nan(column) if prefix == _TERM else column
        if len(longest) > MAX_NAME:
            raise ValueError(
                f"record(): {what} key {name!r} is too long: it is stored as column "
                f"{longest!r} ({len(longest)} characters, at most {MAX_NAME}); use at most "
                f"{MAX_NAME - len(longest) + len(name)} characters"
            )
        return column

    def _know(self, columns: list[str]) -> None:
        """Take stored scalar columns as registered (a resumed run)."""
        self._scalar_cols.update(columns)
        for column in columns:
            for prefix in (_TERM, _WEIGHT):
                if column.startswith(prefix):
                    self._known[prefix].add(column[len(prefix) :])
                    break
            else:
                if column.split("/")[0] not in _RESERVED_SEGMENTS:
                    self._known[_USER].add(column)

    @staticmethod
    def _item_metas(sample_ids: Any, timesteps: Any) -> dict[str, Meta]:
        metas: dict[str, Meta] = {}
        for key, what, value, kinds in (
            ("sample_id", "sample_ids", sample_ids, "iu"),
            ("timestep", "timesteps", timesteps, "fiu"),
        ):
            if value is None:
                continue
            meta = describe(value, _label(what))
            if meta.kind not in kinds:
                want = "integers" if kinds == "iu" else "real numbers"
                raise TypeError(f"record(): {what} must hold {want}, got dtype kind {meta.kind!r}")
            if len(meta.shape) != 1 or meta.size == 0:
                raise ValueError(f"record(): {what} must be a non-empty 1-D (B,), got {meta.shape}")
            metas[key] = meta
        return metas

    def flush(self, timeout: float | None = None) -> None:
        """Block until every row recorded so far is committed (visible to readers).

        Raises:
            TimeoutError: not done within ``timeout`` seconds.
            WriterError: writes failed since the last flush()/close() (rows were dropped).
        """
        if not self.active or self._closed:
            return
        marker = Flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._put(marker, deadline):
            raise TimeoutError(f"flush(): the queue stayed full for {timeout} s")
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not marker.done.wait(remaining):
            raise TimeoutError(f"flush(): rows not committed within {timeout} s")
        self._raise_errors("flush")

    def close(self) -> None:
        """Commit everything, stop the writer thread; safe to call twice (also runs at exit).

        Raises:
            WriterError: writes failed since the last flush()/close().
        """
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
        if not self.active:
            return
        _untrack(self)
        self._queue.put(STOP)
        self._writer.join()
        self._store.close()
        self._raise_errors("close")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder({str(self.path)!r}, run={self.run!r}, rank={self.rank}, {state})"

    # --- internals ------------------------------------------------------------------------------

    def _plan_streams(
        self,
        step: int,
        latents: Any,
        pred: Any,
        target: Any,
        images: Mapping[str, Any] | None,
    ) -> list[_StreamPlan]:
        given: list[tuple[str, Any, str]] = [
            (name, value, name)
            for name, value in zip(_BUILTIN_STREAMS, (latents, pred, target), strict=True)
            if value is not None
        ]
        if images is not None:
            for name, value in _mapping(images, "images").items():
                check_name(name, "record(): images key")
                if name in _BUILTIN_STREAMS:
                    raise ValueError(f"record(): images key {name!r} is reserved; pass {name}=")
                if name.split("/")[0] in RESERVED_TABLES:
                    raise ValueError(
                        f"record(): images key {name!r} may not start with "
                        f"{sorted(RESERVED_TABLES)}"
                    )
                if value is not None:
                    given.append((name, value, f"images[{name!r}]"))
        plans = []
        for name, value, what in given:
            meta = describe(value, _label(what))
            if meta.kind not in "fiu":
                raise TypeError(
                    f"record(): {what} must be a float or integer image, got dtype kind "
                    f"{meta.kind!r}"
                )
            if len(meta.shape) not in (3, 4):
                raise ValueError(
                    f"record(): {what} must have shape (B, C, H, W) or (C, H, W), got {meta.shape}"
                )
            if meta.size == 0:
                raise ValueError(f"record(): {what} is empty (shape {meta.shape})")
            c, h, w = meta.shape[-3:]
            known = self._streams.get(name)
            if known is not None and known[0] != (c, h, w):
                raise ValueError(
                    f"record(): {what} has C, H, W = {(c, h, w)} but stream {name!r} was created "
                    f"with {known[0]}; record a different shape under a new images= name"
                )
            dtype = (
                known[1] if known is not None else np.dtype(np.float16 if meta.half else np.float32)
            )
            keep = step % self._every.get(name, self._every_other) == 0
            items = None
            if len(meta.shape) == 4:
                items = min(meta.shape[0], self._max_items.get(name, self._max_items_other))
            plans.append(_StreamPlan(name, meta, (c, h, w), dtype, keep, items))
        return plans

    def _register(self, columns: list[str], streams: list[_StreamPlan]) -> set[str]:
        """Register new scalar columns and streams; the columns refused by a cap on names.

        Raises on a clash before anything is registered; a refused column is counted and
        warned about once, its value dropped and its row kept.
        """
        refused: set[str] = set()
        with self._names_lock:
            scalar_cols = set(self._scalar_cols)
            known = {prefix: set(names) for prefix, names in self._known.items()}
            for name in columns:
                if name in scalar_cols:
                    continue
                prefix = next((p for p in (_TERM, _WEIGHT) if name.startswith(p)), _USER)
                key = name[len(prefix) :]
                if prefix == _USER:
                    full = name != "checkpoint" and len(known[_USER]) >= MAX_SCALARS
                else:
                    terms = known[_TERM] | known[_WEIGHT]
                    full = key not in terms and len(terms) >= MAX_TERMS
                if full:
                    refused.add(name)
                    continue
                for other in scalar_cols:
                    if other.startswith(name + "/") or name.startswith(other + "/"):
                        raise ValueError(
                            f"record(): scalar {name!r} clashes with {other!r}: one name may not "
                            f"be a folder of another"
                        )
                scalar_cols.add(name)
                if name != "checkpoint":
                    known[prefix].add(key)
            tables = self._tables | RESERVED_TABLES
            added: dict[str, tuple[tuple[int, int, int], np.dtype[Any]]] = {}
            for plan in streams:
                if plan.name in self._streams or plan.name in added:
                    continue
                for other in tables:
                    if other.startswith(plan.name + "/") or plan.name.startswith(other + "/"):
                        raise ValueError(
                            f"record(): stream {plan.name!r} clashes with {other!r}: one name may "
                            f"not be a folder of another"
                        )
                tables.add(plan.name)
                added[plan.name] = (plan.shape, plan.dtype)
            self._scalar_cols = scalar_cols
            self._known = known
            self._tables = tables
            self._streams.update(added)
        if refused:
            self._over_cap(refused)
        return refused

    def _over_cap(self, refused: set[str]) -> None:
        self._counters.drop(OVER_CAP, len(refused))
        users = sorted(c for c in refused if not c.startswith((_TERM, _WEIGHT)))
        for kind, names in (("scalars", users), ("terms", sorted(refused - set(users)))):
            if not names or kind in self._warned_cap:
                continue
            self._warned_cap.add(kind)
            cap = (
                f"{MAX_SCALARS} scalars (scalars= names)"
                if kind == "scalars"
                else f"{MAX_TERMS} loss terms (terms= and weights= names), all texwatchd tracks"
            )
            warnings.warn(
                f"texwatch: {str(self.path)!r} has {cap} already: values of new names such as "
                f"{names[0]!r} are dropped and counted in drops[{OVER_CAP!r}]; their rows are "
                f"kept. (warned once)",
                RuntimeWarning,
                stacklevel=4,
            )

    def _put(self, item: Any, deadline: float | None) -> bool:
        """Queue ``item`` unless closed; wait for space until ``deadline`` (None: forever)."""
        while True:
            with self._queue_lock:
                if self._closed:
                    raise RuntimeError(f"the Recorder for {str(self.path)!r} is closed")
                if self._queue.qsize() < self._queue_size:
                    self._queue.put(item)
                    if isinstance(item, Row):
                        self._counters.recorded += 1
                    return True
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(remaining, _POLL))
            else:
                time.sleep(_POLL)

    def _enqueue(self, row: Row, plans: list[_StreamPlan], items: int) -> None:
        with self._queue_lock:
            if not self._closed and self._queue.qsize() < self._queue_size:
                self._queue.put(row)
                self._counters.recorded += 1
                return
        # closed, or the writer is behind: image rows go first, then wait a little for the rest
        if row.images:
            rows = {p.name: p.rows for p in plans}
            for name, (copy, _) in row.images.items():
                release(copy)
                if not self._closed:
                    self._drop(name, rows[name], "the queue is full", 4)
            row.images = None
            self._counters.release(row.nbytes)
            row.nbytes = 0
        try:
            queued = self._put(row, time.monotonic() + self._max_wait)
        except RuntimeError:
            raise RuntimeError(f"record(): the Recorder for {str(self.path)!r} is closed") from None
        if not queued:
            for captured in row.copies():
                captured.release()
            self._drop(SCALARS, 1, "the queue is full", 4)
            if items:
                self._drop(ITEMS, items, "the queue is full", 4)

    def _drop(self, table: str, rows: int, why: str, stacklevel: int) -> None:
        self._counters.drop(table, rows)
        if not self._warned_drop:
            self._warned_drop = True
            warnings.warn(
                f"texwatch: dropping rows of {table!r} for {str(self.path)!r} because {why}; "
                f"image streams go first, scalars last. Every drop is counted in the store "
                f"attribute 'drops'. Raise every=/max_items= or queue_size/max_pending_bytes "
                f"if this persists. (warned once)",
                RuntimeWarning,
                stacklevel=stacklevel,
            )

    def _warn_error(self) -> None:
        self._warned_error = True
        warnings.warn(
            f"texwatch: writing {str(self.path)!r} failed; training continues, the rows are "
            f"dropped and counted (store attributes 'errors', 'drops'), and flush()/close() "
            f"raise the error. (warned once)",
            RuntimeWarning,
            stacklevel=3,
        )

    def _raise_errors(self, where: str) -> None:
        error, count = self._counters.take_errors()
        if error is not None:
            raise WriterError(
                f"{where}(): {count} write(s) to {str(self.path)!r} failed since the last "
                f"flush()/close(), rows were dropped; first error: {error!r}"
            ) from error

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except WriterError as err:
            warnings.warn(f"texwatch: at exit: {err}", RuntimeWarning, stacklevel=1)
