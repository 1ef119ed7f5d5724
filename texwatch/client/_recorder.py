"""``Recorder``: validates and copies on the training thread, hands rows to the writer thread.

The training thread checks a call's arguments the first time it sees the call's signature (see
``_sig``), takes host copies (no ``.item()``, no CUDA sync, large ones holding the GIL) and puts
one tuple on a bounded queue, with no lock and without waking the writer; a background thread
does everything else. When the queue or the image memory budget is full, image rows are dropped
first and scalar rows last, every drop is counted (root attribute ``drops``) and a warning is
printed once.

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
import dataclasses
import os
import queue
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from texwatch._location import ObjectPath, locate
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

from . import _plan
from ._capture import (
    BufferPool,
    Capture,
    Copy,
    Meta,
    check_tensor,
    describe,
    is_tensor,
    release,
    torch_kind,
)
from ._options import RecorderOptions, count, options_from, per_stream
from ._plan import (
    Copier,
    _arg_name,
    _call_sig,
    _copier,
    _copy_tensor,
    _know_torch,
    _Plan,
    _show_int,
    _skip,
    _Stream,
)
from ._stats import Counters, RecorderStats, WriterError
from ._writer import STOP, Flush, Row, Writer, as_row

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
_MAX_STEP = 2**63 - 1  # steps are stored as int64 (record() spells it out: no global to read)
_BLOCK_BYTES = 16 << 20  # commit early once this many image bytes are pending
_POLL = 0.0005
_MAX_PLANS = 256  # signatures cached per recorder; the cache starts over when full
_now = time.time


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


def _label(what: str) -> Callable[[], str]:
    """An error label for ``describe``, formatted only when an error is raised."""
    return lambda: f"record(): {what}"


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"record(): {what} must be a dict of name -> value, got {type(value)}")
    return value


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
        where = locate(path, opts.storage_options)
        self._every, self._every_other = per_stream(
            "every", opts.every, DEFAULT_EVERY, STREAM_EVERY, allow_int=False
        )
        self._max_items, self._max_items_other = per_stream(
            "max_items", opts.max_items, DEFAULT_MAX_ITEMS, STREAM_MAX_ITEMS, allow_int=True
        )
        self.rank = detect_rank() if rank is None else count("rank", rank, minimum=0)
        all_ranks = opts.all_ranks
        self.active = all_ranks or self.rank in (None, 0)
        self.path = where if not all_ranks else where / f"rank{self.rank or 0}"
        self._max_wait = float(opts.max_wait)
        self._live = False  # active and open: the one attribute record() reads to go on
        self._queue_lock = threading.Lock()  # close() and the slow paths: never record()'s
        self._names_lock = threading.Lock()
        self._close_done = threading.Event()
        self._plans: dict[Any, _Plan] = {}  # validated signatures
        _know_torch()
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
            where,
            run=opts.run,
            config=opts.config,
            rank=self.rank,
            per_rank=all_ranks,
            durable=opts.durable,
            lease_seconds=opts.lease_seconds,
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
        self._live = True
        _track(self)

    # --- public API -----------------------------------------------------------------------------

    @property
    def stats(self) -> RecorderStats:
        """Counts of recorded, committed, dropped and non-finite rows, writer errors, and the
        requests made to an object store."""
        stats = self._counters.snapshot()
        if isinstance(self.path, ObjectPath):
            stats = dataclasses.replace(stats, object_store=self.path.bucket.counts.snapshot())
        return stats

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
        if not self._live:
            if not self.active:
                return
            raise RuntimeError(f"record(): the Recorder for {str(self.path)!r} is closed")
        counters = self._counters
        if counters.failed and not self._warned_error:
            self._warn_error()
        if type(step) is not int or step < 0 or step > 0x7FFF_FFFF_FFFF_FFFF:
            step = _check_step(step)
        kind = type(loss)
        if (
            (kind is float or kind is _plan.tensor_type())
            and latents is None
            and pred is None
            and target is None
            and images is None
            and terms is None
            and weights is None
            and scalars is None
            and sample_ids is None
            and timesteps is None
            and checkpoint is False
        ):  # step and loss alone, the commonest call: its signature read inline (as in _sig)
            key: Any = (
                (
                    kind,
                    loss.ndim and loss.shape,
                    loss.dtype,
                    loss.layout,
                    loss.is_cpu or loss.device,
                    loss.is_neg(),
                )
                if kind is not float
                else float
            )
        else:
            key = _call_sig(
                loss, terms, weights, scalars, latents, pred, target, images, sample_ids,
                timesteps, checkpoint,
            )  # fmt: skip
        plan = self._plans.get(key)
        if plan is None:  # validate, register the names, cache the plan; raises on bad input
            plan = self._plan(
                key, loss, latents, pred, target, images, terms, weights, scalars, sample_ids,
                timesteps, checkpoint,
            )  # fmt: skip
        read = plan.read
        if read is not None:  # a 0-d CPU loss, read from memory inline (see _Reader)
            try:
                address = loss.data_ptr()
            except RuntimeError:
                address = 0
            loss = read(address).value if address else _copy_tensor(loss, None)
        if plan.bare:
            if read is None and loss is not None and plan.loss is not None:
                loss = plan.loss(loss, None)
            row: tuple[Any, ...] = (plan, step, _now(), loss, None, None, None, 0)
        else:
            row = self._copies(
                plan, step, loss, terms, weights, scalars, latents, pred, target, images,
                sample_ids, timesteps,
            )  # fmt: skip
            if plan.refused:
                self._over_cap(plan.refused)
        inbox = self._queue
        if inbox.qsize() < self._queue_size:
            inbox.put(row)
            # no lock: CPython switches threads only at calls and backward jumps, none here
            counters.recorded += 1
            if not self._live:
                self._taken_back(row)
            return
        self._enqueue(row, plan)

    def _plan(
        self,
        key: Any,
        loss: Any,
        latents: Any,
        pred: Any,
        target: Any,
        images: Mapping[str, Any] | None,
        terms: Mapping[str, Any] | None,
        weights: Mapping[str, Any] | None,
        scalars: Mapping[str, Any] | None,
        sample_ids: Any,
        timesteps: Any,
        checkpoint: Any,
    ) -> _Plan:
        """Validate a call whose signature is not cached, register its names, cache its plan.

        Everything is checked before anything is registered, so a refused call leaves no trace.
        """
        _know_torch()
        # 1. validate everything; nothing is registered or copied before all of it passes
        batch: dict[str, int] | None = None
        loss_copier = None
        if loss is not None:
            loss_value = _number(loss, "loss", None, batch_ok=True)
            if type(loss_value) is not float and loss_value.ndim:
                batch = {"loss": loss_value.shape[0]}
            loss_copier = _copier(loss, "loss", None)
        maps: list[tuple[int, list[tuple[str, Copier | None]]]] = []
        named = (
            ("terms", _TERM, terms, True),
            ("weights", _WEIGHT, weights, False),
            ("scalars", _USER, scalars, False),
        )
        for index, (arg, prefix, given, batch_ok) in enumerate(named):
            if given is None:
                continue
            entries: list[tuple[str, Copier | None]] = []
            for name, value in _mapping(given, arg).items():
                column = self._column(prefix, name, arg)
                _number(value, arg, name, batch_ok=batch_ok)
                entries.append((column, _copier(value, arg, name)))
            maps.append((index, entries))
        if checkpoint is not False and checkpoint is not True:
            if not isinstance(checkpoint, np.bool_):
                raise TypeError(
                    f"record(): checkpoint must be a bool, got {type(checkpoint).__name__}"
                )
            checkpoint = bool(checkpoint)
        items: list[tuple[str, int, Copier]] = []
        if sample_ids is not None or timesteps is not None:
            item_metas = self._item_metas(sample_ids, timesteps)
            batch = batch or {}
            for index, (item_key, raw) in enumerate(
                (("sample_id", sample_ids), ("timestep", timesteps))
            ):
                meta = item_metas.get(item_key)
                if meta is not None:
                    batch[item_key] = meta.shape[0]
                    copier = _copier(raw, item_key, None)
                    assert copier is not None
                    items.append((item_key, index, copier))
            if len(set(batch.values())) > 1:
                raise ValueError(
                    f"record(): per-item arguments disagree on the batch size B: {batch}"
                )
        streams: list[_Stream] = []
        if latents is not None or pred is not None or target is not None or images is not None:
            streams = self._plan_streams(latents, pred, target, images)

        # 2. register names first seen here (fails without side effects on a clash)
        refused: set[str] = set()
        columns = [column for _, entries in maps for column, _ in entries]
        if checkpoint:
            columns.append("checkpoint")
        new_columns = [c for c in columns if c not in self._scalar_cols]
        new_streams = [p for p in streams if p.name not in self._streams]
        if new_columns or new_streams:
            refused = self._register(new_columns, new_streams)

        # 3. the plan, kept for the next call with this signature
        plan = _Plan(
            loss_copier,
            maps,
            refused,
            checkpoint,
            items,
            streams,
            next(iter(batch.values())) if batch else 0,
        )
        if key is not None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _copies(
        self,
        plan: _Plan,
        step: int,
        loss: Any,
        terms: Mapping[str, Any] | None,
        weights: Mapping[str, Any] | None,
        scalars: Mapping[str, Any] | None,
        latents: Any,
        pred: Any,
        target: Any,
        images: Mapping[str, Any] | None,
        sample_ids: Any,
        timesteps: Any,
    ) -> tuple[Any, ...]:
        """The queued row of a validated call: its copies, taken by ``plan``'s copiers.

        A loss ``plan.read`` reads comes already copied.
        """
        capture = Capture(self._pool) if plan.capture else None
        values: list[Any] | None = None
        items: list[Copy] | None = None
        copied: dict[str, tuple[Copy, np.dtype[Any]]] | None = None
        nbytes = 0
        try:
            if plan.read is None and loss is not None and plan.loss is not None:
                loss = plan.loss(loss, capture)
            if plan.maps:
                values = []
                given = (terms, weights, scalars)
                for index, copiers in plan.maps:
                    mapping = given[index]
                    assert mapping is not None  # the signature says it was given
                    for copier, value in zip(copiers, mapping.values(), strict=True):
                        if copier is None:
                            values.append(value)
                        elif copier is not _skip:
                            values.append(copier(value, capture))
            if plan.items:
                given_items = (sample_ids, timesteps)
                items = [copier(given_items[index], capture) for index, copier in plan.items]
            for stream in plan.streams:
                if step % stream.every:
                    continue
                if not self._counters.reserve(stream.nbytes):
                    why = "image bytes pending exceed max_pending_bytes"
                    self._drop(stream.name, stream.rows, why, 4)
                    continue
                nbytes += stream.nbytes
                source = stream.source
                if isinstance(source, str):
                    assert images is not None
                    value = images[source]
                else:
                    value = (latents, pred, target)[source]
                if copied is None:
                    copied = {}
                copied[stream.name] = (stream.copy(value, self._pool, capture), stream.dtype)
        except BaseException:  # nothing is recorded: give back what was copied and reserved
            self._counters.release(nbytes)
            for copy in (loss, *(values or ()), *(items or ())):
                release(copy)
            for copy, _ in (copied or {}).values():
                release(copy)
            raise
        if capture is not None:
            capture.seal()
        return (plan, step, _now(), loss, values, items, copied, nbytes)

    def _taken_back(self, row: tuple[Any, ...]) -> None:
        """``row`` was queued while ``close()`` ran: it was committed, or it is taken back here.

        ``record()`` checks that the recorder is open without a lock, so a call racing
        ``close()`` may queue its row after ``STOP``. ``close()`` commits what it finds in the
        queue after the writer stops; a row queued later still is taken back, and the call
        raises as if it had found the recorder closed.
        """
        self._close_done.wait()
        with self._queue_lock:
            left = []
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            mine = any(item is row for item in left)
            for item in left:
                if item is not row:
                    self._queue.put(item)
        if not mine:
            return
        self._counters.recorded -= 1
        self._counters.release(row[-1])
        for captured in as_row(row).copies():
            captured.release()
        raise RuntimeError(f"record(): the Recorder for {str(self.path)!r} is closed")

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
        self._writer.wake.set()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not marker.done.wait(remaining):
            raise TimeoutError(f"flush(): rows not committed within {timeout} s")
        self._raise_errors("flush")

    def close(self, *, finished: bool = True) -> None:
        """Commit everything, stop the writer thread; safe to call twice (also runs at exit).

        Args:
            finished: mark the run finished in its last commit (texwatchd then stops alerting
                on it). False for a run that did not end well (an exception, a preemption):
                it reads as a crashed run. Leaving a ``with`` block by an exception, or the
                interpreter's exit after an uncaught one, closes with False.

        Raises:
            WriterError: writes failed since the last flush()/close().
        """
        if not isinstance(finished, bool):
            raise TypeError(f"close(): finished must be a bool, got {type(finished).__name__}")
        with self._queue_lock:
            if self._closed:
                return
            self._closed = True
            self._live = False
        if not self.active:
            return
        try:
            _untrack(self)
            self._queue.put(STOP)
            self._writer.wake.set()
            self._writer.join()
            self._writer.finish(finished)  # rows of record() calls that raced this close()
            self._store.close()
        finally:
            self._close_done.set()
        self._raise_errors("close")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(finished=exc_type is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Recorder({str(self.path)!r}, run={self.run!r}, rank={self.rank}, {state})"

    # --- internals ------------------------------------------------------------------------------

    def _plan_streams(
        self,
        latents: Any,
        pred: Any,
        target: Any,
        images: Mapping[str, Any] | None,
    ) -> list[_Stream]:
        given: list[tuple[str, int | str, Any, str]] = [
            (name, index, value, name)
            for index, (name, value) in enumerate(
                zip(_BUILTIN_STREAMS, (latents, pred, target), strict=True)
            )
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
                    given.append((name, name, value, f"images[{name!r}]"))
        streams = []
        for name, source, value, what in given:
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
            every = self._every.get(name, self._every_other)
            items = None
            if len(meta.shape) == 4:
                items = min(meta.shape[0], self._max_items.get(name, self._max_items_other))
            streams.append(_Stream(name, source, meta, value, dtype, every, items))
        return streams

    def _register(self, columns: list[str], streams: list[_Stream]) -> set[str]:
        """Register new scalar columns and streams; the columns refused by a cap on names.

        Raises on a clash before anything is registered. A refused column stays refused (caps
        only fill up): every call giving it counts a drop and its value is dropped, its row kept.
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
                added[plan.name] = (plan.chw, plan.dtype)
            self._scalar_cols = scalar_cols
            self._known = known
            self._tables = tables
            self._streams.update(added)
        return refused

    def _over_cap(self, refused: frozenset[str]) -> None:
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
                stacklevel=3,
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

    def _enqueue(self, item: tuple[Any, ...], plan: _Plan) -> None:
        """The queue is full: image rows go first, then wait a little for the rest."""
        self._writer.wake.set()  # drain it now, not at the writer's next look
        row = as_row(item)
        if row.images:
            rows = {stream.name: stream.rows for stream in plan.streams}
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
            if plan.item_rows:
                self._drop(ITEMS, plan.item_rows, "the queue is full", 4)

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
            # The interpreter sets last_value when the program dies of an uncaught exception.
            self.close(finished=getattr(sys, "last_value", None) is None)
        except WriterError as err:
            warnings.warn(f"texwatch: at exit: {err}", RuntimeWarning, stacklevel=1)
