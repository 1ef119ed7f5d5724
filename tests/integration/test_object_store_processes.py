"""Run stores on S3 against real processes: kill -9 at random moments, a writer frozen past its
lease, texwatchd and the report reading a bucket. The S3 server is moto's, on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from integration._store_helpers import check_killed_run, kill_after, loss_of

from texwatch.store import SCALARS, RunWriter, open_run

pytestmark = pytest.mark.integration

HELPER = Path(__file__).with_name("_store_helpers.py")
LEASE = 6.0  # short for a test, long enough to be renewed in time on a loaded machine
OPTIONS = {"storage_options": {"client_options": {"timeout": "2s"}}, "lease_seconds": LEASE}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "TEXWATCH_TEST_RECORDER": json.dumps(OPTIONS),
    }


def _helper(*args: object) -> list[str]:
    return [sys.executable, str(HELPER), *map(str, args)]


def _module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` with the bucket's environment, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_kill_9_on_s3_keeps_every_committed_row(s3_bucket: str) -> None:
    url = f"{s3_bucket}/killed.zarr"
    rng = np.random.default_rng(9)
    server = subprocess.Popen(
        _helper("forkserver", url),
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    previous = 0
    try:
        # each writer first waits out the killed one's lease, then records until its kill
        for delay in LEASE + rng.uniform(0.3, 1.5, size=5):
            flushed = kill_after(server, delay)
            run = open_run(url, OPTIONS["storage_options"])  # type: ignore[arg-type]
            previous = check_killed_run(run, flushed, previous)
    finally:
        server.stdin.close()
        server.wait(timeout=60)
    assert previous > 0


def test_a_writer_frozen_past_its_lease_never_writes_again(s3_bucket: str) -> None:
    url = f"{s3_bucket}/frozen.zarr"
    old = subprocess.Popen(
        _helper("append", url, 1_000_000, 0.05),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if open_run(url).committed().get(SCALARS, 0) >= 50:
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.2)
        old.send_signal(signal.SIGSTOP)  # a frozen VM, a debugger, a swap storm
        frozen_rows = open_run(url).committed()[SCALARS]
        with RunWriter.open(url, **OPTIONS) as heir:  # type: ignore[arg-type]
            start = heir.committed()[SCALARS]
            steps = np.arange(start, start + 40)
            heir.append(SCALARS, {"step": steps, "time": steps * 1.0, "loss": loss_of(steps)})
            heir.commit()
            old.send_signal(signal.SIGCONT)  # wakes up while the heir still holds the store
            time.sleep(2 * LEASE)
            assert open_run(url).committed()[SCALARS] == start + 40
    finally:
        old.send_signal(signal.SIGCONT)
        old.terminate()
        _, err = old.communicate(timeout=60)
    assert "lost its lease" in err
    run = open_run(url)
    scalars = run.scalars(latest_wins=False)
    n = scalars["step"].shape[0]
    assert frozen_rows <= start and n == start + 40
    np.testing.assert_array_equal(scalars["step"], np.arange(n))  # no row of the old one after
    np.testing.assert_array_equal(scalars["loss"], loss_of(np.arange(n)))


def test_texwatchd_and_report_read_runs_in_a_bucket(s3_bucket: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        subprocess.run(
            _helper("append", f"{s3_bucket}/runs/{name}.zarr", 120, 0.05),
            env=_env(),
            check=True,
            capture_output=True,
        )
    daemon = _module(
        "texwatch.daemon",
        "--root",
        f"{s3_bucket}/runs/",
        "--once",
        "--snapshot-dir",
        str(tmp_path / "snapshots"),
    )
    assert daemon.returncode == 0, daemon.stderr
    for name in ("a", "b"):
        run = open_run(f"{s3_bucket}/runs/{name}.zarr")
        assert run.derived_cursor()[SCALARS] == 120
        assert run.derived(SCALARS)["step"].tolist() == list(range(120))
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "snapshots").iterdir()) == ["proc"] * 2
    report = _module(
        "texwatch.cli", "report", f"{s3_bucket}/runs/a.zarr", "-o", str(tmp_path / "report")
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["runs"][0]["name"] == "proc"
    missing = _module("texwatch.daemon", "--store", f"{s3_bucket}/none.zarr", "--once")
    assert missing.returncode == 1 and "does not exist" in missing.stderr
