"""Throughput of ``texture_metrics`` beside the bare FFT and the per-image numpy version.

For a batch of 512×512 RGB images and a batch of 4×64×64 latents, in one run (median and p99
wall time per batch, images/s):

- ``fft2``: a bare ``torch.fft.fft2`` of the same batch (all channels) — the floor;
- the zero-padded FFT, power spectrum and inverse transforms that the linear ACF needs, the
  part of ``texture_metrics`` that the definitions fix (``_spectrum_and_acf``);
- ``texture_metrics``: every metric of :data:`texwatch.spectral.METRIC_KEYS` together;
- ``texture_metrics(bands=True)``: plus the band scan of row and column strips;
- ``texture_metrics(ref=target)`` and ``(ref=target, bands=True)``: as texwatchd measures a
  prediction against its target (one more FFT per target, the tile scale along its direction,
  the alias score and the target's own strips);
- ``numpy per image``: ``tests/_spectral_reference.py``, the straightforward per-image numpy
  implementation of the same definitions (fewer repeats: it is slow), with and without the
  band scan.

Targets on the CPU: all metrics ≤ 4× the bare FFT, with the band scan ≤ 12×, and ≥ 25× the
per-image version's throughput. With ``--device cuda`` the torch rows run on the GPU (the numpy
rows stay on the CPU).

Wall time and process CPU time are both reported: on a shared machine other processes inflate
wall time (and torch's thread pool suffers most), while CPU time still measures the work done.

The process retains freed memory as texwatchd does (``texwatch._memory``): with glibc's default,
whether a batch's large temporaries page-fault afresh on every call changes from run to run, and
on a small VM that alone moves the bare FFT of the latent batch between 1.5 and 7 ms.
``--default-malloc`` measures without it.

Run: ``python benchmarks/spectral_throughput.py`` (``--quick`` for a shorter run, ``--threads 1``
on a busy machine: a torch thread pool that shares its cores with other processes spin-waits,
which inflates even its CPU time; ``--threads`` sets torch's pool only, and the numpy rows'
matrix products use numpy's own BLAS threads either way).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from texwatch._memory import retain_freed_memory
from texwatch.spectral import _channels, _spectrum_and_acf, texture_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import _spectral_reference as reference  # noqa: E402  (the tests' numpy implementation)


def _textures(b: int, c: int, n: int, seed: int) -> torch.Tensor:
    """Gratings of random period/angle under noise: the work a real texture batch causes."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )
    periods = 4 + 28 * torch.rand(b, generator=gen)
    angles = 3.14159 * torch.rand(b, generator=gen)
    t = xx[None] * torch.cos(angles)[:, None, None] + yy[None] * torch.sin(angles)[:, None, None]
    wave = torch.cos(2 * torch.pi * t / periods[:, None, None])[:, None]
    return 0.5 + 0.25 * wave.expand(b, c, n, n) + 0.1 * torch.randn(b, c, n, n, generator=gen)


Timing = tuple[np.ndarray, np.ndarray]  # wall ms, CPU ms per batch


def _timed(call: Callable[[], object], repeats: int, sync: Callable[[], None]) -> Timing:
    """Wall and process CPU time per call in milliseconds, after one warm-up call."""
    call()
    sync()
    wall, cpu = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        call()
        sync()
        wall[i] = (time.perf_counter_ns() - t0) / 1e6
        cpu[i] = (time.process_time_ns() - c0) / 1e6
    return wall, cpu


def _row(name: str, timing: Timing, batch: int, floor: Timing) -> str:
    wall, cpu = timing
    median, p99 = float(np.median(wall)), float(np.percentile(wall, 99))
    rate = batch / (median / 1e3)
    ratio = median / float(np.median(floor[0]))
    cpu_median = float(np.median(cpu))
    cpu_ratio = cpu_median / float(np.median(floor[1]))
    return (
        f"| {name} | {median:,.1f} | {p99:,.1f} | {rate:,.1f} | {ratio:.2f} "
        f"| {cpu_median:,.1f} | {cpu_ratio:.2f} |"
    )


def _workload(
    title: str, x: torch.Tensor, device: torch.device, repeats: int, ref_images: int
) -> list[str]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    xd = x.to(device)
    b = x.shape[0]
    floor = _timed(lambda: torch.fft.fft2(xd), repeats, sync)
    signal = _channels(xd, torch.float32)  # luma for RGB, the channels of a latent
    acf_share = _timed(lambda: _spectrum_and_acf(signal), repeats, sync)
    plain = _timed(lambda: texture_metrics(xd), repeats, sync)
    target = xd.roll(1, dims=0)  # another texture of the batch stands for each one's target
    with_ref = _timed(lambda: texture_metrics(xd, ref=target), repeats, sync)
    local = _timed(lambda: texture_metrics(xd, bands=True), repeats, sync)
    banded = _timed(lambda: texture_metrics(xd, ref=target, bands=True), repeats, sync)
    images = x.numpy().astype(np.float64)

    def per_image(bands: bool, count: int) -> Timing:
        wall, cpu = np.empty(count), np.empty(count)
        for i in range(count):
            c0, t0 = time.process_time_ns(), time.perf_counter_ns()
            reference.metrics(images[i % b], bands=bands)
            wall[i] = (time.perf_counter_ns() - t0) / 1e6 * b  # per batch of b images
            cpu[i] = (time.process_time_ns() - c0) / 1e6 * b
        return wall, cpu

    numpy_plain = per_image(False, ref_images)
    numpy_local = per_image(True, max(1, ref_images // 3))

    def speedup(slow: Timing, fast: Timing, which: int) -> float:
        return float(np.median(slow[which]) / np.median(fast[which]))

    where = "GPU" if device.type == "cuda" else "CPU"
    return [
        f"**{title}** — batch of {b}, torch on the {where}",
        "",
        "| method | wall median ms/batch | wall p99 ms | images/s | × fft2 (wall) "
        "| CPU median ms/batch | × fft2 (CPU) |",
        "|---|---|---|---|---|---|---|",
        _row("`torch.fft.fft2` (floor)", floor, b, floor),
        _row("padded FFT + power + ACF (inside `texture_metrics`)", acf_share, b, floor),
        _row("`texture_metrics`", plain, b, floor),
        _row("`texture_metrics(bands=True)`", local, b, floor),
        _row("`texture_metrics(ref=target)`", with_ref, b, floor),
        _row("`texture_metrics(ref=target, bands=True)`", banded, b, floor),
        _row(f"numpy per image ({ref_images} images)", numpy_plain, b, floor),
        _row(f"numpy per image + bands ({max(1, ref_images // 3)})", numpy_local, b, floor),
        "",
        "speed-up over the per-image version (wall / CPU): "
        f"{speedup(numpy_plain, plain, 0):,.0f}× / {speedup(numpy_plain, plain, 1):,.0f}× "
        f"(all metrics), {speedup(numpy_local, local, 0):,.0f}× / "
        f"{speedup(numpy_local, local, 1):,.0f}× (with the band scan)",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cpu", help="torch device for the torch rows")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (texwatchd retains freed memory: texwatch/_memory)",
    )
    args = parser.parse_args()
    retained = False if args.default_malloc else retain_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats = 5 if args.quick else 20
    ref_images = 3 if args.quick else 6
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), load average at start {load:.2f}, "
        f"freed memory {'retained as texwatchd does' if retained else 'returned (glibc default)'}"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print()
    lines = _workload("512×512 RGB images", _textures(8, 3, 512, 0), device, repeats, ref_images)
    lines += _workload("4×64×64 latents", _textures(64, 4, 64, 1), device, repeats, ref_images * 4)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
