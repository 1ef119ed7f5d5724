"""Cost of durable commits (``Recorder(durable=True)``) against the default, measured in one run.

(a) One commit on the writer's side: ``RunWriter.append`` of a block (64 scalar rows of step,
    time, loss, lr, term/v and 4 latents rows 4x64x64 fp16) then ``commit()``; wall and CPU time
    per commit (median, p99) and commits/s, durable vs default. Modes alternate block by block so
    a shared machine's load hits both alike.
(b) ``record(step, loss, latents=1x4x64x64)`` on the training thread with ``flush_interval``
    0.02 s (a commit every ~20 rows): per-call wall and CPU time (median, p99), then the time
    ``flush()`` takes to commit the last rows; durable vs default.

The filesystem the stores live on decides the figures (fsync on tmpfs is free): it is printed.

Run: ``python benchmarks/durable_commits.py [--dir DIR] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from texwatch.client import Recorder
from texwatch.store import SCALARS, RunWriter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table  # noqa: E402  (beside this script)

_BLOCK_ROWS = 64
_LATENT_ROWS = 4


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts (longest mount prefix)."""
    best, kind = "", "unknown"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                _, point, fs, *_ = line.split()
                if (real + "/").startswith(point.rstrip("/") + "/") and len(point) > len(best):
                    best, kind = point, fs
    except OSError:
        pass
    return kind


def _stats(values: np.ndarray) -> tuple[float, float]:
    return float(np.median(values)), float(np.percentile(values, 99))


def _commits(root: Path, blocks: int) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
    """Per-commit (wall, CPU) seconds for default and durable writers, blocks interleaved."""
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((_LATENT_ROWS, 4, 64, 64)).astype(np.float16)
    writers = {
        mode: RunWriter.open(root / f"commit-{mode}.zarr", durable=mode) for mode in (False, True)
    }
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for block in range(blocks):
            steps = np.arange(block * _BLOCK_ROWS, (block + 1) * _BLOCK_ROWS)
            scalars = {
                "step": steps,
                "time": np.full(_BLOCK_ROWS, 1.7e9),
                "loss": rng.random(_BLOCK_ROWS),
                "lr": np.full(_BLOCK_ROWS, 1e-4),
                "term/v": rng.random(_BLOCK_ROWS),
            }
            stream = {"step": steps[:_LATENT_ROWS], "data": latents}
            for mode in (block % 2 == 0, block % 2 == 1):
                writer = writers[mode]
                wall, cpu = time.perf_counter(), time.process_time()
                writer.append(SCALARS, scalars)
                writer.append("latents", stream)
                writer.commit()
                times[mode].append((time.perf_counter() - wall, time.process_time() - cpu))
    finally:
        for writer in writers.values():
            writer.close()
    return {
        mode: (np.array([w for w, _ in t]), np.array([c for _, c in t]))
        for mode, t in times.items()
    }


def _records(root: Path, calls: int, durable: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-call (wall, CPU of the calling thread) seconds of record(), and the final flush()."""
    latents = np.random.default_rng(1).standard_normal((1, 4, 64, 64)).astype(np.float32)
    walls, cpus = np.empty(calls), np.empty(calls)
    with Recorder(root / f"record-{durable}.zarr", flush_interval=0.02, durable=durable) as rec:
        for step in range(calls):
            wall, cpu = time.perf_counter(), time.thread_time()
            rec.record(step, 0.5, latents=latents, scalars={"lr": 1e-4})
            walls[step], cpus[step] = time.perf_counter() - wall, time.thread_time() - cpu
            time.sleep(0.0005)  # a training step's worth of pause: the writer keeps up
        flush = time.perf_counter()
        rec.flush()
        flushed = time.perf_counter() - flush
        assert not rec.stats.drops, rec.stats.drops
    return walls, cpus, flushed


def _line(
    durable: bool, wall: np.ndarray, cpu: np.ndarray, *, scale: float, base: float, extra: str
) -> list[str]:
    """One table line: medians and p99s of wall and CPU time in ``1/scale`` s, ``extra``, ratio."""
    (w50, w99), (c50, c99) = _stats(wall), _stats(cpu)
    times = [f"{v * scale:.{1 if scale > 1e3 else 2}f}" for v in (w50, w99, c50, c99)]
    return ["durable" if durable else "default", *times, extra, f"{w50 / base:.2f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: TMP)")
    parser.add_argument("--quick", action="store_true", help="fewer commits and calls")
    args = parser.parse_args()
    blocks, calls = (100, 1000) if args.quick else (400, 4000)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(
            f"machine: {platform.platform()}, {os.cpu_count()} CPUs, {platform.processor() or '?'};"
            f" stores on {_filesystem(root)} ({root})\n"
        )
        commits = _commits(root, blocks)
        base = float(np.median(commits[False][0]))
        lines = [
            _line(
                mode,
                *commits[mode],
                scale=1e3,
                base=base,
                extra=f"{1.0 / float(np.mean(commits[mode][0])):.0f}",
            )
            for mode in (False, True)
        ]
        print(
            f"(a) one commit of {_BLOCK_ROWS} scalar + {_LATENT_ROWS} latents rows, {blocks} each"
        )
        table(
            [
                "commit",
                "wall median ms",
                "wall p99 ms",
                "CPU median ms",
                "CPU p99 ms",
                "commits/s",
                "wall ratio to default",
            ],
            lines,
        )
        results = {mode: _records(root, calls, mode) for mode in (False, True)}
        base = float(np.median(results[False][0]))
        lines = [
            _line(
                mode,
                *results[mode][:2],
                scale=1e6,
                base=base,
                extra=f"{results[mode][2] * 1e3:.1f}",
            )
            for mode in (False, True)
        ]
        print(f"(b) record(step, loss, latents=1x4x64x64, scalars), {calls} calls, flush 0.02 s")
        table(
            [
                "record()",
                "wall median µs",
                "wall p99 µs",
                "CPU median µs",
                "CPU p99 µs",
                "final flush() ms",
                "wall ratio to default",
            ],
            lines,
        )


if __name__ == "__main__":
    main()
