"""Cost of ``texwatch.client.record()`` on the calling thread, beside TensorBoard and a raw copy.

Per call, measured on the training thread in one run (median and p99, microseconds):

(a) ``record(step, loss)`` with a 0-d loss tensor, against ``SummaryWriter.add_scalar`` and a
    plain ``detach().clone()`` of the loss;
(b) ``record(step, loss, latents=4x4x64x64, pred=4x3x256x256)`` (both kept every call), against
    ``add_scalar`` + ``add_histogram(latents)`` + ``add_images(pred)`` and against a raw copy of
    the same payload (``numpy.copyto`` into preallocated buffers: the memory-bandwidth floor) and
    ``torch.clone``. Calls are paced so the writer keeps up (no drops).

Sustained: record at a fixed rate (2,000 scalar steps/s; 200 steps/s with latents at their
default sampling) and count drops; and the highest scalar rate, record-to-committed.

Run: ``python benchmarks/client_overhead.py`` (``--quick`` for a shorter run). Needs torch and
tensorboard (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from texwatch.client import Recorder


def _timed(
    call: Callable[[int], object], n: int, period: float = 0.0, first: int = 0
) -> np.ndarray:
    """Per-call wall time in microseconds of ``call(first + i)``; paced every ``period`` s."""
    times = np.empty(n)
    next_start = time.perf_counter()
    for i in range(n):
        if period:
            next_start += period
            delay = next_start - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        step = first + i
        t0 = time.perf_counter_ns()
        call(step)
        times[i] = (time.perf_counter_ns() - t0) / 1e3
    return times


def _row(name: str, times: np.ndarray, reference: np.ndarray) -> str:
    median, p99 = float(np.median(times)), float(np.percentile(times, 99))
    return f"| {name} | {median:,.1f} | {p99:,.1f} | {median / float(np.median(reference)):.2f} |"


def _scalar_case(root: Path, n: int) -> list[str]:
    loss = torch.tensor(0.5, requires_grad=True) * 1.0  # what a training step hands over
    tb = SummaryWriter(str(root / "tb_scalar"))
    rec = Recorder(root / "scalar.zarr")
    parts: dict[str, list[np.ndarray]] = {"ours": [], "theirs": [], "copy": []}
    block = n // 10
    try:
        _timed(lambda i: rec.record(i, loss), 2000)  # warm-up
        _timed(lambda i: tb.add_scalar("loss", loss, i), 2000)
        for r in range(10):  # interleaved blocks: a shared machine's load hits all three alike
            first = 2000 + r * block
            parts["ours"].append(_timed(lambda i: rec.record(i, loss), block, first=first))
            parts["theirs"].append(
                _timed(lambda i: tb.add_scalar("loss", loss, i), block, first=first)
            )
            parts["copy"].append(_timed(lambda i: loss.detach().clone(), block))
        rec.flush()
        drops = dict(rec.stats.drops)
    finally:
        rec.close()
        tb.close()
    ours, theirs, copy = (np.concatenate(parts[k]) for k in ("ours", "theirs", "copy"))
    return [
        "| (a) `record(step, loss)`, 0-d loss tensor | median µs | p99 µs | ÷ texwatch |",
        "|---|---:|---:|---:|",
        _row("texwatch `record`", ours, ours),
        _row("TensorBoard `add_scalar`", theirs, ours),
        _row("raw copy (`detach().clone()`)", copy, ours),
        f"\ndrops: {drops or 'none'}",
    ]


def _image_case(root: Path, n: int, rate: float) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    latents = torch.randn(4, 4, 64, 64, generator=gen)
    pred = torch.rand(4, 3, 256, 256, generator=gen)
    lat_buf, pred_buf = np.empty((4, 4, 64, 64), np.float32), np.empty((4, 3, 256, 256), np.float32)
    tb = SummaryWriter(str(root / "tb_images"))
    rec = Recorder(root / "images.zarr", every={"pred": 1})

    def ours(i: int) -> None:
        rec.record(i, loss, latents=latents, pred=pred)

    def theirs(i: int) -> None:
        tb.add_scalar("loss", loss, i)
        tb.add_histogram("latents", latents, i)
        tb.add_images("pred", pred, i)

    def memcpy(i: int) -> None:
        np.copyto(lat_buf, latents.numpy())
        np.copyto(pred_buf, pred.numpy())

    def clone(i: int) -> None:
        latents.clone()
        pred.clone()

    try:
        _timed(ours, 20, 1 / rate)
        t_ours = _timed(ours, n, 1 / rate, first=20)
        rec.flush()
        drops = dict(rec.stats.drops)
        t_tb = _timed(theirs, n, 1 / rate)
        t_copy = _timed(memcpy, n, 1 / rate)
        t_clone = _timed(clone, n, 1 / rate)
    finally:
        rec.close()
        tb.close()
    mb = (latents.numel() + pred.numel()) * 4 / 2**20
    return [
        f"| (b) `record` with latents + pred ({mb:.2f} MiB, {rate:g} calls/s) | median µs "
        f"| p99 µs | ÷ raw copy |",
        "|---|---:|---:|---:|",
        _row("texwatch `record`", t_ours, t_copy),
        _row("TensorBoard `add_scalar` + `add_histogram` + `add_images`", t_tb, t_copy),
        _row("raw copy (`numpy.copyto`, preallocated)", t_copy, t_copy),
        _row("raw copy (`torch.clone`)", t_clone, t_copy),
        f"\ndrops: {drops or 'none'}",
    ]


def _sustained(root: Path, seconds: float) -> list[str]:
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    latents = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    lines = ["| sustained | steps | achieved steps/s | drops |", "|---|---:|---:|---:|"]
    for name, rate, with_latents in (
        ("scalars at 2,000 steps/s", 2000.0, False),
        ("loss + latents 4x4x64x64 at 200 steps/s", 200.0, True),
    ):
        steps = int(rate * seconds)
        with Recorder(root / f"sustained{int(rate)}.zarr") as rec:
            call = partial(rec.record, loss=loss, latents=latents if with_latents else None)
            t0 = time.perf_counter()
            _timed(call, steps, 1 / rate)
            rec.flush()
            elapsed = time.perf_counter() - t0
            drops = sum(rec.stats.drops.values())
        lines.append(f"| {name} | {steps:,} | {steps / elapsed:,.0f} | {drops} |")
    steps = int(20000 * seconds / 5)
    with Recorder(root / "max.zarr", queue_size=steps + 1) as rec:
        t0 = time.perf_counter()
        for i in range(steps):
            rec.record(i, loss)
        rec.flush()
        elapsed = time.perf_counter() - t0
        drops = sum(rec.stats.drops.values())
    lines.append(
        f"| scalars, unpaced, until committed | {steps:,} | {steps / elapsed:,.0f} | {drops} |"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter runs")
    args = parser.parse_args()
    n_scalar, n_image, seconds = (5000, 60, 2.0) if args.quick else (20000, 200, 5.0)
    gc.collect()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), CPU tensors\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for lines in (
            _scalar_case(root, n_scalar),
            _image_case(root, n_image, 20.0),
            _sustained(root, seconds),
        ):
            print("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
