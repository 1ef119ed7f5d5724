"""Per-step tables of a run's derived image metrics: one row per step, looked up by step.

Shared by :mod:`texwatch.causes` (which judges rows) and :mod:`texwatch.report` (which builds and
draws them), so neither imports the other for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["column_value", "periodic_rows", "row_at", "step_table"]


def step_table(table: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per step from a derived table with one row per item, latest ``record()`` wins.

    Consecutive rows with the same step are one ``record()`` call; for a step recorded more than
    once (a resumed run) the last call is kept. Columns are averaged over the call's items
    (NaN ignored), except ``min``/``max`` (taken over them) and ``nonfinite`` (summed); an
    ``items`` column counts them. Rows come out ordered by step.
    """
    from texwatch.store import latest_rows

    steps = np.asarray(table.get("step", np.zeros(0)), dtype=np.int64)
    n = steps.size
    if n == 0:
        return {"step": steps, "items": np.zeros(0, np.int64)}
    starts = np.flatnonzero(np.r_[True, steps[1:] != steps[:-1]])
    ends = np.r_[starts[1:], n]
    keep = latest_rows(steps[starts])
    out: dict[str, np.ndarray] = {"step": steps[starts][keep], "items": (ends - starts)[keep]}
    for name, col in table.items():
        values = np.asarray(col)
        if name == "step" or values.ndim != 1 or values.dtype.kind not in "biuf":
            continue
        v = values.astype(np.float64)
        finite = np.isfinite(v)
        if name == "min":
            agg = np.fmin.reduceat(np.where(finite, v, np.nan), starts)
        elif name == "max":
            agg = np.fmax.reduceat(np.where(finite, v, np.nan), starts)
        elif name == "nonfinite":
            agg = np.add.reduceat(np.nan_to_num(v), starts)
        else:
            sums = np.add.reduceat(np.where(finite, v, 0.0), starts)
            counts = np.add.reduceat(finite.astype(np.float64), starts)
            with np.errstate(invalid="ignore", divide="ignore"):
                agg = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
        out[name] = agg[keep]
    return out


def row_at(table: Mapping[str, np.ndarray], step: int) -> int | None:
    """Index of the last row at or before ``step`` (steps sorted), or None."""
    i = int(np.searchsorted(table["step"], step, side="right")) - 1
    return i if i >= 0 else None


def column_value(table: Mapping[str, np.ndarray], key: str, i: int) -> float:
    """Row ``i`` of column ``key`` as a float; NaN where the table has no such column."""
    col = table.get(key)
    return math.nan if col is None else float(col[i])


def periodic_rows(table: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows where at least one item holds a periodic texture (``periodic`` > 0).

    ``periodic`` is a step's mean over its items; a table without the column has no periodic
    row. Only these rows have a period, an f* and a ring at f that mean something.
    """
    periodic = table.get("periodic")
    if periodic is None:
        return np.zeros(table["step"].size, dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.asarray(periodic, dtype=np.float64) > 0
