"""The healthy run's lag while another run is hung, corrupt or catching up a backlog.

texwatchd runs in-process with its default turn and stall settings. A writer commits one step of
the healthy run every 0.2 s (scalars and two items, a 64x64 pred and target every 50th step);
a step's lag is the time from its commit to texwatchd exporting it as ``texwatch_last_step``.
Beside it, one other run:

* alone: none (the baseline);
* hung: a run whose loss chunk is a FIFO nobody writes (its read blocks, as a hung NFS read does);
* corrupt: a run whose loss chunk is truncated (every turn of it fails);
* backlog: a run with 3,000 committed steps and a 64x64 pred/target/latents every 10th step.

Usage: python benchmarks/daemon_isolation.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _tables import table
from prometheus_client import CollectorRegistry

from texwatch.daemon import Daemon, DaemonOptions
from texwatch.daemon._exporter import MetricsBoard
from texwatch.derive import DeriveSettings, derive_all
from texwatch.store import ITEMS, SCALARS, RunWriter

SIZE = 64
IMAGE_EVERY = 10
HEALTHY_IMAGE_EVERY = 50


def _grating(rows: int, rng: np.random.Generator) -> np.ndarray:
    x = np.arange(SIZE, dtype=np.float32)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / 8)[None, :].repeat(SIZE, 0)
    return (wave[None, None] + 0.02 * rng.standard_normal((rows, 1, SIZE, SIZE))).astype(np.float32)


def _append(
    writer: RunWriter, steps: np.ndarray, rng: np.random.Generator, every: int = IMAGE_EVERY
) -> None:
    n = len(steps)
    writer.append(
        SCALARS,
        {"step": steps, "time": steps * 1.0, "loss": 1 + 0.05 * rng.standard_normal(n)},
    )
    writer.append(ITEMS, {"step": np.repeat(steps, 2), "loss": np.ones(2 * n)})
    kept = steps[steps % every == 0]
    if len(kept):
        for stream in ("target", "pred"):
            writer.append(stream, {"step": kept, "data": _grating(len(kept), rng)})
        latents = rng.standard_normal((len(kept), 4, 16, 16)).astype(np.float32)
        writer.append("latents", {"step": kept, "data": latents})


def _write(path: Path, steps: int) -> None:
    rng = np.random.default_rng(0)
    writer = RunWriter.open(path)
    for first in range(0, steps, 500):
        _append(writer, np.arange(first, min(first + 500, steps)), rng)
        writer.commit()


def _loss_chunk(store: Path) -> Path:
    return next(p for p in sorted((store / SCALARS / "loss").iterdir()) if p.name.startswith("c."))


def _other_run(kind: str, folder: Path) -> tuple[Path | None, Callable[[], None]]:
    """The run beside the healthy one, and what releases it at the end."""
    if kind == "alone":
        return None, lambda: None
    store = folder / f"{kind}.zarr"
    _write(store, 3000 if kind == "backlog" else 40)
    chunk = _loss_chunk(store)
    if kind == "corrupt":
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    if kind != "hung":
        return store, lambda: None
    chunk.unlink()
    os.mkfifo(chunk)

    def release() -> None:
        with contextlib.suppress(OSError):  # ENXIO: nobody had opened it yet
            os.close(os.open(chunk, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        chunk.unlink()

    return store, release


def _newest_step(registry: CollectorRegistry) -> float:
    for family in registry.collect():
        for s in family.samples:
            if s.name == "texwatch_last_step" and s.labels.get("run") == "healthy":
                return s.value
    return -1.0


def measure(kind: str, seconds: float, turn: float) -> tuple[dict[int, float], float, float]:
    """Lag (s) of each of the healthy run's steps beside a ``kind`` run; wall and CPU seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        healthy = folder / "healthy.zarr"
        writer = RunWriter.open(healthy)
        other, release = _other_run(kind, folder)
        stores = (healthy,) if other is None else (other, healthy)
        registry = CollectorRegistry()
        options = DaemonOptions(stores=stores, snapshot_dir=folder / "snaps", turn_seconds=turn)
        daemon = Daemon(options, DeriveSettings(device="cpu"), MetricsBoard(registry))
        loop = threading.Thread(target=daemon.run)
        committed: dict[int, float] = {}
        seen: dict[int, float] = {}
        rng = np.random.default_rng(1)
        wall, cpu = time.perf_counter(), time.process_time()
        loop.start()
        try:
            step, next_commit, end = 0, time.perf_counter(), time.perf_counter() + seconds
            while time.perf_counter() < end:
                now = time.perf_counter()
                if now >= next_commit:
                    _append(writer, np.array([step]), rng, every=HEALTHY_IMAGE_EVERY)
                    writer.commit()
                    committed[step] = time.perf_counter()
                    step, next_commit = step + 1, next_commit + 0.2
                newest = int(_newest_step(registry))
                for s in range(len(seen), newest + 1):
                    seen[s] = time.perf_counter()
                time.sleep(0.002)
            deadline = time.perf_counter() + 60
            while len(seen) < step and time.perf_counter() < deadline:
                for s in range(len(seen), int(_newest_step(registry)) + 1):
                    seen[s] = time.perf_counter()
                time.sleep(0.002)
        finally:
            daemon.stop()
            release()
            loop.join()
            daemon.close()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {s: seen.get(s, np.inf) - t for s, t in committed.items()}, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of commits per case")
    parser.add_argument(
        "--turn-seconds",
        type=float,
        default=DaemonOptions.turn_seconds,
        help="texwatchd's --turn-seconds (default: its default)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # torch's first FFTs are slow: not a lag
        _write(Path(tmp) / "warm.zarr", 20)
        derive_all(Path(tmp) / "warm.zarr", DeriveSettings(device="cpu"))
    kinds = ("alone", "hung", "corrupt", "backlog")
    results = {kind: measure(kind, args.seconds, args.turn_seconds) for kind in kinds}
    base = float(np.median(list(results["alone"][0].values())))
    lines = []
    for kind, (by_step, wall, cpu) in results.items():
        lags = list(by_step.values())
        plain = [lag for s, lag in by_step.items() if s % HEALTHY_IMAGE_EVERY]
        median = float(np.median(lags))
        lines.append(
            [
                kind,
                str(len(lags)),
                f"{median:.3f}",
                f"{np.percentile(lags, 99):.3f}",
                f"{max(lags):.3f}",
                f"{np.percentile(plain, 99):.3f}",
                f"{median / base:.2f}x",
                f"{wall:.1f}",
                f"{cpu:.1f}",
            ]
        )
    header = ["other run", "steps", "lag median s", "p99 s", "max s", "p99 no-image s"]
    table([*header, "median vs alone", "wall s", "CPU s"], lines)


if __name__ == "__main__":
    main()
