"""Test images with known texture periods and run stores written through the client.

Shared by the report, diagnose, dataset and plots tests: everything is seeded and small.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 128  # px; every test image is SIZE × SIZE unless a test says otherwise
PERIOD = 16  # the clean texture's period (px): f* = SIZE / PERIOD = 8


def grating(
    period: float = PERIOD,
    *,
    size: int = SIZE,
    angle: float = 30.0,
    noise: float = 0.02,
    checker: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """A (1, 3, size, size) texture in [0, 1]: two crossed cosine gratings of ``period`` px.

    The gratings run at ``angle`` and ``angle + 90`` degrees (off the axes, so no axis cross);
    ``checker`` adds a ±checker (-1)^(x+y) pattern, the transposed-convolution artifact.
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64),
        torch.arange(size, dtype=torch.float64),
        indexing="ij",
    )
    out = torch.zeros(size, size, dtype=torch.float64)
    for a in (angle, angle + 90.0):
        t = math.radians(a)
        out += torch.cos(2 * math.pi * (xx * math.cos(t) + yy * math.sin(t)) / period)
    img = 0.5 + 0.2 * out + noise * torch.randn(size, size, generator=g, dtype=torch.float64)
    if checker:
        img = img + checker * (1 - 2 * ((xx + yy) % 2))
    return img.clamp(0, 1).float()[None, None].expand(1, 3, size, size).contiguous()


def smooth_noise(*, size: int = SIZE, sigma: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A (1, 3, size, size) non-periodic texture: white noise blurred by an isotropic Gaussian."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(size, size, generator=g, dtype=torch.float64)
    k = torch.fft.fftfreq(size, dtype=torch.float64)
    gain = torch.exp(-2 * (math.pi * sigma) ** 2 * (k[:, None] ** 2 + k[None, :] ** 2))
    s = torch.fft.ifft2(torch.fft.fft2(n) * gain).real
    s = 0.5 + 0.2 * s / s.std()
    return s.clamp(0, 1).float()[None, None].expand(1, 3, size, size).contiguous()


def save_png(x: torch.Tensor, path: Path) -> Path:
    """Write a (1, C, H, W) tensor in [0, 1] as an 8-bit PNG (grey for C = 1)."""
    arr = (x[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).save(path)
    return path


def write_run(
    path: Path,
    *,
    name: str,
    faulty: bool,
    steps: int = 90,
    checkpoints: tuple[int, ...] = (40, 80),
    spike_step: int = 70,
    size: int = 64,
    period: int = 8,
) -> Path:
    """Write a run store through the client: a clean run, or one with every planted fault.

    Both runs: loss ~ 1 with light noise, terms ``v`` and ``edge`` with weights, ``lr``, sample
    ids, ``pred`` (2 items) and ``target`` at the checkpoint steps, ``latents`` every 10 steps,
    ``val/0`` every 20 steps. The faulty run adds: a loss spike at ``spike_step`` whose batch
    holds sample 777; a dead ``edge`` term (weight 0.06, value always 0); ``pred`` with the tile
    period doubled at the checkpoints after ``steps // 2``; latents 3× out of range.
    Derive it with a spike window and dead window shorter than ``spike_step`` (e.g. 32 and 30).
    """
    import texwatch.client as tw

    rng = np.random.default_rng(1)
    rec = tw.Recorder(
        path,
        run=name,
        config={"lr": 1e-4, "faulty": faulty},
        every={"pred": 1, "target": 1, "latents": 1},
        max_items={"pred": 2, "target": 2, "latents": 2},
    )
    try:
        for step in range(steps):
            loss = 1.0 + 0.02 * rng.standard_normal()
            ids = np.arange(4 * step, 4 * step + 4)
            if faulty and step == spike_step:
                loss, ids = 8.0, np.array([777, 5, 6, 7])
            edge = 0.0 if faulty else 0.1 + 0.01 * rng.standard_normal()
            kwargs: dict[str, object] = {}
            if step in checkpoints:
                p = 2 * period if faulty and step > steps // 2 else period
                kwargs["pred"] = torch.cat(
                    [grating(p, size=size, seed=step), grating(p, size=size, seed=step + 1)]
                )
                # both items share one target: a pred item's reference is then unambiguous
                kwargs["target"] = grating(period, size=size, seed=500 + step).expand(2, -1, -1, -1)
            if step % 10 == 0:
                gen = torch.Generator().manual_seed(step)
                kwargs["latents"] = (3.0 if faulty else 0.8) * torch.randn(
                    2, 4, 16, 16, generator=gen
                )
            if step % 20 == 0:
                kwargs["images"] = {"val/0": grating(period, size=size, seed=9)}
            rec.record(
                step,
                loss,
                terms={"v": 0.8 * loss, "edge": edge},
                weights={"v": 1.0, "edge": 0.06},
                scalars={"lr": 1e-4},
                sample_ids=ids,
                checkpoint=step in checkpoints,
                **kwargs,
            )
    finally:
        rec.close()
    return path
