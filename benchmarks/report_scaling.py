"""How ``texwatch report`` grows with the checkpoints compared and with the steps of a run.

Checkpoints (target: time linear in K): one run store is written through the client (``pred``
and ``target`` with 2 items of 128×128 at every checkpoint, latents every 10 steps, loss terms
and weights every step); the report is then built for the first K checkpoints, K = 1, 2, 4, 8,
16, each ``--repeats`` times. The baseline is K = 1 in the same run. A linear model
t(K) = a + b·K is fitted to the medians; its worst relative residual says how linear it is.

Steps (target: peak RSS ≤ 400 MB at 1M steps): a scalars-only store of N steps (loss with a
spike every 9,973 steps, two loss terms with weights, ``lr``; nothing derived by texwatchd, no
checkpoint marks) is written for each ``--rows`` N, and ``texwatch report`` runs on it as a child
process; its peak RSS (``ru_maxrss``) and CPU time come from ``os.wait4``. ``--baseline-src DIR``
also runs the report of another checkout (say ``git archive <release> texwatch | tar -x -C DIR``)
on the same stores, for the ratio to it in the same run; without it, compare with the previous
release's figure in docs/performance.md. A child's ``ru_maxrss`` starts at its parent's resident
size when it was spawned (Linux carries the high-water mark across fork and exec), so this part
measures from a parent that imports neither torch nor texwatch and writes each store in a child
of its own; the parent's own peak is printed beside the table.

    python benchmarks/report_scaling.py [--part checkpoints|steps|all] [--repeats 3]
        [--max-k 16] [--rows 100000,1000000] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_EVERY = 20  # steps between checkpoints
_REPO = Path(__file__).resolve().parents[1]
_MiB = 1 << 20
_SPIKE_EVERY = 9973  # steps between the planted loss spikes of the steps part


def _tile(period: float, seed: int, size: int = 128) -> torch.Tensor:
    import torch

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    t = math.radians(30.0)
    img = 0.5 + 0.2 * torch.cos(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period)
    img = img + 0.2 * torch.cos(2 * math.pi * (-xx * math.sin(t) + yy * math.cos(t)) / period)
    img = img + 0.02 * torch.randn(size, size, generator=g)
    return img.clamp(0, 1)[None, None].expand(1, 3, size, size)


def _write(path: Path, checkpoints: int) -> list[int]:
    import torch

    import texwatch.client as tw

    rng = np.random.default_rng(0)
    marks = [_EVERY * (k + 1) for k in range(checkpoints)]
    with tw.Recorder(
        path,
        run="bench",
        every={"pred": 1, "target": 1, "latents": 1},
        max_items={"pred": 2, "target": 2, "latents": 2},
    ) as rec:
        for step in range(marks[-1] + 1):
            loss = 1.0 + 0.02 * rng.standard_normal()
            kwargs: dict[str, object] = {}
            if step in marks:
                kwargs["pred"] = torch.cat([_tile(16, step), _tile(16, step + 1)])
                kwargs["target"] = _tile(16, 7).expand(2, -1, -1, -1)
            if step % 10 == 0:
                kwargs["latents"] = torch.randn(
                    2, 4, 32, 32, generator=torch.Generator().manual_seed(step)
                )
            rec.record(
                step,
                loss,
                terms={"v": loss, "lpips": 0.1},
                weights={"v": 1.0, "lpips": 0.3},
                scalars={"lr": 1e-4},
                checkpoint=step in marks,
                **kwargs,
            )
    return marks


def checkpoints_part(repeats: int, max_k: int, threads: int) -> None:
    """Report time against the checkpoints compared, in this process."""
    import torch

    from texwatch._memory import retain_freed_memory
    from texwatch.report import build_report

    torch.set_num_threads(threads)
    retain_freed_memory()  # as the texwatch command does
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= max_k]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.zarr"
        marks = _write(store, ks[-1])
        build_report([store], Path(tmp) / "warm", steps=marks[:1], quiet=True)  # imports, caches
        wall: dict[int, list[float]] = {k: [] for k in ks}
        cpu: dict[int, list[float]] = {k: [] for k in ks}
        for r in range(repeats):  # interleaved, so load drift touches every K alike
            for k in ks:
                w0, c0 = time.perf_counter(), time.process_time()
                build_report([store], Path(tmp) / f"k{k}-{r}", steps=marks[:k], quiet=True)
                wall[k].append(time.perf_counter() - w0)
                cpu[k].append(time.process_time() - c0)
    print(f"report time vs checkpoints compared ({repeats} repeats, interleaved; baseline K = 1)")
    for what, times in (("wall", wall), ("CPU", cpu)):
        med = np.array([np.median(times[k]) for k in ks])
        p99 = np.array([np.percentile(times[k], 99) for k in ks])
        slope, icpt = np.polyfit(np.array(ks, dtype=float), med, 1)
        fit = icpt + slope * np.array(ks, dtype=float)
        print(f"\n{what} seconds")
        head = ("K", "median", "p99", "× K=1", "per extra ckpt", "linear fit")
        print(" ".join(f"{h:>{w}}" for h, w in zip(head, (4, 8, 8, 7, 15, 11), strict=True)))
        for j, k in enumerate(ks):
            extra = (med[j] - med[0]) / (k - 1) if k > 1 else float("nan")
            print(
                f"{k:>4} {med[j]:>8.2f} {p99[j]:>8.2f} {med[j] / med[0]:>7.2f} {extra:>15.2f} "
                f"{fit[j]:>11.2f}"
            )
        worst = float(np.max(np.abs(med - fit) / med))
        print(f"fit: {icpt:.2f} s + {slope:.2f} s × K; worst relative residual {worst:.1%}")


def write_steps(path: Path, rows: int, block: int = 65536) -> None:
    """A scalars-only store of ``rows`` steps, written in blocks (as a long run's commits are)."""
    from texwatch.store import SCALARS, RunWriter

    rng = np.random.default_rng(0)
    with RunWriter.open(path, run=f"steps{rows}") as writer:
        for first in range(0, rows, block):
            steps = np.arange(first, min(first + block, rows), dtype=np.int64)
            n = steps.size
            loss = 1.0 + 0.02 * rng.standard_normal(n)
            loss[steps % _SPIKE_EVERY == _SPIKE_EVERY // 2] *= 8.0
            writer.append(
                SCALARS,
                {
                    "step": steps,
                    "time": 1.7e9 + 0.1 * steps,
                    "loss": loss,
                    "term/v": loss,
                    "term/lpips": np.full(n, 0.1),
                    "weight/v": np.ones(n),
                    "weight/lpips": np.full(n, 0.3),
                    "lr": np.full(n, 1e-4),
                },
            )
            writer.commit()


def report_child(store: Path, out: Path, src: Path) -> dict[str, float]:
    """Peak RSS (MiB), CPU and wall seconds of ``texwatch report`` run from checkout ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    argv = [sys.executable, "-m", "texwatch.cli", "report", str(store), "-o", str(out), "--quiet"]
    argv += ["--device", "cpu"]
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=src)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"texwatch report from {src} exited {code} on {store}")
    # read in a process of its own: the previous release's JSON of 1M steps takes 1 GiB parsed
    code = (
        "import json, sys; run = json.load(open(sys.argv[1]))['runs'][0]; "
        "print(len(run['spikes']), len(run['series']['scalars']['step']))"
    )
    counted = subprocess.run(
        [sys.executable, "-c", code, str(out / "report.json")],
        check=True,
        capture_output=True,
        text=True,
    )
    spikes, points = (int(x) for x in counted.stdout.split())
    return {
        "rss": usage.ru_maxrss / 1024,  # KiB on Linux
        "cpu": usage.ru_utime + usage.ru_stime,
        "wall": wall,
        "json": (out / "report.json").stat().st_size / _MiB,
        "spikes": spikes,
        "points": points,
    }


def steps_part(rows: list[int], baseline: Path | None) -> None:
    """Peak RSS and CPU time of a child ``texwatch report`` against a run's steps."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _tables import table

    sources = [("this checkout", _REPO)] + ([("baseline", baseline)] if baseline else [])
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in rows:
            store = Path(tmp) / f"steps{n}.zarr"
            argv = [sys.executable, __file__, "--write-steps", str(store), str(n)]
            subprocess.run(argv, check=True, env=dict(os.environ, PYTHONPATH=str(_REPO)))
            for name, src in sources:
                results[name, n] = report_child(
                    store, Path(tmp) / f"{name}-{n}".replace(" ", "-"), src
                )
    planted = {n: len(range(_SPIKE_EVERY // 2, n, _SPIKE_EVERY)) for n in rows}
    lines = []
    for name, _ in sources:
        for n in rows:
            r = results[name, n]
            ratio = ""
            if baseline is not None and name != "baseline":
                b = results["baseline", n]
                ratio = f"{r['rss'] / b['rss']:.2f} / {r['cpu'] / b['cpu']:.2f}"
            lines.append(
                [
                    name,
                    f"{n:,}",
                    f"{r['rss']:,.0f}",
                    f"{r['rss'] * _MiB / 1e6:,.0f}",
                    f"{r['cpu']:.1f}",
                    f"{r['wall']:.1f}",
                    f"{r['json']:.1f}",
                    f"{r['points']:,}",
                    f"{r['spikes']} ({planted[n]})",
                    ratio,
                ]
            )
    head = [
        "report",
        "steps",
        "peak RSS MiB",
        "peak RSS MB",
        "CPU s",
        "wall s",
        "JSON MiB",
        "series rows",
        "spikes listed (planted)",
        "RSS / CPU × baseline",
    ]
    table(head, lines)
    for name, _ in sources:
        if len(rows) > 1:
            lo, hi = rows[0], rows[-1]
            per = (results[name, hi]["rss"] - results[name, lo]["rss"]) * 1024 / (hi - lo)
            print(f"{name}: {per * 1024:.1f} bytes of peak RSS per step from {lo:,} to {hi:,}")
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"this script's own peak RSS: {parent:.0f} MiB (a child's peak below it reads as it)")
    print("previous release (issue #16, 2-core machine): 1M steps, 1.6 GB RSS, 52 s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("checkpoints", "steps", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-k", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    parser.add_argument(
        "--rows",
        default="100000,1000000",
        help="steps of the scalars-only stores (comma-separated)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="a checkout of another texwatch (the previous release) to report on the same stores",
    )
    parser.add_argument("--write-steps", nargs=2, metavar=("STORE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_steps:  # the steps part's store writer, in a process of its own
        write_steps(Path(args.write_steps[0]), int(args.write_steps[1]))
        return
    if args.part in ("steps", "all"):  # first: this process stays small under its children
        rows = [int(r) for r in args.rows.split(",") if r.strip()]
        steps_part(rows, args.baseline_src.resolve() if args.baseline_src else None)
    if args.part in ("checkpoints", "all"):
        checkpoints_part(args.repeats, args.max_k, args.threads)


if __name__ == "__main__":
    main()
