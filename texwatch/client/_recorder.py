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
    MAX_SCALARS,
    OVER_CAP,
    RESERVED_TABLES,
    SCALARS,
    RunWriter,
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
from ._layout import formats_by_key, layout_of, stacked
from ._names import BUILTIN_STREAMS, RESERVED, TERM, WEIGHT, Kind, NameBook
from ._options import RecorderOptions, count, options_from, per_stream
from ._plan import (
    Copier,
    _arg_name,
    _call_sig,
    _copier,
    _copy_tensor,
    _float_of,
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
        return _float_of(arg, key)(value, None)
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


def _check_key(key: Any, arg: str) -> None:
    if not isinstance(key, str):
        raise TypeError(f"record(): {arg} keys must be str, got {type(key).__name__} {key!r}")


def _kind(prefix: str) -> Kind:
    """The kind of names a column prefix's keys have (see ``_names``)."""
    return "scalars" if not prefix else "terms"


def _stacked(
    images: Mapping[str, Any], dataformats: Any
) -> tuple[dict[str, Any], Mapping[str, str]]:
    """``images`` with PIL images and lists of images as arrays or tensors, and the layout of
    each (see ``_layout.stacked``)."""
    formats = formats_by_key(dataformats, _mapping(images, "images"))
    values: dict[str, Any] = {}
    layouts: dict[str, str] = {}
    for key, value in images.items():
        values[key], layout = stacked(value, formats.get(key), f"record(): images[{key!r}]")
        if layout is not None:
            layouts[key] = layout
    return values, layouts


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
        self._book = NameBook()  # the stored name of every key, copied and swapped on a change
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
            renamed = store.names()
            for table in store.table_names():
                self._tables.add(table)
                if table == SCALARS:
                    self._know(store.columns(table), renamed)
                elif table not in RESERVED_TABLES:
                    spec = store.stream_spec(table)
                    if spec is not None:
                        self._streams[table] = (spec.shape, spec.dtype)
                        if table not in BUILTIN_STREAMS:
                            self._book.know("images", table, renamed.get("images", {}))
            drops, nonfinite, errors = store.counters()
            self._counters = Counters(
                drops, nonfinite, errors, store.committed(), opts.max_pending_bytes
            )
            self._counters.set_names(self._book.renamed())
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

    @property
    def renamed(self) -> dict[str, dict[str, str]]:
        """Keys stored under another name, by kind (``scalars``; ``terms``, for terms= and
        weights=; ``images``): key -> stored name. The run keeps them (see ``texwatch.store``)."""
        return self._book.keys_renamed()

    def record(
        self,
        step: int | np.integer[Any],
        loss: Any = None,
        *,
        latents: Any = None,
        pred: Any = None,
        target: Any = None,
        images: Mapping[str, Any] | None = None,
        dataformats: str | Mapping[str, str] | None = None,
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
                any device; sampled per ``every`` / ``max_items``. A batch whose shape can only
                be channels-last (B, H, W, 3) is taken as such.
            images: more image streams by name, e.g. ``{"val/0": x}``: tensors or arrays in any
                layout of ``dataformats``, PIL images, or lists of them; uint8 is scaled to
                [0, 1].
            dataformats: the layout of the ``images`` values, as TensorBoard's ``add_images``:
                ``NCHW``, ``NHWC``, ``CHW``, ``HWC``, ``HW`` or ``NHW``, for all of them or as a
                dict by key (a list's names one image's layout). Without it the shape decides,
                and a shape whose channels could be first or last is refused.
            terms: unweighted loss terms by name (stored as ``term/<name>``); 0-d or (B,).
            weights: loss-term weights by name (stored as ``weight/<name>``).
            scalars: other scalars by name (``lr``, ``grad_norm``...).
            sample_ids: (B,) ints naming the batch's samples.
            timesteps: (B,) diffusion timesteps of the batch's items.
            checkpoint: True at steps where a checkpoint was saved.

        Any str is a key of ``images``, ``terms``, ``weights`` and ``scalars``: one the store
        cannot hold as it is (``lr/d*lr/unet``, ``loss/current``) is stored under an escaped
        name, and the run keeps the key (:attr:`renamed`; docs/client.md, "Names").

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
            (kind is float or kind is _plan.tensor_class)
            and latents is None
            and pred is None
            and target is None
            and images is None
            and dataformats is None
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
                loss, terms, weights, scalars, latents, pred, target, images, dataformats,
                sample_ids, timesteps, checkpoint,
            )  # fmt: skip
        plan = self._plans.get(key)
        if plan is None:  # validate, register the names, cache the plan; raises on bad input
            if key is None and images is not None:  # PIL images and lists become arrays
                images, dataformats = _stacked(images, dataformats)
            plan = self._plan(
                key, loss, latents, pred, target, images, dataformats, terms, weights, scalars,
                sample_ids, timesteps, checkpoint,
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
        dataformats: Any,
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
        keyed: list[tuple[int, str, list[tuple[str, Copier | None]]]] = []
        named = (
            ("terms", TERM, terms, True),
            ("weights", WEIGHT, weights, False),
            ("scalars", "", scalars, False),
        )
        for index, (arg, prefix, given, batch_ok) in enumerate(named):
            if given is None:
                continue
            entries: list[tuple[str, Copier | None]] = []
            for name, value in _mapping(given, arg).items():
                _check_key(name, arg)
                _number(value, arg, name, batch_ok=batch_ok)
                entries.append((name, _copier(value, arg, name)))
            keyed.append((index, prefix, entries))
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
        streams: list[tuple[str | None, _Stream]] = []
        if images is None and dataformats is not None:
            raise ValueError(
                "record(): dataformats is given without images=; it names their layout"
            )
        if latents is not None or pred is not None or target is not None or images is not None:
            streams = self._plan_streams(latents, pred, target, images, dataformats)

        # 2. name and register what is new (fails without side effects on a clash)
        columns = self._register(
            [(prefix, [k for k, _ in entries]) for _, prefix, entries in keyed],
            checkpoint,
            streams,
        )

        # 3. the plan, kept for the next call with this signature
        plan = _Plan(
            loss_copier,
            [
                (index, [(columns[prefix, k], copier) for k, copier in entries])
                for index, prefix, entries in keyed
            ],
            frozenset((_kind(p), k) for (p, k), column in columns.items() if column is None),
            checkpoint,
            items,
            [stream for _, stream in streams],
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
        copied: dict[str, tuple[Copy, np.dtype[Any], str]] | None = None
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
                copied[stream.name] = (
                    stream.copy(value, self._pool, capture),
                    stream.dtype,
                    stream.layout,
                )
        except BaseException:  # nothing is recorded: give back what was copied and reserved
            self._counters.release(nbytes)
            for copy in (loss, *(values or ()), *(items or ())):
                release(copy)
            for copy, *_ in (copied or {}).values():
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

    def _know(self, columns: list[str], renamed: Mapping[str, Mapping[str, str]]) -> None:
        """Take a resumed run's scalar columns as registered, their keys as ``renamed`` says."""
        self._scalar_cols.update(columns)
        for column in columns:
            for prefix in (TERM, WEIGHT):
                if column.startswith(prefix):
                    self._book.know("terms", column[len(prefix) :], renamed.get("terms", {}))
                    break
            else:
                if column.split("/")[0] not in RESERVED["scalars"]:
                    self._book.know("scalars", column, renamed.get("scalars", {}))

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
        dataformats: Any,
    ) -> list[tuple[str | None, _Stream]]:
        """The streams of a call, checked: (its images key, or None for latents/pred/target; the
        stream, named by ``_register`` for an images key)."""
        given: list[tuple[str | None, int | str, Any, str]] = [
            (None, index, value, name)
            for index, (name, value) in enumerate(
                zip(BUILTIN_STREAMS, (latents, pred, target), strict=True)
            )
            if value is not None
        ]
        formats: Mapping[str, str] = {}
        if images is not None:
            formats = formats_by_key(dataformats, _mapping(images, "images"))
            for name, value in images.items():
                _check_key(name, "images")
                if value is not None:
                    given.append((name, name, value, f"images[{name!r}]"))
        streams: list[tuple[str | None, _Stream]] = []
        for key, source, value, what in given:
            meta = describe(value, _label(what))
            if meta.kind not in "fiu":
                raise TypeError(
                    f"record(): {what} must be a float or integer image, got dtype kind "
                    f"{meta.kind!r}"
                )
            fmt = None if key is None else formats.get(key)
            layout = layout_of(meta.shape, fmt, f"record(): {what}", model=key is None)
            if meta.size == 0:
                raise ValueError(f"record(): {what} is empty (shape {meta.shape})")
            option = what if key is None else key  # every= and max_items= name it so
            # a known stream's dtype, and its check against the shape, are _register's
            dtype = np.dtype(np.float16 if meta.half else np.float32)
            every = self._every.get(option, self._every_other)
            items = None
            if layout.startswith("N"):
                items = min(meta.shape[0], self._max_items.get(option, self._max_items_other))
            name = what if key is None else ""  # an images key is named by _register
            stream = _Stream(name, source, meta, value, dtype, every, items, layout)
            streams.append((key, stream))
        return streams

    def _register(
        self,
        keyed: list[tuple[str, list[str]]],
        checkpoint: bool,
        streams: list[tuple[str | None, _Stream]],
    ) -> dict[tuple[str, str], str | None]:
        """Name and register new keys, columns and streams; the column of each (prefix, key),
        None for a key refused by a cap on names.

        Raises before anything is registered when a key finds no free name, or a stream is
        given another shape than it was created with. A refused key stays refused (caps only
        fill up): every call giving it counts a drop and its value is dropped, its row kept.
        """
        columns: dict[tuple[str, str], str | None] = {}
        with self._names_lock:
            # copied on the first change, so a call that names nothing new copies nothing
            book, scalar_cols = self._book, self._scalar_cols
            for prefix, keys in keyed:
                kind = _kind(prefix)
                for key in keys:
                    stored = book.stored(kind, key)
                    if stored is None:
                        cap = MAX_SCALARS if kind == "scalars" else MAX_TERMS
                        if book.count(kind) >= cap:
                            columns[prefix, key] = None
                            continue
                        if book is self._book:
                            book = book.copy()
                        around = ("",) if kind == "scalars" else (TERM, WEIGHT)
                        stored = book.name(kind, key, scalar_cols, around)
                    columns[prefix, key] = column = prefix + stored
                    if column not in scalar_cols:
                        if scalar_cols is self._scalar_cols:
                            scalar_cols = set(scalar_cols)
                        scalar_cols.add(column)
            if checkpoint and "checkpoint" not in scalar_cols:
                scalar_cols = scalar_cols | {"checkpoint"}
            added: dict[str, tuple[tuple[int, int, int], np.dtype[Any]]] = {}
            for image_key, stream in streams:
                if image_key is not None:
                    stored = book.stored("images", image_key)
                    if stored is None:
                        if book is self._book:
                            book = book.copy()
                        taken = self._tables | RESERVED_TABLES | added.keys()
                        stored = book.name("images", image_key, taken, ("",))
                    stream.name = stored
                known = self._streams.get(stream.name) or added.get(stream.name)
                if known is None:
                    added[stream.name] = (stream.chw, stream.dtype)
                elif known[0] != stream.chw:
                    what = stream.name if image_key is None else f"images[{image_key!r}]"
                    raise ValueError(
                        f"record(): {what} has C, H, W = {stream.chw} but stream "
                        f"{stream.name!r} was created with {known[0]}; record a different shape "
                        f"under a new images= name"
                    )
                else:
                    stream.dtype = known[1]  # the stream's, as created
            self._scalar_cols = scalar_cols
            if added:
                self._tables = self._tables | added.keys()
                self._streams.update(added)
            if book is not self._book:
                self._book = book
                self._counters.set_names(book.renamed())
        return columns

    def _over_cap(self, refused: frozenset[tuple[str, str]]) -> None:
        self._counters.drop(OVER_CAP, len(refused))
        for kind in ("scalars", "terms"):
            names = sorted(k for c, k in refused if c == kind)
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
            for name, (copy, *_) in row.images.items():
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
