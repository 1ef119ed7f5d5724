"""Issue 13, item 8: a corrupt or failing stream stops only itself, and its error names the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from texwatch import derive
from texwatch.derive import Deriver, DeriveSettings, derive_all
from texwatch.errors import ComputeError, CorruptChunkError
from texwatch.store import ITEMS, SCALARS, RunWriter, open_run

ROWS = 200  # latents 4x32x32 float32 are 16 KiB a row: 64 rows per chunk, chunk 2 holds 128-191


def _write(store: Path) -> None:
    rng = np.random.default_rng(7)
    writer = RunWriter.open(store)
    steps = np.arange(ROWS)
    loss = 1.0 + 0.05 * rng.standard_normal(ROWS)
    loss[150] = 50.0
    writer.append(SCALARS, {"step": steps, "loss": loss, "term/v": loss})
    writer.append(ITEMS, {"step": steps, "loss": loss})
    latents = rng.standard_normal((ROWS, 4, 32, 32)).astype(np.float32)
    writer.append("latents", {"step": steps, "data": latents})
    pred = rng.random((ROWS, 1, 32, 32), dtype=np.float32)
    writer.append("pred", {"step": steps, "data": pred})
    writer.commit()


def _derive(deriver: Deriver, store: Path, max_rows: int = 64) -> dict[str, list[dict[str, Any]]]:
    run = open_run(store)
    committed = run.committed()
    batches: dict[str, list[dict[str, Any]]] = {}
    while (batch := deriver.advance(run, committed, max_rows)) is not None:
        for table, cols in batch.tables.items():
            batches.setdefault(table, []).append(cols)
    return batches


def _rows(batches: dict[str, list[dict[str, Any]]], table: str) -> list[int]:
    return [int(s) for cols in batches.get(table, []) for s in cols["step"]]


def test_a_truncated_latents_chunk_stops_only_latents_until_repaired(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    _write(store)
    chunk = store / "latents" / "data" / "c.2.0.0.0"
    good = chunk.read_bytes()
    chunk.write_bytes(good[: len(good) // 3])
    deriver = Deriver(DeriveSettings(window=32, dead_window=20))
    batches = _derive(deriver, store)

    assert _rows(batches, SCALARS) == list(range(ROWS))  # the loss detectors saw every row
    assert sum(deriver.loss_monitor.counts.values()) >= 1  # the spike at step 150 was seen
    assert _rows(batches, "pred") == list(range(ROWS))
    assert _rows(batches, "latents") == list(range(128))  # stopped at the chunk before
    assert deriver.cursor == {SCALARS: ROWS, ITEMS: ROWS, "pred": ROWS, "latents": 128}
    errors = deriver.stream_errors()
    assert list(errors) == ["latents"]
    assert isinstance(errors["latents"], CorruptChunkError)
    assert errors["latents"].path == str(chunk)
    assert str(chunk) in str(errors["latents"])

    again = _derive(deriver, store)  # still corrupt: retried, nothing more, the error stays
    assert again == {} and deriver.cursor["latents"] == 128 and "latents" in deriver.stream_errors()

    chunk.write_bytes(good)
    repaired = _derive(deriver, store)
    assert _rows(repaired, "latents") == list(range(128, ROWS))
    assert deriver.stream_errors() == {}


def test_a_corrupt_scalars_chunk_stops_only_the_loss(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    _write(store)
    chunk = store / "scalars" / "loss" / "c.0"
    chunk.write_bytes(b"\x00garbage" * 8)
    deriver = Deriver(DeriveSettings(window=32, dead_window=20))
    batches = _derive(deriver, store)
    assert _rows(batches, "latents") == _rows(batches, "pred") == list(range(ROWS))
    assert SCALARS not in batches and deriver.cursor.get(SCALARS, 0) == 0
    error = deriver.stream_errors()[SCALARS]
    assert isinstance(error, CorruptChunkError) and error.path == str(chunk)


def test_a_failing_metric_is_a_compute_error_of_that_stream_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "run.zarr"
    _write(store)
    texture_metrics = derive.spectral.texture_metrics

    def broken_on_pred(x: Any, **kwargs: Any) -> Any:
        if x.shape[1] == 1:
            raise RuntimeError("simulated kernel failure")
        return texture_metrics(x, **kwargs)

    monkeypatch.setattr(derive.spectral, "texture_metrics", broken_on_pred)
    deriver = Deriver(DeriveSettings(window=32, dead_window=20))
    batches = _derive(deriver, store)
    assert _rows(batches, "latents") == _rows(batches, SCALARS) == list(range(ROWS))
    assert "pred" not in batches and deriver.cursor.get("pred", 0) == 0
    error = deriver.stream_errors()["pred"]
    assert isinstance(error, ComputeError) and error.kind == "compute"
    assert "pred" in str(error) and "simulated kernel failure" in str(error)
    assert error.path == str(store / "pred")

    monkeypatch.setattr(derive.spectral, "texture_metrics", texture_metrics)
    assert _rows(_derive(deriver, store), "pred") == list(range(ROWS))
    assert deriver.stream_errors() == {}


def test_derive_all_refuses_a_corrupt_stream_naming_the_chunk(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    _write(store)
    chunk = store / "latents" / "data" / "c.1.0.0.0"
    chunk.write_bytes(b"")
    with pytest.raises(CorruptChunkError, match="c.1.0.0.0"):
        derive_all(store, DeriveSettings(window=32, dead_window=20))
