"""texwatchd's backlog, snapshots, threads and image commits, against a real texwatchd process.

Measures, each in a ``texwatchd`` subprocess with default settings unless named (wall time, and
CPU time of the process from ``getrusage``):

* a scalar backlog (``--steps`` steps, latents and pred every 1,000th) with ``--once``:
  snapshots on (default, one per 1,000 steps) against snapshots off;
* an image backlog (``--image-rows`` rows of pred 3x256x256) with ``--once``: rows per second
  and per CPU second with ``--threads 1`` (the default) against ``--threads 2`` (the baseline:
  torch's default threads against ``OMP_NUM_THREADS=1``);
* commit -> /metrics for commits carrying pred 4x3x512x512, against scalar commits;
* one snapshot in-process (median and p99 over ``--snapshots`` draws), and its drawing alone
  against the same panels all drawn as matplotlib axes (the drawing before the image panels
  became pixels), alternated in the same run.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
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


def _once(
    src: Path, source: Path, work: Path, *flags: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """Wall and CPU seconds of ``texwatchd --once`` over a fresh copy of ``source``."""
    store = work / "run.zarr"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, store)
    argv = _texwatchd(src, "--store", str(store), "--once", "--device", "cpu")
    argv += ["--snapshot-dir", str(work / "snaps"), "--log-level", "WARNING", *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, check=True, env={**os.environ, **(env or {})})
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


def _full_figure(**kw: Any) -> bytes:
    """The snapshot as every panel on a matplotlib axes, encoded by ``savefig``: how
    ``plots.snapshot_figure`` drew it before its image panels became pixels."""
    from texwatch import plots, spectral

    imgs = np.asarray(kw["images"])
    panel = plots.spectrum_panel(imgs, ref_radius=kw.get("ref_radius"))
    fig = plots.new_figure(16.0, 8.0)
    grid = plots.grid_spec(fig, 2, 4)
    plots.draw_image_grid(fig.add_subplot(grid[0, 0]), imgs)
    plots.draw_log_spectrum(fig.add_subplot(grid[0, 1]), panel)
    plots.draw_radial_profile(fig.add_subplot(grid[0, 2]), panel)
    plots.draw_acf(fig.add_subplot(grid[0, 3]), panel)
    plots.draw_loss(
        fig.add_subplot(grid[1, :2]),
        np.asarray(kw["loss_steps"]),
        np.asarray(kw["loss"]),
        ema=kw.get("loss_ema"),
        spike_steps=kw.get("spike_steps", ()),
        warn_steps=kw.get("warn_steps", ()),
    )
    if kw.get("target") is not None:
        heat = spectral.diff_heatmap(torch.as_tensor(imgs[:1]), torch.as_tensor(kw["target"][:1]))
        plots.draw_heatmap(fig.add_subplot(grid[1, 2]), heat.numpy().reshape(heat.shape[-2:]))
    plots.draw_text_table(fig.add_subplot(grid[1, 3]), dict(kw.get("metrics") or {}))
    plots.set_title(fig, plots.literal(kw.get("title", "")))
    return plots.figure_png(fig)


def _snapshot_cost(work: Path, draws: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds of one snapshot of a run with pred, in-process: the whole snapshot
    (reads, JSON, PNG), then its drawing alone, now and as a full matplotlib figure (the same
    inputs, alternated)."""
    from prometheus_client import CollectorRegistry

    from texwatch import plots
    from texwatch.daemon import Daemon, DaemonOptions
    from texwatch.daemon._exporter import MetricsBoard
    from texwatch.derive import DeriveSettings

    store = work / "snap.zarr"
    _scalar_backlog(store, 5000)
    options = DaemonOptions(stores=(store,), snapshot_dir=work / "snaps")
    daemon = Daemon(options, DeriveSettings(device="cpu"), MetricsBoard(CollectorRegistry()))
    drawn: list[dict[str, Any]] = []
    draw = plots.snapshot_figure

    def keep(**kw: Any) -> bytes:
        drawn.append(kw)
        return draw(**kw)

    out: dict[str, tuple[list[float], list[float]]] = {}

    def timed(name: str, call: Callable[[], object]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls, cpus = out.setdefault(name, ([], []))
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)

    plots.snapshot_figure = keep
    try:
        daemon.catch_up()
        for _ in range(draws):
            timed("snapshot", daemon.snapshot_all)  # the newest step, drawn on this thread
    finally:
        plots.snapshot_figure = draw
        daemon.close()
    for _ in range(draws):
        timed("drawing", lambda: draw(**drawn[-1]))
        timed("full figure", lambda: _full_figure(**drawn[-1]))
    return out


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
            # An earlier texwatch has no --threads (torch's default threads): one thread for it
            # is OMP_NUM_THREADS=1, the same work as this one's default.
            runs = [((), {}), (("--threads", "2"), {})]
            if code == "baseline":
                runs = [((), {}), ((), {"OMP_NUM_THREADS": "1"})]
            for flags, env in runs:
                wall, cpu = _once(src, images, tmp / "work", *flags, env=env)
                wall, cpu = wall - start_wall, cpu - start_cpu
                named = [*flags, *(f"{k}={v}" for k, v in env.items())]
                label = f"{code} {' '.join(named) or 'defaults'}"
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

        cost = _snapshot_cost(tmp / "snapcost", args.snapshots)
        print(
            f"\nOne snapshot (pred 128x128 and the loss panel), {args.snapshots} draws each, "
            "seconds, in-process"
        )
        old_wall, old_cpu = (float(np.median(v)) for v in cost["full figure"])
        rows = []
        for name, label in (
            ("snapshot", "whole snapshot (reads, JSON, PNG), wall"),
            ("drawing", "its drawing (snapshot_figure), wall"),
            ("full figure", "the same as a full matplotlib figure, wall"),
        ):
            walls, cpus = cost[name]
            drawing = name != "snapshot"
            rows.append(_row(label, walls, f"{np.median(walls) / old_wall:.2f}" * drawing))
            rows.append(_row("  CPU", cpus, f"{np.median(cpus) / old_cpu:.2f}" * drawing))
        table(["measure", "median", "p95", "p99", "drawing / full figure"], rows)


if __name__ == "__main__":
    main()
