"""texwatchd latency and incremental cost.

Measures, against a real ``texwatchd`` subprocess on loopback with default settings:
  * commit -> /metrics: from the commit marker's publication to the new step on /metrics;
  * record() -> /metrics: from ``record()`` returning (default client flush policy) to /metrics;
and in-process:
  * backlog catch-up: rows/s deriving a store's backlog (scalars + latents + pred/target);
  * one wake at 1k vs 100k committed rows: the cost of deriving 16 new rows (flat = within 1.5x).

Usage: python benchmarks/daemon_latency.py [--samples 40]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

import texwatch.client as tw
from texwatch._memory import retain_freed_memory
from texwatch.daemon import Daemon, DaemonOptions
from texwatch.daemon._exporter import MetricsBoard
from texwatch.derive import DeriveSettings
from texwatch.store import ITEMS, SCALARS, RunWriter


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def last_step(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("texwatch_last_step{"):
                return float(line.rsplit(" ", 1)[1])
    return None


def wait_step(port: int, step: int, limit: float = 30.0) -> float:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        try:
            if last_step(port) == step:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"step {step} never reached /metrics")


def _start_daemon(store: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "texwatch.daemon",
            "--store",
            str(store),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ],
    )
    return proc


def _scalar_rows(writer: RunWriter, steps: np.ndarray) -> None:
    n = len(steps)
    writer.append(
        SCALARS,
        {
            "step": steps,
            "time": np.full(n, time.time()),
            "loss": 1.0 + 0.01 * np.sin(steps.astype(np.float64)),
        },
    )


def bench_commit_latency(tmp: Path, samples: int) -> list[float]:
    store = tmp / "commit.zarr"
    writer = RunWriter.open(store)
    _scalar_rows(writer, np.arange(1))
    writer.commit()
    port = free_port()
    proc = _start_daemon(store, port)
    try:
        wait_step(port, 0, limit=60)
        out = []
        for step in range(1, samples + 1):
            _scalar_rows(writer, np.array([step]))
            writer.commit()
            published = time.perf_counter()
            out.append(wait_step(port, step) - published)
            time.sleep(0.05)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


def bench_record_latency(tmp: Path, samples: int) -> list[float]:
    store = tmp / "record.zarr"
    rec = tw.Recorder(store)
    rec.record(0, 1.0)
    rec.flush()
    port = free_port()
    proc = _start_daemon(store, port)
    try:
        wait_step(port, 0, limit=60)
        out = []
        rng = np.random.default_rng(0)
        for step in range(1, samples + 1):
            rec.record(step, 1.0)
            returned = time.perf_counter()
            out.append(wait_step(port, step) - returned)
            time.sleep(float(rng.uniform(0.0, 0.3)))  # land at random points of the flush cycle
        return out
    finally:
        rec.close()
        proc.terminate()
        proc.wait(30)


def _make_backlog(store: Path, rows: int, images_every: int) -> None:
    rng = np.random.default_rng(1)
    writer = RunWriter.open(store)
    block = 1024
    for start in range(0, rows, block):
        steps = np.arange(start, min(rows, start + block))
        _scalar_rows(writer, steps)
        writer.append(ITEMS, {"step": np.repeat(steps, 2)})
        keep = steps[steps % images_every == 0] if images_every else steps[:0]
        if len(keep):
            writer.append(
                "latents",
                {
                    "step": keep,
                    "data": rng.standard_normal((len(keep), 4, 64, 64)).astype(np.float16),
                },
            )
            writer.append(
                "pred",
                {"step": keep, "data": rng.random((len(keep), 3, 128, 128)).astype(np.float32)},
            )
        writer.commit()


def _daemon(store: Path) -> tuple[Daemon, CollectorRegistry]:
    registry = CollectorRegistry()
    opts = DaemonOptions(
        stores=(store,), batch_rows=256, snapshot_dir=store.parent / "snaps", snapshot_every=10**9
    )
    return Daemon(opts, DeriveSettings(), MetricsBoard(registry)), registry


def bench_backlog(tmp: Path, rows: int) -> tuple[float, float]:
    store = tmp / "backlog.zarr"
    _make_backlog(store, rows, images_every=10)
    daemon, _ = _daemon(store)
    try:
        started = time.perf_counter()
        derived = daemon.catch_up()  # one round derives at most one batch per run
        return derived / (time.perf_counter() - started), derived
    finally:
        daemon.close()


def bench_wake(tmp: Path, rows: int, wakes: int) -> list[float]:
    store = tmp / f"wake{rows}.zarr"
    _make_backlog(store, rows, images_every=0)
    daemon, _ = _daemon(store)
    try:
        daemon.pass_once()
        writer = RunWriter.open(store)
        out = []
        for i in range(wakes):
            _scalar_rows(writer, np.arange(rows + 16 * i, rows + 16 * (i + 1)))
            writer.commit()
            started = time.perf_counter()
            daemon.pass_once()
            out.append(time.perf_counter() - started)
        return out
    finally:
        daemon.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--backlog-rows", type=int, default=5000)
    args = parser.parse_args()
    retain_freed_memory()  # as texwatchd does, for the in-process measures
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        commit = bench_commit_latency(tmp, args.samples)
        record = bench_record_latency(tmp, args.samples)
        rate, derived = bench_backlog(tmp, args.backlog_rows)
        small = bench_wake(tmp, 1_000, 30)
        large = bench_wake(tmp, 100_000, 30)
    print(f"{'measure':<44} {'median':>10} {'p95':>10} {'p99':>10} {'target':>14}")
    for name, values, target in (
        ("commit marker -> /metrics (s)", commit, "p95 <= 0.5"),
        ("record() returned -> /metrics (s)", record, "p95 <= 1.5"),
        ("one wake, 16 new rows, 1k committed (ms)", [v * 1e3 for v in small], ""),
        ("one wake, 16 new rows, 100k committed (ms)", [v * 1e3 for v in large], ""),
    ):
        print(
            f"{name:<44} {statistics.median(values):>10.3f} {_pct(values, 95):>10.3f} "
            f"{_pct(values, 99):>10.3f} {target:>14}"
        )
    ratio = statistics.median(large) / statistics.median(small)
    print(
        f"{'wake cost ratio 100k / 1k (median)':<44} {ratio:>10.2f} {'':>10} {'':>10} "
        f"{'<= 1.5':>14}"
    )
    print(
        f"{'backlog catch-up (rows/s, all tables)':<44} {rate:>10.0f} {'':>10} {'':>10} "
        f"{f'{int(derived)} rows':>14}"
    )


if __name__ == "__main__":
    main()
