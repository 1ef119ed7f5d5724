"""The signature cache of ``record()``: a call's signature, and the plan it maps to.

What record() checks depends on a call's signature: which arguments are given, the names in its
dicts, each value's type, and for arrays their shape, dtype, device and layout. A signature seen
before maps to a _Plan, and the call only copies its values and puts one tuple on the queue.
Values are never part of a signature: the step's range is checked on every call, NaN/Inf are
counted by the writer, sampling (step % every) and the memory budget are applied per call, and
an int too large for a float64 is refused when it is converted. Names only ever get registered
(a key keeps its stored name, a full cap never empties), so a plan stays valid for the
recorder's life.
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ._capture import POOL_MIN_BYTES, BufferPool, Capture, Copy, Meta, host_copy, is_tensor, memcpy
from ._layout import chw
from ._writer import Layout


def _show_int(n: int) -> str:
    """``n`` for an error message; a huge int by its size (str() refuses past 4300 digits)."""
    return str(n) if n.bit_length() <= 256 else f"an int of {n.bit_length()} bits"


def _arg_name(arg: str, key: str | None) -> str:
    return f"record(): {arg}" if key is None else f"record(): {arg}[{key!r}]"


class _Uncached(Exception):
    """A value whose signature is not cached (lists, subclasses...): validated on every call."""


class _NoTensor:  # stands in for torch.Tensor until a call has passed one (torch is never imported)
    pass


tensor_class: Any = _NoTensor
"""``torch.Tensor`` once a call has passed a tensor, else a class nothing is an instance of;
``record()`` reads it as a module attribute (a function call would cost more on its fast path)."""
_NUMBERS = frozenset(
    {int, *(np.dtype(c).type for c in np.typecodes["AllInteger"] + np.typecodes["Float"])}
)


def _know_torch() -> None:
    """Take ``torch.Tensor`` for signatures once torch is imported (by the caller, never here)."""
    global tensor_class
    torch = sys.modules.get("torch")
    if torch is not None:
        tensor_class = torch.Tensor


def _sig(value: Any) -> Any:
    """What validation (and the choice of copy) reads of ``value``, without touching its data.

    A tensor's: shape (0 for a 0-d tensor: ``ndim`` is cheaper to read), dtype, layout, device
    (True for the CPU: the cheapest read) and the negative bit of a lazy negation view
    (``z.conj().imag``), which a raw read would miss. ``record()`` builds the same tuple inline
    for the loss. ``is_neg()`` is a torch op: it lets the GIL go for a moment. The one read of
    the bit that keeps it, ``torch._C._dispatch_keys``, costs four times as much on a cold cache.
    """
    kind = type(value)
    if kind is tensor_class:
        return (
            kind,
            value.ndim and value.shape,  # 0-d: 0, else the shape
            value.dtype,
            value.layout,
            value.is_cpu or value.device,
            value.is_neg(),
        )
    if kind is float or kind in _NUMBERS:  # any value of these validates alike
        return kind
    if kind is np.ndarray:
        return (kind, value.shape, value.dtype)
    raise _Uncached


def _map_sig(mapping: Any) -> Any:
    if type(mapping) is not dict:
        raise _Uncached
    return (tuple(mapping), tuple(map(_sig, mapping.values())))


def _images_sig(mapping: Any) -> Any:
    if type(mapping) is not dict:
        raise _Uncached
    return (tuple(mapping), tuple(None if v is None else _sig(v) for v in mapping.values()))


def _formats_sig(formats: Any) -> Any:
    if formats is None or type(formats) is str:
        return formats
    if type(formats) is not dict or not all(type(v) is str for v in formats.values()):
        raise _Uncached
    return tuple(formats.items())


def _no_sig() -> Any:
    raise _Uncached


def _call_sig(
    loss: Any,
    terms: Any,
    weights: Any,
    scalars: Any,
    latents: Any,
    pred: Any,
    target: Any,
    images: Any,
    dataformats: Any,
    sample_ids: Any,
    timesteps: Any,
    checkpoint: Any,
) -> Any:
    """A call's signature, or None if one of its values is not cached."""
    try:
        return (
            None if loss is None else _sig(loss),
            None if terms is None else _map_sig(terms),
            None if weights is None else _map_sig(weights),
            None if scalars is None else _map_sig(scalars),
            None if latents is None else _sig(latents),
            None if pred is None else _sig(pred),
            None if target is None else _sig(target),
            None if images is None else _images_sig(images),
            _formats_sig(dataformats),
            None if sample_ids is None else _sig(sample_ids),
            None if timesteps is None else _sig(timesteps),
            checkpoint if checkpoint is False or checkpoint is True else _no_sig(),
        )
    except Exception:  # _Uncached, or a tensor whose shape cannot be read: validated each time
        return None


Copier = Callable[[Any, Capture | None], Any]
"""Copies one validated value on the training thread: ``copier(value, capture)``."""


def _skip(value: Any, capture: Capture | None) -> None:
    """In a plan's copiers: a name refused by a cap on names, its value dropped (never called)."""
    raise AssertionError("a refused value is never copied")


def _copy_array(value: Any, capture: Capture | None) -> Copy:
    return value.copy()


def _copy_sequence(value: Any, capture: Capture | None) -> Copy:
    return np.array(value)


def _copy_tensor(value: Any, capture: Capture | None) -> Copy:
    return value.numpy(force=True).copy()  # on CPU, force only detaches


def _copy_captured(value: Any, capture: Capture | None) -> Copy:
    assert capture is not None
    return capture.copy_value(value)


class _Reader:
    """Copies a 0-d float32/float64 CPU tensor by reading its element from memory.

    A ctypes read of a few bytes at ``data_ptr()``: about a third of a ``numpy()`` copy's cost
    on a cold cache (benchmarks/client_overhead.py, part d), no dispatcher, no device, no GIL
    release. Only for exact ``torch.Tensor``s whose signature says CPU, strided, 0-d and not
    negated (``record()`` inlines this for the loss).
    """

    __slots__ = ("at",)

    def __init__(self, ctype: Any) -> None:
        # ctypes.c_float or c_double's from_address, bound once: looking a classmethod up on a
        # ctypes type costs more, on a cold cache, than the read itself
        self.at = ctype.from_address

    def __call__(self, value: Any, capture: Capture | None) -> Any:
        try:
            address = value.data_ptr()
        except RuntimeError:  # no storage (a functorch wrapper): numpy() says why
            address = 0
        if not address:
            return _copy_tensor(value, capture)
        return self.at(address).value


def _read_type(value: Any) -> Any:
    """The ctypes type to read a validated tensor's one element with, or None."""
    if type(value) is not tensor_class or value.dim() or not value.is_cpu or value.is_neg():
        return None
    torch = sys.modules["torch"]
    if value.layout != torch.strided:
        return None
    return {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}.get(value.dtype)


def _float_of(arg: str, key: str | None) -> Copier:
    def to_float(value: Any, capture: Capture | None) -> float:
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"{_arg_name(arg, key)} is {_show_int(int(value))}, too large for a float64"
            ) from None

    return to_float


def _host_dtype(value: Any) -> np.dtype[Any] | None:
    """The numpy dtype of a CPU tensor numpy can view; None on a device, or for bfloat16 and
    the few other dtypes numpy lacks."""
    if not value.is_cpu:
        return None
    try:
        return value.numpy(force=True).dtype
    except (TypeError, RuntimeError):
        return None


def _copier(value: Any, arg: str, key: str | None) -> Copier | None:
    """How to copy a validated number, 0-d or (B,) value; None: a float, kept as it is."""
    if type(value) is float:
        return None
    if isinstance(value, np.ndarray):
        return _copy_array
    if isinstance(value, (list, tuple)):
        return _copy_sequence
    if is_tensor(value):
        ctype = _read_type(value)
        if ctype is not None:
            return _Reader(ctype)
        return _copy_tensor if _host_dtype(value) is not None else _copy_captured
    return _float_of(arg, key)  # an int or a numpy scalar


class _Stream:
    """One image stream of a plan: where its value comes from and how it is copied.

    A CPU tensor the signature says numpy can view, not negated, is copied from its bytes
    (``data_ptr()``, one ``memcpy`` into a pooled buffer) whenever it is C-contiguous: its
    first ``items`` rows are then its first ``nbytes`` bytes. Strides are not part of the
    signature, so contiguity is checked on every call; other layouts go through numpy. The copy
    keeps the value's ``layout`` (see ``_layout``): the writer thread moves its channels first.
    """

    __slots__ = (
        "chw",
        "cut",
        "dtype",
        "every",
        "facts",
        "host",
        "items",
        "key",
        "layout",
        "name",
        "nbytes",
        "rows",
        "sequence",
        "shape",
        "source",
        "tensor",
    )

    def __init__(
        self,
        name: str,
        source: int | str,
        meta: Meta,
        raw: Any,
        dtype: np.dtype[Any],
        every: int,
        items: int | None,
        layout: str,
    ) -> None:
        self.name = name  # the stored name; "" until the recorder names a new images key
        self.source, self.dtype, self.every, self.layout = source, dtype, every, layout
        self.shape = meta.shape  # as given, in ``layout``
        self.chw = chw(meta.shape, layout)
        self.facts = (meta.kind, meta.itemsize, meta.half)
        self.items = items  # rows to copy, None for one image (no N axis)
        self.cut = items is not None and items < meta.shape[0]
        self.rows = 1 if items is None else items
        one = meta.shape[1:] if items is not None else meta.shape  # one image, as given
        self.nbytes = self.rows * math.prod(one) * meta.itemsize
        self.tensor = meta.tensor
        self.sequence = not meta.tensor and not isinstance(raw, np.ndarray)
        host = None if not meta.tensor else _host_dtype(raw)
        self.host = not meta.tensor or host is not None  # else copied through a Capture
        # the pool key of a copy from the tensor's bytes; None: not a candidate
        self.key: tuple[Any, ...] | None = None
        if host is not None and self.nbytes >= POOL_MIN_BYTES and not raw.is_neg():
            self.key = ("numpy", one if items is None else (items, *one), host)

    def copy(self, value: Any, pool: BufferPool, capture: Capture | None) -> Copy:
        if self.key is not None and value.is_contiguous():
            try:
                address = value.data_ptr()
            except RuntimeError:  # no storage (a functorch wrapper): numpy() says why
                address = 0
            if address:
                captured = pool.take(self.key, self.nbytes)
                memcpy(captured.address, address, self.nbytes)
                return captured
        if self.host:
            if self.tensor:
                array = value.numpy(force=True)
            else:
                array = np.asarray(value) if self.sequence else value
            return host_copy(pool, array[: self.items] if self.cut else array, self.nbytes)
        assert capture is not None
        return capture.copy(Meta(value, self.shape, self.facts, True), self.items)


class _Plan(Layout):
    """What a validated call signature records, resolved once: copiers, columns, streams."""

    __slots__ = (
        "bare",
        "capture",
        "item_rows",
        "items",
        "loss",
        "maps",
        "read",
        "refused",
        "streams",
    )

    def __init__(
        self,
        loss: Copier | None,
        maps: list[tuple[int, list[tuple[str | None, Copier | None]]]],
        refused: frozenset[tuple[str, str]],
        checkpoint: bool,
        items: list[tuple[str, int, Copier]],
        streams: list[_Stream],
        item_rows: int,
    ) -> None:
        columns = [c for _, entries in maps for c, _ in entries if c is not None]
        super().__init__(tuple(columns), tuple(k for k, _, _ in items), checkpoint)
        self.loss = loss
        # (index into (terms, weights, scalars), a copier per key in call order); a key whose
        # column is None was refused by a cap on names
        self.maps = tuple(
            (index, tuple(_skip if c is None else copier for c, copier in entries))
            for index, entries in maps
            if entries
        )
        self.refused = refused  # (kind, key) of the keys refused
        self.items = tuple((index, copier) for _, index, copier in items)
        self.streams = tuple(streams)
        self.item_rows = item_rows  # B, for the drop count of a row that does not fit
        copiers = [loss, *(c for _, cs in self.maps for c in cs), *(c for _, c in self.items)]
        self.capture = _copy_captured in copiers or not all(s.host for s in streams)
        # step, loss and checkpoint only: record() copies the loss itself
        self.bare = not (self.maps or self.items or self.streams or self.capture)
        self.read = loss.at if isinstance(loss, _Reader) else None  # read from memory
