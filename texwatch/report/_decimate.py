"""Decimation of a step-ordered table for the report's figures and JSON series.

A run of a million steps draws on a figure a thousand pixels wide: the report keeps, per bucket
of consecutive rows, the rows holding each column's minimum and maximum (so every line's
envelope is drawn exactly as the whole table would draw it), the first NaN row of a bucket that
has one (so gaps stay gaps), and every flagged row (spikes and warnings, so no spike is ever
averaged or skipped away). Every column is kept at every kept row, so the result is still one
table with one ``step`` column.

The table streams through :class:`Decimator` in chunks of any size; only the rows of the
bucket in progress and the kept rows are held.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["BUCKETS", "KEEP_ALL", "Decimator", "decimate"]

BUCKETS = 1024
"""Buckets a long table is cut into: about one per pixel of the report's widest figure."""

KEEP_ALL = 4096
"""Tables of at most this many rows are kept whole."""


class Decimator:
    """Keeps of a table streamed in step order each bucket's extreme rows and every flagged row.

    Example:
        >>> steps = np.arange(100_000)
        >>> loss = np.ones(steps.size); loss[51_234] = 9.0
        >>> d = Decimator(steps.size, buckets=100, keep_all=1000)
        >>> for a in range(0, steps.size, 30_000):
        ...     d.update({"step": steps[a:a + 30_000], "loss": loss[a:a + 30_000]})
        >>> out = d.result()
        >>> bool(out["step"].size <= 2 * 100), 51_234 in out["step"], float(out["loss"].max())
        (True, True, 9.0)

    Args:
        rows: rows the table will have; more than ``keep_all`` are cut into ``buckets``
            buckets of ``ceil(rows / buckets)`` consecutive rows each (the last may be short).
        buckets: buckets of a long table.
        keep_all: a table of at most this many rows is kept whole.
    """

    def __init__(self, rows: int, *, buckets: int = BUCKETS, keep_all: int = KEEP_ALL) -> None:
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        self.width = 1 if rows <= keep_all else math.ceil(rows / buckets)
        """Rows per bucket (1: nothing is dropped)."""
        self.seen = 0
        """Rows given so far."""
        self.kept = 0
        """Rows kept so far."""
        self._pending: dict[str, np.ndarray] = {}  # the rows of the bucket in progress
        self._pending_flags = np.zeros(0, dtype=bool)
        self._parts: dict[str, list[np.ndarray]] = {}

    def update(self, chunk: Mapping[str, np.ndarray], flagged: np.ndarray | None = None) -> None:
        """Take the next rows: 1-D columns of one length, with ``step``; ``flagged`` rows
        (a boolean mask) are kept whatever their values. A column missing here reads NaN."""
        n = len(chunk["step"])
        if n == 0:
            return
        flags = np.zeros(n, dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
        if flags.shape != (n,):
            raise ValueError(f"flagged must be a ({n},) mask, got shape {flags.shape}")
        for name in chunk:
            if name not in self._parts:  # a new column: NaN at the rows kept and held so far
                self._parts[name] = [np.full(self.kept, np.nan)] if self.kept else []
                if self._pending:
                    self._pending[name] = np.full(self._pending_flags.size, np.nan)
        cols = {
            name: np.asarray(chunk[name]) if name in chunk else np.full(n, np.nan)
            for name in self._parts
        }
        if self._pending:
            cols = {k: np.concatenate([self._pending[k], v]) for k, v in cols.items()}
            flags = np.concatenate([self._pending_flags, flags])
        self.seen += n
        whole = (flags.size // self.width) * self.width
        if whole:
            self._keep({k: v[:whole] for k, v in cols.items()}, flags[:whole], self.width)
        self._pending = {k: v[whole:] for k, v in cols.items()}
        self._pending_flags = flags[whole:]

    def result(self) -> dict[str, np.ndarray]:
        """The kept rows, in the order given (the last, shorter bucket included)."""
        if self._pending_flags.size:
            self._keep(self._pending, self._pending_flags, self._pending_flags.size)
            self._pending, self._pending_flags = {}, np.zeros(0, dtype=bool)
        return {
            k: np.concatenate(v) if v else np.zeros(0, np.int64 if k == "step" else np.float64)
            for k, v in self._parts.items()
        }

    def _keep(self, cols: Mapping[str, np.ndarray], flags: np.ndarray, width: int) -> None:
        """Keep the extreme, first-NaN and flagged rows of whole buckets of ``width`` rows."""
        if width == 1:
            rows = np.arange(flags.size)
        else:
            buckets = flags.size // width
            chosen = flags.reshape(buckets, width).copy()
            at = np.arange(buckets)
            for name, col in cols.items():
                if name == "step" or col.dtype.kind not in "biuf":
                    continue
                v = col.astype(np.float64, copy=False).reshape(buckets, width)
                nan = np.isnan(v)
                chosen[at, np.where(nan, np.inf, v).argmin(axis=1)] = True
                chosen[at, np.where(nan, -np.inf, v).argmax(axis=1)] = True
                gap = nan.any(axis=1)
                chosen[at[gap], nan[gap].argmax(axis=1)] = True
            rows = np.flatnonzero(chosen.ravel())
        for name, col in cols.items():
            self._parts[name].append(col[rows])
        self.kept += rows.size


def decimate(
    table: Mapping[str, np.ndarray],
    flagged: np.ndarray | None = None,
    *,
    buckets: int = BUCKETS,
    keep_all: int = KEEP_ALL,
) -> dict[str, np.ndarray]:
    """A whole step-ordered table through :class:`Decimator`: itself when it is short."""
    steps = table.get("step")
    if steps is None or len(steps) <= keep_all:
        return dict(table)
    d = Decimator(len(steps), buckets=buckets, keep_all=keep_all)
    d.update(table, flagged)
    return d.result()
