"""The report's decimation: every flagged row and each bucket's min/max of every column kept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from texwatch.report._decimate import Decimator, decimate


def _table(n: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A long step-ordered table: a noisy loss with rare spikes, a weight schedule, a column
    with NaN gaps, and a flag column; and the mask of its flagged rows."""
    rng = np.random.default_rng(seed)
    steps = np.arange(n, dtype=np.int64) * 3 + 7  # not the row index
    loss = 1.0 + 0.05 * rng.standard_normal(n)
    spikes = rng.choice(n, size=25, replace=False)
    loss[spikes] = 1.02  # a flagged step need not be an extreme of its bucket
    lr = np.repeat(np.linspace(1e-4, 1e-5, 10), math.ceil(n / 10))[:n]
    gappy = rng.standard_normal(n)
    gappy[(np.arange(n) // 997) % 3 == 1] = np.nan  # NaN runs: the line must break there
    flags = np.zeros(n, dtype=bool)
    flags[spikes] = True
    return {"step": steps, "loss": loss, "lr": lr, "gappy": gappy}, flags


def _chunks(n: int, rng: np.random.Generator) -> list[slice]:
    cuts = np.sort(rng.choice(np.arange(1, n), size=40, replace=False))
    edges = [0, *cuts.tolist(), n]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_flagged_row_and_each_bucket_s_envelope_are_kept(seed: int) -> None:
    n, buckets = 100_003, 128
    table, flags = _table(n, seed)
    d = Decimator(n, buckets=buckets, keep_all=1000)
    for part in _chunks(n, np.random.default_rng(seed)):  # chunk edges cut through buckets
        d.update({k: v[part] for k, v in table.items()}, flags[part])
    out = d.result()
    assert d.seen == n and d.kept == out["step"].size
    assert out["step"].size < n // 20  # bounded by the buckets, not the rows
    assert np.all(np.diff(out["step"]) > 0)  # still one row per step, in order
    rows = (out["step"] - 7) // 3  # each kept row's index in the table
    for name, col in table.items():  # every column is kept at every kept row
        assert np.array_equal(out[name], col[rows], equal_nan=True), name
    assert set(np.flatnonzero(flags)) <= set(rows.tolist())  # every spike
    width = d.width
    for b in range(math.ceil(n / width)):
        bucket = slice(b * width, min(n, (b + 1) * width))
        kept = rows[(rows >= bucket.start) & (rows < bucket.stop)]
        for name in ("loss", "lr", "gappy"):
            values = table[name][bucket]
            finite = values[~np.isnan(values)]
            if finite.size:  # the bucket's min and max are drawn
                assert np.nanmin(table[name][kept]) == finite.min(), (name, b)
                assert np.nanmax(table[name][kept]) == finite.max(), (name, b)
            if np.isnan(values).any():  # and a gap stays a gap
                assert np.isnan(table[name][kept]).any(), (name, b)


def test_streamed_in_chunks_or_whole_the_kept_rows_are_the_same() -> None:
    n = 50_000
    table, flags = _table(n)
    whole = decimate(table, flags, buckets=100, keep_all=1000)
    d = Decimator(n, buckets=100, keep_all=1000)
    for part in _chunks(n, np.random.default_rng(5)):
        d.update({k: v[part] for k, v in table.items()}, flags[part])
    streamed = d.result()
    for name in table:
        assert np.array_equal(whole[name], streamed[name], equal_nan=True)


def test_a_short_table_is_kept_whole() -> None:
    table, flags = _table(900)
    out = decimate(table, flags, keep_all=1000)
    assert all(np.array_equal(out[k], table[k], equal_nan=True) for k in table)
    d = Decimator(900, keep_all=1000)
    d.update(table)
    assert d.width == 1 and d.result()["step"].size == 900


def test_a_column_that_appears_later_reads_nan_before() -> None:
    d = Decimator(20_000, buckets=10, keep_all=100)
    steps = np.arange(20_000)
    d.update({"step": steps[:10_000], "loss": np.ones(10_000)})
    d.update(
        {"step": steps[10_000:], "loss": np.ones(10_000), "term/new": np.linspace(0, 1, 10_000)}
    )
    out = d.result()
    early = out["step"] < 10_000
    assert early.any() and np.isnan(out["term/new"][early]).all()
    assert np.nanmin(out["term/new"]) == 0.0 and np.nanmax(out["term/new"]) == 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        Decimator(10, buckets=0)
    d = Decimator(10)
    with pytest.raises(ValueError, match="flagged"):
        d.update({"step": np.arange(3)}, np.ones(2, dtype=bool))
