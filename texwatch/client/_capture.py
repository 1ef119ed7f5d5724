"""Host copies of what ``record()`` is given, taken on the training thread without a device sync.

Torch is never imported here: a tensor is recognised through ``sys.modules["torch"]``, which is
present whenever a tensor exists. CUDA tensors are copied with ``non_blocking=True`` into pinned
host buffers and one event per device is recorded after the copies on the tensor's current
stream; only the writer thread waits on that event. CPU tensors and numpy arrays are copied too,
so later in-place changes never leak into the store.

Large copies go into buffers recycled through a ``BufferPool``: a fresh multi-MiB allocation per
call costs page faults that would dominate the copy itself.

Large copies hold the GIL: ``host_copy`` is a memoryview memcpy, not ``numpy.copyto``, and a
C-contiguous CPU tensor's bytes are copied from its ``data_ptr()`` by ``memcpy`` (libc's memmove
through ctypes, the GIL kept), not through ``numpy(force=True)``. Torch ops called from Python
(``numpy()``, ``detach()``, ``clone()``, even ``is_neg()``) and large numpy copies release the
GIL, and while the writer thread runs Python the caller then waits up to the interpreter's switch
interval (5 ms) to get it back, once per release: issue #16 measured a 15 ms p99 for an image
call of 0.8 ms median. A memcpy holding the GIL for a millisecond only delays the writer.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "POOL_MIN_BYTES",
    "BufferPool",
    "Capture",
    "Captured",
    "Copy",
    "Meta",
    "check_tensor",
    "describe",
    "host_copy",
    "is_tensor",
    "memcpy",
    "release",
    "resolve",
    "torch_kind",
]

POOL_MIN_BYTES = 1 << 16
"""Copies at least this large use recycled buffers; smaller ones are plain clones."""

memcpy = ctypes.cast(
    ctypes.memmove,
    ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t),
)
"""``memcpy(destination, source, nbytes)`` by address, holding the GIL (``ctypes.memmove`` is a
CFUNCTYPE, which releases it); it returns None, not the destination: cheaper on a cold cache."""

_TORCH_FACTS: dict[Any, tuple[str, int, bool]] = {}  # torch dtype -> (kind, itemsize, is fp16)


def is_tensor(value: object) -> bool:
    """True for a ``torch.Tensor``, without importing torch."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def torch_kind(dtype: Any) -> str:
    """The numpy dtype kind ("f", "i", "b", "c") of a torch dtype."""
    return _torch_facts(dtype)[0]


def _torch_facts(dtype: Any) -> tuple[str, int, bool]:
    facts = _TORCH_FACTS.get(dtype)
    if facts is None:
        torch = sys.modules["torch"]
        if dtype == torch.bool:
            kind = "b"
        elif dtype.is_complex:
            kind = "c"
        elif dtype.is_floating_point:
            kind = "f"
        else:
            kind = "i"
        facts = (kind, dtype.itemsize, dtype == torch.float16)
        _TORCH_FACTS[dtype] = facts
    return facts


class Meta:
    """Shape and dtype facts about an array-like input, read without touching its data."""

    __slots__ = ("half", "itemsize", "kind", "shape", "tensor", "value")

    def __init__(
        self, value: Any, shape: tuple[int, ...], facts: tuple[str, int, bool], tensor: bool
    ) -> None:
        self.value = value  # a torch.Tensor or numpy.ndarray
        self.shape = shape
        self.kind, self.itemsize, self.half = facts  # numpy dtype kind: "f", "i", "u", "b", "c"
        self.tensor = tensor

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def check_tensor(value: Any, what: Callable[[], str]) -> None:
    """Refuse a tensor with no values to copy (meta) or not laid out densely (sparse, nested)."""
    torch = sys.modules["torch"]
    if value.layout != torch.strided:
        raise TypeError(f"{what()} must be a dense tensor, got layout {value.layout}")
    if value.is_meta:
        raise ValueError(f"{what()} is a meta tensor: it has no values to record")


def describe(value: Any, what: Callable[[], str]) -> Meta:
    """Shape/dtype of a tensor, ndarray, list or tuple; TypeError naming ``what()`` otherwise.

    ``what`` builds the argument's name only when there is an error to report.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        check_tensor(value, what)
        return Meta(value, tuple(value.shape), _torch_facts(value.dtype), True)
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        dtype = value.dtype
        if dtype.kind not in "biufc":
            raise TypeError(f"{what()} must hold numbers, got a numpy array of dtype {dtype}")
        return Meta(value, value.shape, (dtype.kind, dtype.itemsize, dtype == np.float16), False)
    raise TypeError(
        f"{what()} must be a torch.Tensor, numpy.ndarray or sequence of numbers, "
        f"got {type(value).__name__}"
    )


class BufferPool:
    """Recycles host buffers by (shape, dtype, pinned) between the training and writer threads.

    Buffers come back only after the writer has copied their rows out, so a buffer is never
    refilled while its data is still needed. At most ``max_bytes`` of idle buffers are kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self._lock = threading.Lock()
        self._free: dict[tuple[Any, ...], list[Any]] = {}
        self._bytes = 0
        self._max = max_bytes

    def take(self, key: tuple[Any, ...], nbytes: int) -> Captured:
        """A buffer for ``key`` = ("torch", shape, dtype, pinned) or ("numpy", shape, dtype).

        It comes as a ``Captured`` whose ``release()`` gives it back here.
        """
        with self._lock:
            free = self._free.get(key)
            entry = free.pop() if free else None
            if entry is not None:
                self._bytes -= nbytes
        if entry is not None:
            return Captured(entry[0], nbytes, self, key, entry[1])
        if key[0] == "numpy":
            array = np.empty(key[1], dtype=key[2])
            return Captured(array, nbytes, self, key, array.ctypes.data)
        torch = sys.modules["torch"]
        buffer = torch.empty(key[1], dtype=key[2], device="cpu", pin_memory=key[3])
        return Captured(buffer, nbytes, self, key, buffer.data_ptr())

    def give(self, captured: Captured) -> None:
        nbytes = captured.nbytes
        with self._lock:
            if self._bytes + nbytes <= self._max:
                self._free.setdefault(captured.key, []).append((captured.value, captured.address))
                self._bytes += nbytes


class Captured:
    """A host copy (or a pending device-to-host copy) of one input.

    ``value`` is a numpy array or a CPU torch tensor (pinned for CUDA copies) at ``address``; a
    pooled one (``pool`` given) goes back to its pool on ``release()``.
    """

    __slots__ = ("_event", "_pool", "address", "key", "nbytes", "value")

    def __init__(
        self,
        value: Any,
        nbytes: int,
        pool: BufferPool | None = None,
        key: tuple[Any, ...] = (),
        address: int = 0,
    ) -> None:
        self.value = value
        self.nbytes = nbytes
        self._pool = pool
        self.key = key
        self.address = address
        self._event: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)

    def resolve(self) -> np.ndarray:
        """The copied values as numpy (valid until ``release``); waits for a pending CUDA copy."""
        value = self.value
        if isinstance(value, np.ndarray):
            return value
        if self._event is not None:
            self._event.synchronize()
            self._event = None
        if value.dtype == sys.modules["torch"].bfloat16:
            return value.float().numpy()
        return value.numpy()

    def release(self) -> None:
        """Give a pooled buffer back; the values must not be used afterwards."""
        pool = self._pool
        if pool is not None:
            self._pool = None
            pool.give(self)


Copy = np.ndarray | Captured
"""A host copy: a plain array for small CPU values, else a ``Captured`` buffer."""


def resolve(copy: Copy) -> np.ndarray:
    """The values of a copy (writer side)."""
    return copy if isinstance(copy, np.ndarray) else copy.resolve()


def release(copy: Copy) -> None:
    """Give a copy's pooled buffer back, if it has one."""
    if isinstance(copy, Captured):
        copy.release()


def host_copy(pool: BufferPool, array: np.ndarray, nbytes: int) -> Copy:
    """A C-ordered copy of ``array`` (``nbytes`` long): a plain array if small, else pooled.

    The copy holds the GIL (see the module docstring); a non-contiguous array falls back to
    ``numpy.copyto``, which releases it.
    """
    small = nbytes < POOL_MIN_BYTES
    captured = None if small else pool.take(("numpy", array.shape, array.dtype), nbytes)
    buffer = np.empty(array.shape, array.dtype) if captured is None else captured.value
    try:
        buffer.data.cast("B")[:] = array.data.cast("B")
    except (TypeError, ValueError):  # not C-contiguous, or a dtype without a buffer format
        np.copyto(buffer, array)
    return buffer if captured is None else captured


class Capture:
    """The copies of one ``record()`` call; ``seal()`` records the CUDA events after them."""

    __slots__ = ("_cuda", "_pool")

    def __init__(self, pool: BufferPool) -> None:
        self._pool = pool
        self._cuda: dict[Any, list[Captured]] | None = None

    def copy_value(self, value: Any) -> Copy:
        """Copy a small tensor or array (a loss, a term, a scalar) to the host."""
        if isinstance(value, np.ndarray):
            return value.copy()
        if value.is_cpu:
            try:
                return value.numpy(force=True).copy()  # on CPU, force only detaches
            except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks
                pass
        return self.copy(Meta(value, tuple(value.shape), _torch_facts(value.dtype), True))

    def copy(self, meta: Meta, items: int | None = None) -> Copy:
        """Copy ``meta.value`` (its first ``items`` rows when given) to the host."""
        value = meta.value
        shape = meta.shape
        cut = False
        if items is not None and items < shape[0]:
            shape, cut = (items, *shape[1:]), True
        nbytes = meta.itemsize
        for s in shape:
            nbytes *= s
        if not meta.tensor:
            return host_copy(self._pool, value[:items] if cut else value, nbytes)
        if value.is_cpu:
            try:
                array = value.numpy(force=True)  # on CPU, force only detaches
            except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks
                pass
            else:
                return host_copy(self._pool, array[:items] if cut else array, nbytes)
        value = (value[:items] if cut else value).detach()
        if value.is_cuda:
            captured = self._pool.take(("torch", shape, value.dtype, True), nbytes)
            captured.value.copy_(value, non_blocking=True)
            if self._cuda is None:
                self._cuda = {}
            self._cuda.setdefault(value.device, []).append(captured)
            return captured
        if not value.is_cpu:  # other accelerators: a plain synchronous copy
            return Captured(value.to("cpu", copy=True), nbytes)
        if nbytes < POOL_MIN_BYTES:
            torch = sys.modules["torch"]
            return Captured(value.clone(memory_format=torch.contiguous_format), nbytes)
        captured = self._pool.take(("torch", shape, value.dtype, False), nbytes)
        captured.value.copy_(value)
        return captured

    def seal(self) -> None:
        """Record, per CUDA device, one event after this call's copies on its current stream."""
        if not self._cuda:
            return
        torch = sys.modules["torch"]
        for device, copies in self._cuda.items():
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
            for captured in copies:
                captured._event = event
        self._cuda = None
