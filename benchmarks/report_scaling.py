"""How ``texwatch report`` time grows with the number of checkpoints compared (target: linearly).

One run store is written through the client (``pred`` and ``target`` with 2 items of 128×128 at
every checkpoint, latents every 10 steps, loss terms and weights every step); the report is then
built for the first K checkpoints, K = 1, 2, 4, 8, 16, each ``--repeats`` times. The baseline is
K = 1 in the same run. A linear model t(K) = a + b·K is fitted to the medians; its worst
relative residual says how linear the growth is.

    python benchmarks/report_scaling.py [--repeats 3] [--max-k 16]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import texwatch.client as tw
from texwatch._memory import retain_freed_memory
from texwatch.report import build_report

_EVERY = 20  # steps between checkpoints


def _tile(period: float, seed: int, size: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    t = math.radians(30.0)
    img = 0.5 + 0.2 * torch.cos(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period)
    img = img + 0.2 * torch.cos(2 * math.pi * (-xx * math.sin(t) + yy * math.cos(t)) / period)
    img = img + 0.02 * torch.randn(size, size, generator=g)
    return img.clamp(0, 1)[None, None].expand(1, 3, size, size)


def _write(path: Path, checkpoints: int) -> list[int]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-k", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the texwatch command does
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= args.max_k]
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "bench.zarr"
        marks = _write(store, ks[-1])
        build_report([store], Path(tmp) / "warm", steps=marks[:1], quiet=True)  # imports, caches
        wall: dict[int, list[float]] = {k: [] for k in ks}
        cpu: dict[int, list[float]] = {k: [] for k in ks}
        for r in range(args.repeats):  # interleaved, so load drift touches every K alike
            for k in ks:
                w0, c0 = time.perf_counter(), time.process_time()
                build_report([store], Path(tmp) / f"k{k}-{r}", steps=marks[:k], quiet=True)
                wall[k].append(time.perf_counter() - w0)
                cpu[k].append(time.process_time() - c0)
    print(
        f"report time vs checkpoints compared ({args.repeats} repeats, interleaved; baseline K = 1)"
    )
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


if __name__ == "__main__":
    main()
