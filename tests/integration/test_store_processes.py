"""The store against real processes: a concurrent reader, kill -9 at random moments, a full disk,
exit without close(), and an import that must stay light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
from integration._store_helpers import check_killed_run, check_rows, kill_after, latents_of, loss_of

from texwatch.store import ITEMS, SCALARS, open_run

pytestmark = pytest.mark.integration

HELPER = Path(__file__).with_name("_store_helpers.py")
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _helper(*args: object) -> list[str]:
    return [sys.executable, str(HELPER), *map(str, args)]


def _tensorstore_rows(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """Committed scalars rows read without texwatch: the root zarr.json, then tensorstore."""
    committed = json.loads((path / "zarr.json").read_text())["attributes"].get("committed", {})
    n = committed.get(SCALARS, 0)

    def read(array: str, rows: int) -> np.ndarray:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / array)}}
        return np.asarray(ts.open(spec).result()[:rows].read().result())

    if n == 0:
        return 0, np.zeros(0), np.zeros(0)
    return n, read("scalars/loss", n), read("latents/data", committed["latents"])


def test_reader_polling_a_writer_sees_monotone_complete_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.zarr"
    steps = 5000
    writer = subprocess.Popen(
        _helper("append", path, steps, 0.02), env=ENV, stdout=subprocess.PIPE, text=True
    )
    seen: list[int] = []
    try:
        while writer.poll() is None or not seen or seen[-1] < steps:
            if not (path / "zarr.json").exists():
                time.sleep(0.01)
                continue
            run = open_run(path)
            committed = run.committed()
            n = committed.get(SCALARS, 0)
            assert not seen or n >= seen[-1], f"committed went back: {seen[-1]} -> {n}"
            seen.append(n)
            assert committed.get("latents", 0) == 2 * n and committed.get(ITEMS, 0) == 2 * n
            scalars = run.scalars(latest_wins=False)  # a fresh snapshot: as many rows or more
            rows = scalars["step"].shape[0]
            assert rows >= n
            if rows:
                latent_steps, data = run.stream("latents", 0, 2 * rows)
                check_rows(scalars, latent_steps, data)
                assert not np.isnan(scalars["term/v"]).any()
            ts_n, ts_loss, ts_latents = _tensorstore_rows(path)
            assert ts_n >= rows
            np.testing.assert_array_equal(ts_loss, loss_of(np.arange(ts_n)))
            if ts_n:
                np.testing.assert_array_equal(ts_latents[-1], latents_of(ts_n - 1)[1])
            if writer.poll() is not None and n == steps:
                break
    finally:
        writer.wait(timeout=60)
    assert writer.stdout is not None
    assert writer.returncode == 0 and json.loads(writer.stdout.read()) == {}  # no drops
    assert seen[-1] == steps and len(set(seen)) > 3  # it really read while rows were arriving


def test_kill_9_at_20_random_moments_keeps_every_committed_row(tmp_path: Path) -> None:
    path = tmp_path / "killed.zarr"
    rng = np.random.default_rng(20)
    server = subprocess.Popen(
        _helper("forkserver", path),
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    previous = 0
    try:
        for delay in rng.uniform(0.02, 0.4, size=20):
            flushed = kill_after(server, delay)
            if not path.exists():
                assert flushed == 0  # killed before the store existed: nothing was promised
                continue
            previous = check_killed_run(open_run(path), flushed, previous)  # always opens
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert previous > 0
    leftovers = [p for p in path.parent.iterdir() if p.name.endswith(".partial")]
    assert all(p.name.startswith(".killed.zarr.") for p in leftovers)


def test_full_disk_surfaces_on_close_while_training_continues(tmp_path: Path) -> None:
    path = tmp_path / "full.zarr"
    limit = 256 * 1024  # per-file limit: the random latents' chunks outgrow it after ~20 rows
    result = subprocess.run(
        _helper("diskfull", path, limit, 400), env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["recorded"] == 400  # every record() returned
    assert summary["error"] == {"type": "OSError", "errno": 27}  # EFBIG, raised by close()
    assert summary["errors"] >= 1 and summary["drops"]["latents"] > 0
    run = open_run(path)
    committed = run.committed()
    assert committed[SCALARS] == 400  # scalars were kept when the image rows could not be
    np.testing.assert_array_equal(run.scalars()["loss"], loss_of(np.arange(400)))
    assert 8 <= committed.get("latents", 0) < 800 and run.errors() >= 1
    steps, data = run.stream("latents")
    assert np.isfinite(data).all() and (np.diff(steps) >= 0).all()


def test_exit_without_close_commits_what_was_recorded(tmp_path: Path) -> None:
    path = tmp_path / "exit.zarr"
    subprocess.run(_helper("atexit", path, 300), env=ENV, check=True, timeout=60)
    np.testing.assert_array_equal(open_run(path).scalars()["loss"], loss_of(np.arange(300)))


def test_importing_the_client_stays_light() -> None:
    code = (
        "import sys, texwatch.client, texwatch.store\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'prometheus_client', 'watchdog')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "[]"
