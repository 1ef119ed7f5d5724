"""Issue 13, item 6: texwatchd's memory is bounded by a byte budget, not by rows."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from texwatch import derive
from texwatch.daemon import build_parser
from texwatch.derive import Deriver, DeriveSettings, byte_size, settings_from_args
from texwatch.errors import ComputeError
from texwatch.store import SCALARS, RunWriter, open_run

ROWS, SIZE = 256, 128  # 256 pred rows 3x128x128 float32: 192 MiB read, ~1.3 GiB derived at once
HEADROOM = 512 << 20  # virtual memory the child may add past its imports

# Runs texwatchd --once with RLIMIT_AS set past what its imports take. One malloc arena and two
# torch threads make the virtual size follow the heap, whatever the machine's core count.
_CHILD = """
import resource, sys
import torch, matplotlib.pyplot
from texwatch.daemon import main
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
limit = size + int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def _backlog(store: Path) -> None:
    rng = np.random.default_rng(3)
    writer = RunWriter.open(store)
    x = np.arange(SIZE, dtype=np.float32)
    wave = (0.5 + 0.4 * np.sin(2 * np.pi * x / 12.0))[None, :].repeat(SIZE, 0)
    for first in range(0, ROWS, 32):
        steps = np.arange(first, first + 32)
        writer.append(SCALARS, {"step": steps, "loss": 1.0 + 0.05 * rng.standard_normal(32)})
        noise = 0.05 * rng.standard_normal((32, 3, SIZE, SIZE)).astype(np.float32)
        writer.append("pred", {"step": steps, "data": wave[None, None] + noise})
        writer.commit()


def _derive_under_limit(store: Path, tmp_path: Path, *options: str) -> dict[str, int]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "OMP_NUM_THREADS": "2"}
    argv = [sys.executable, "-c", _CHILD, str(HEADROOM), "--store", str(store), "--once"]
    argv += ["--device", "cpu", "--snapshot-dir", str(tmp_path), *options]
    subprocess.run(argv, env=env, capture_output=True, timeout=1800)
    return open_run(store).derived_cursor()


@pytest.mark.integration
def test_a_backlog_derives_under_an_address_space_limit_the_unbounded_batch_exceeds(
    tmp_path: Path,
) -> None:
    unbounded, budgeted = tmp_path / "unbounded.zarr", tmp_path / "budgeted.zarr"
    # --once derives whole batches: unbudgeted, 256 rows are read and derived at once, and
    # they cannot fit.
    _backlog(unbounded)
    _backlog(budgeted)
    assert _derive_under_limit(unbounded, tmp_path, "--memory-budget", "1TiB").get("pred", 0) < ROWS
    cursor = _derive_under_limit(budgeted, tmp_path, "--memory-budget", "128MiB")
    assert cursor["pred"] == ROWS and cursor[SCALARS] == ROWS
    derived = open_run(budgeted).derived("pred")
    assert derived["step"].tolist() == list(range(ROWS))
    assert np.isfinite(derived["fundamental_radius_bin"]).all()


def test_sub_batches_derive_the_same_rows_as_one_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "run.zarr"
    writer = RunWriter.open(store)
    data = np.random.default_rng(0).random((12, 3, 64, 64), dtype=np.float32)
    writer.append("target", {"step": np.arange(12), "data": data})
    writer.append("pred", {"step": np.arange(12), "data": np.flip(data, -1).copy()})
    writer.commit()
    run = open_run(store)
    whole = Deriver(DeriveSettings(memory_budget=1 << 40)).advance(run, run.committed())
    sizes: list[int] = []
    texture_metrics = derive.spectral.texture_metrics

    def measured(x: Any, **kwargs: Any) -> Any:
        sizes.append(x.shape[0])
        return texture_metrics(x, **kwargs)

    monkeypatch.setattr(derive.spectral, "texture_metrics", measured)
    split = Deriver(DeriveSettings(memory_budget=52 << 20)).advance(run, run.committed())
    assert sum(sizes) == 24 and 1 < max(sizes) < 12  # a few rows per sub-batch
    assert whole is not None and split is not None
    for table in ("target", "pred"):
        assert whole.tables[table].keys() == split.tables[table].keys()
        for key, column in whole.tables[table].items():
            np.testing.assert_allclose(split.tables[table][key], column, rtol=1e-5, err_msg=key)
    assert not np.isnan(split.tables["pred"]["loss/spectral_period"]).any()


def test_a_budget_too_small_for_one_row_is_refused_naming_the_flag(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    writer = RunWriter.open(store)
    writer.append("pred", {"step": np.arange(2), "data": np.zeros((2, 3, 512, 512), np.float32)})
    writer.append(SCALARS, {"step": np.arange(2), "loss": np.ones(2)})
    writer.commit()
    run = open_run(store)
    deriver = Deriver(DeriveSettings(memory_budget=64 << 20))
    batch = deriver.advance(run, run.committed())
    assert batch is not None and list(batch.tables) == [SCALARS]  # the loss goes on
    error = deriver.stream_errors()["pred"]
    assert isinstance(error, ComputeError)
    assert "--memory-budget" in str(error) and "64 MiB" in str(error)
    assert "3x512x512 float32" in str(error) and "expected at least" in str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1GiB", 1 << 30), ("512MiB", 512 << 20), ("768m", 768 << 20), ("4096", 4096)],
)
def test_memory_budget_flag_reads_sizes(text: str, expected: int) -> None:
    args = build_parser().parse_args(["--store", "x.zarr", "--memory-budget", text])
    args.device = "cpu"
    assert settings_from_args(args).memory_budget == expected
    assert build_parser().parse_args(["--store", "x"]).memory_budget == 512 << 20


@pytest.mark.parametrize("text", ["0", "-1GiB", "lots", "1.5PiB", ""])
def test_memory_budget_flag_rejects_what_is_no_size(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"but got {text!r}"):
        byte_size(text)
    with pytest.raises(ValueError, match="memory_budget must be > 0"):
        DeriveSettings(memory_budget=0)
