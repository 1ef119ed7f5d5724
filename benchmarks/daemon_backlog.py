"""texwatchd's backlog, snapshots, threads and image commits, against a real texwatchd process.

Measures, each in a ``texwatchd`` subprocess with default settings unless named (wall time, and
CPU time of the process from ``getrusage``):

* a scalar backlog (``--steps`` steps, latents and pred every 1,000th) with ``--once``:
  snapshots on (default, one per 1,000 steps) against snapshots off;
* an image backlog (``--image-rows`` rows of pred 3x256x256) with ``--once``: rows per second
  and per CPU second with ``--threads 1`` (the default) against ``--threads 2``;
* commit -> /metrics for commits carrying pred 4x3x512x512, against scalar commits;
* one snapshot drawn in-process (median and p99 over ``--snapshots`` draws).

``--baseline DIR`` (a checkout of an earlier texwatch) runs the same backlogs and commits with
that code too, in the same run, for the ratios.

Usage: python benchmarks/daemon_backlog.py [--steps 100000] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _tables import table
from daemon_latency import free_port, wait_step

from texwatch.store import ITEMS, SCALARS, RunWriter

_REPO = Path(__file__).resolve().parents[1]


def _scalar_backlog(store: Path, steps: int) -> None:
    rng = np.random.default_rng(0)
    writer = RunWriter.open(store)
    for start in range(0, steps, 1000):
        block = np.arange(start, min(steps, start + 1000))
        n = len(block)
        loss = 0.1 * (1 + 0.05 * rng.standard_normal(n))
        writer.append(SCALARS, {"step": block, "time": block * 0.5, "loss": loss})
        writer.append(ITEMS, {"step": np.repeat(block, 2), "loss": np.repeat(loss, 2)})
        first = block[:1]
        latents = rng.standard_normal((1, 4, 64, 64)).astype(np.float16)
        writer.append("latents", {"step": first, "data": latents})
        pred = rng.random((1, 3, 128, 128), dtype=np.float32)
        writer.append("pred", {"step": first, "data": pred})
        writer.commit()


def _image_backlog(store: Path, rows: int) -> None:
    rng = np.random.default_rng(1)
    writer = RunWriter.open(store)
    if not rows:  # a store holding one loss row: texwatchd's start-up alone
        writer.append(SCALARS, {"step": np.zeros(1, np.int64), "loss": np.ones(1)})
        writer.commit()
    for start in range(0, rows, 50):
        block = np.arange(start, min(rows, start + 50))
        writer.append(SCALARS, {"step": block, "loss": np.ones(len(block))})
        data = rng.random((len(block), 3, 256, 256), dtype=np.float32)
        writer.append("pred", {"step": block, "data": data})
        writer.commit()


def _texwatchd(src: Path, *args: str) -> list[str]:
    code = f"import sys; sys.path.insert(0, {str(src)!r}); from texwatch.daemon import main; "
    return [sys.executable, "-c", code + "sys.exit(main(sys.argv[1:]))", *args]


def _once(src: Path, source: Path, work: Path, *flags: str) -> tuple[float, float]:
    """Wall and CPU seconds of ``texwatchd --once`` over a fresh copy of ``source``."""
    store = work / "run.zarr"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, store)
    argv = _texwatchd(src, "--store", str(store), "--once", "--device", "cpu")
    argv += ["--snapshot-dir", str(work / "snaps"), "--log-level", "WARNING", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def _commit_latency(src: Path, work: Path, samples: int, images: bool) -> list[float]:
    """Seconds from a commit to its step on /metrics, commits with pred 4x3x512^2 or not."""
    store = work / ("images.zarr" if images else "scalars.zarr")
    rng = np.random.default_rng(2)
    writer = RunWriter.open(store)

    def commit(step: int) -> None:
        steps = np.array([step])
        writer.append(SCALARS, {"step": steps, "loss": np.ones(1)})
        if images:
            pred = rng.random((4, 3, 512, 512), dtype=np.float32)
            writer.append("pred", {"step": np.repeat(steps, 4), "data": pred})
        writer.commit()

    commit(0)
    port = free_port()
    argv = _texwatchd(src, "--store", str(store), "--port", str(port), "--device", "cpu")
    proc = subprocess.Popen([*argv, "--log-level", "WARNING"])
    try:
        wait_step(port, 0, limit=60.0)
        out = []
        for step in range(1, samples + 1):
            time.sleep(1.0)  # the previous commit's images are derived by now
            commit(step)
            published = time.perf_counter()
            out.append(wait_step(port, step, limit=60.0) - published)
        return out
    finally:
        proc.terminate()
        proc.wait(60)


def _snapshot_cost(work: Path, draws: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of drawing one snapshot of a run with pred and target, in-process."""
    from prometheus_client import CollectorRegistry

    from texwatch.daemon import Daemon, DaemonOptions
    from texwatch.daemon._exporter import MetricsBoard
    from texwatch.derive import DeriveSettings

    store = work / "snap.zarr"
    _scalar_backlog(store, 5000)
    options = DaemonOptions(stores=(store,), snapshot_dir=work / "snaps")
    daemon = Daemon(options, DeriveSettings(device="cpu"), MetricsBoard(CollectorRegistry()))
    walls, cpus = [], []
    try:
        daemon.catch_up()
        for _ in range(draws):
            wall, cpu = time.perf_counter(), time.process_time()
            daemon.snapshot_all()  # the one run's newest step, drawn on this thread
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    finally:
        daemon.close()
    return walls, cpus


def _row(name: str, values: list[float], target: str = "") -> list[str]:
    return [
        name,
        f"{np.median(values):.3f}",
        f"{np.percentile(values, 95):.3f}",
        f"{np.percentile(values, 99):.3f}",
        target,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="scalar backlog steps")
    parser.add_argument("--image-rows", type=int, default=300, help="image backlog rows")
    parser.add_argument("--samples", type=int, default=20, help="commits timed to /metrics")
    parser.add_argument("--snapshots", type=int, default=10, help="snapshots drawn and timed")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier texwatch")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")
    codes = {"this": _REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scalars, images = tmp / "src" / "scalars.zarr", tmp / "src" / "images.zarr"
        _scalar_backlog(scalars, args.steps)
        _image_backlog(images, args.image_rows)
        backlog = []
        for code, src in codes.items():
            on = _once(src, scalars, tmp / "work")
            off = _once(src, scalars, tmp / "work", "--snapshot-every", str(10**9))
            backlog.append([code, *(f"{v:.1f}" for v in on), *(f"{v:.1f}" for v in off)])
            backlog[-1].append(f"{on[0] / off[0]:.2f}x")
        print(f"\nScalar backlog, {args.steps} steps, texwatchd --once (target: <= 1.3x off)")
        head = ["code", "snapshots on wall s", "CPU s", "off wall s", "CPU s", "on / off"]
        table(head, backlog)

        threads = []
        empty = tmp / "src" / "empty.zarr"
        _image_backlog(empty, 0)
        for code, src in codes.items():
            start_wall, start_cpu = _once(src, empty, tmp / "work")  # imports and start-up
            for flags in ((), ("--threads", "2")):
                if code == "baseline" and flags:
                    continue  # an earlier texwatch has no --threads: torch's default threads
                wall, cpu = _once(src, images, tmp / "work", *flags)
                wall, cpu = wall - start_wall, cpu - start_cpu
                label = f"{code} {' '.join(flags) or 'defaults'}"
                rows = args.image_rows
                threads.append([label, f"{wall:.1f}", f"{cpu:.1f}", f"{rows / wall:.1f}"])
                threads[-1].append(f"{rows / cpu:.1f}")
        print(
            f"\nImage backlog, {args.image_rows} rows of pred 3x256x256, texwatchd --once, "
            "less the start-up of a run with no rows"
        )
        table(["code, flags", "wall s", "CPU s", "rows/s", "rows per CPU s"], threads)

        latency = []
        for code, src in codes.items():
            for images_too in (False, True):
                what = "pred 4x3x512^2" if images_too else "scalars only"
                values = _commit_latency(src, tmp / f"lat-{code}", args.samples, images_too)
                target = "p95 <= 0.5" if images_too else ""
                latency.append(_row(f"{code}: commit with {what}", values, target))
        print("\nCommit -> texwatch_last_step on /metrics, seconds")
        table(["commit", "median", "p95", "p99", "target"], latency)

        walls, cpus = _snapshot_cost(tmp / "snapcost", args.snapshots)
        print(f"\nOne snapshot (pred 128x128 and the loss panel), {args.snapshots} draws, seconds")
        table(
            ["measure", "median", "p95", "p99", ""],
            [_row("wall", walls), _row("CPU", cpus)],
        )


if __name__ == "__main__":
    main()
