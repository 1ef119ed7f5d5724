"""texwatchd as a real process beside a real writer process: exactly-once derivation, kill -9,
SIGTERM, and the /metrics exposition checked by prometheus_client's parser and promtool."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from texwatch.store import SCALARS, open_run

pytestmark = pytest.mark.integration

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import texwatch.client as tw

    path, steps, spike = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    x = np.arange(64, dtype=np.float32)
    target = (0.5 + 0.4 * np.sin(2 * np.pi * x / 8))[None, None, None, :].repeat(64, 2)
    pred = (0.5 + 0.4 * np.sin(2 * np.pi * x / 16))[None, None, None, :].repeat(64, 2)
    tw.init(path, run="proc", every={"pred": 50, "target": 50, "latents": 10})
    for step in range(steps):
        loss = 80.0 if step == spike else 1.0 + 0.05 * rng.standard_normal()
        tw.record(step, loss, latents=rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
                  pred=pred.astype(np.float32), target=target.astype(np.float32),
                  terms={"v": loss, "edge": 0.0}, weights={"v": 1.0, "edge": 0.5})
    tw.close()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write(path: Path, steps: int, spike: int = -1) -> None:
    subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(steps), str(spike)], check=True, timeout=120
    )


def _daemon(store: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "texwatch.daemon",
            "--store",
            str(store),
            "--port",
            str(port),
            "--rescan",
            "0.2",
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def _wait_for(port: int, name: str, expected: float, timeout: float = 240.0, **labels: str) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        try:
            text = _scrape(port)
        except OSError:
            time.sleep(0.2)
            continue
        if _sample(text, name, **labels) == expected:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{name}{labels} never reached {expected} in {timeout} s:\n{text[-2000:]}")


def _assert_exactly_once(store: Path) -> None:
    run = open_run(store)
    assert run.derived_cursor() == run.committed()
    for table, rows in run.committed().items():
        if table == "items":
            continue
        source = (
            run.scalars(latest_wins=False)["step"] if table == SCALARS else run.stream(table)[0]
        )
        np.testing.assert_array_equal(run.derived(table)["step"], source[:rows])


def test_daemon_follows_a_live_writer_exactly_once(tmp_path: Path) -> None:
    store = tmp_path / "live.zarr"
    port = _free_port()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(store), "3000", "2500"])
    for _ in range(100):  # texwatchd needs the store to exist to start on it
        if (store / "zarr.json").exists():
            break
        time.sleep(0.1)
    daemon = _daemon(store, port)
    try:
        assert writer.wait(timeout=120) == 0
        text = _wait_for(port, "texwatch_last_step", 2999, run="proc")
        _wait_for(port, "texwatch_daemon_lag_rows", 0, run="proc")
        # One spike; its counter is per rule that fired on it (hard_max is certain at 80x).
        assert _sample(text, "texwatch_loss_spikes_total", run="proc", rule="hard_max") == 1
        assert (_sample(text, "texwatch_tile_scale", run="proc", stream="pred") or 0) >= 1.5
        assert _sample(text, "texwatch_dead_loss_terms", run="proc") == 1
        checked = subprocess.run(
            ["promtool", "check", "metrics"],
            input=_scrape(port).encode(),
            capture_output=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
    assert code == 0, daemon.stderr.read().decode() if daemon.stderr else ""
    _assert_exactly_once(store)
    assert open_run(store).derived(SCALARS)["spike"].sum() == 1


def test_kill_9_at_random_moments_leaves_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    store = tmp_path / "k.zarr"
    _write(store, 1000)
    rng = random.Random(7)
    seen = [0]
    for _ in range(5):
        daemon = _daemon(store, _free_port(), "--batch-rows", "16")
        # Wait for fresh progress, then kill at a random moment of the batches that follow.
        deadline = time.monotonic() + 120
        while open_run(store).derived_cursor().get(SCALARS, 0) <= seen[-1]:
            assert time.monotonic() < deadline, "texwatchd made no progress"
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(timeout=30)
        if daemon.stderr:
            daemon.stderr.close()
        seen.append(open_run(store).derived_cursor().get(SCALARS, 0))
    assert seen[-1] < 1000, "the last kill came after the backlog was done; nothing was tested"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "texwatch.daemon",
            "--store",
            str(store),
            "--once",
            "--device",
            "cpu",
            "--snapshot-dir",
            str(tmp_path / "snaps"),
        ],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    _assert_exactly_once(store)
