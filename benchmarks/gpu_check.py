"""The GPU path checked against the CPU: same metrics, same losses and gradients, same derivation.

Everything texwatch computes on a GPU has a CPU twin that the test suite covers. This script runs
both on one input and prints, per output, the largest difference between them, relative to the
output's own scale, beside a tolerance; it exits 1 when any output is off:

- ``texture_metrics`` (with ``bands=True`` and a reference) on a batch of gratings with noise;
- each texture loss: its value and the gradient it sends to the prediction;
- the client: a run recorded from GPU tensors (loss, fp32 latents, bf16 pred), each overwritten
  on the GPU right after ``record()``, must read back bit for bit;
- ``derive_all`` of that run with ``--device`` set to the GPU and to the CPU: every derived
  column, and the wall and CPU time of the two;
- what ``record()`` of a GPU payload costs the training thread (median, p99), beside copying it
  out by hand into pinned buffers (the floor) and a blocking ``.cpu()``.

The periodicity flags (``f*`` finite or NaN) must agree exactly: a flag that flips between
devices is a different alarm, whatever its size.

Run: ``python benchmarks/gpu_check.py`` (``--device cuda`` by default; ``--device cpu`` compares
the CPU with itself, which checks the script where no GPU is).
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table  # noqa: E402

from texwatch.client import Recorder  # noqa: E402
from texwatch.derive import DeriveSettings, derive_all  # noqa: E402
from texwatch.losses import (  # noqa: E402
    ACFPeriodLoss,
    LogPolarAlignLoss,
    ScaleConsistencyLoss,
    SpectralPeriodLoss,
)
from texwatch.spectral import texture_metrics  # noqa: E402
from texwatch.store import open_run  # noqa: E402

_TOL = 2e-3  # float32 FFTs of 128² images on two devices: ~1e-5 seen; 2e-3 leaves room for sums
_Row = tuple[str, str, float, float, str]


def _gratings(b: int, c: int, n: int, seed: int) -> torch.Tensor:
    """Crossed cosine gratings of random period and angle under noise, in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32), indexing="ij"
    )
    out = torch.empty(b, c, n, n)
    for i in range(b):
        period = 6.0 + 20.0 * float(torch.rand(1, generator=gen))
        angle = math.pi * float(torch.rand(1, generator=gen))
        wave = torch.zeros(n, n)
        for a in (angle, angle + math.pi / 2):
            wave += torch.cos(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
        noise = 0.1 * torch.randn(c, n, n, generator=gen)
        out[i] = (0.5 + 0.2 * wave + noise).clamp(0, 1)
    return out


def _gap(a: np.ndarray, b: np.ndarray) -> tuple[float, str]:
    """Largest difference of ``a`` and ``b`` relative to their scale, and how NaNs agree."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    nan_a, nan_b = ~np.isfinite(a), ~np.isfinite(b)
    if not np.array_equal(nan_a, nan_b):
        return math.inf, f"{int((nan_a != nan_b).sum())} finite/NaN flips"
    ok = ~nan_a
    if not ok.any():
        return 0.0, "all NaN alike"
    scale = max(float(np.abs(b[ok]).max()), 1e-12)
    return float(np.abs(a[ok] - b[ok]).max()) / scale, ""


def _row(what: str, name: str, a: np.ndarray, b: np.ndarray) -> _Row:
    gap, note = _gap(a, b)
    return what, name, gap, _TOL, note or ("ok" if gap <= _TOL else "OFF")


def _metric_rows(device: torch.device) -> list[_Row]:
    x = _gratings(8, 3, 128, seed=1)
    ref = _gratings(1, 3, 128, seed=2)
    on_cpu = texture_metrics(x, ref=ref, bands=True)
    on_dev = texture_metrics(x.to(device), ref=ref.to(device), bands=True)
    return [_row("texture_metrics", k, on_dev[k].cpu().numpy(), on_cpu[k].numpy()) for k in on_cpu]


def _loss_rows(device: torch.device) -> list[_Row]:
    pred = _gratings(4, 3, 96, seed=3)
    target = _gratings(4, 3, 96, seed=4)
    mask = torch.ones(4, 1, 96, 96)
    losses: Mapping[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "SpectralPeriodLoss": SpectralPeriodLoss(),
        "ScaleConsistencyLoss": ScaleConsistencyLoss(),
        "LogPolarAlignLoss": LogPolarAlignLoss(),
        "ACFPeriodLoss": ACFPeriodLoss(),
    }
    rows = []
    for name, loss in losses.items():
        results = []
        for dev in (torch.device("cpu"), device):
            p = pred.to(dev, copy=True).requires_grad_(True)
            value = loss(p, target.to(dev), mask.to(dev))
            value.backward()
            assert p.grad is not None
            results.append((value.detach().cpu().numpy(), p.grad.cpu().numpy()))
        (v_cpu, g_cpu), (v_dev, g_dev) = results
        rows.append(_row("loss value", name, v_dev, v_cpu))
        rows.append(_row("loss gradient", name, g_dev, g_cpu))
    return rows


def _write_store(path: Path, steps: int, device: torch.device) -> list[_Row]:
    """A small run recorded from ``device`` tensors through the real client, read back.

    Each tensor is overwritten on the device right after ``record()`` returns: the stored rows
    must hold the values at the call (the copy is taken before the call returns, and the writer
    waits for it), bit for bit.
    """
    gen = torch.Generator().manual_seed(5)
    kept: dict[str, list[np.ndarray]] = {"loss": [], "latents": [], "pred": []}
    with Recorder(path, run="gpu-check", every={"latents": 1, "pred": 1}) as rec:
        for step in range(steps):
            latents = torch.randn(2, 4, 32, 32, generator=gen)
            pred = _gratings(2, 3, 64, seed=100 + step).to(torch.bfloat16)
            loss = 0.1 + 0.01 * torch.rand((), generator=gen, dtype=torch.float64)
            kept["loss"].append(loss.numpy().reshape(1))
            kept["latents"].append(latents.numpy())
            kept["pred"].append(pred.float().numpy())
            on = [t.to(device, copy=True) for t in (loss, latents, pred)]
            rec.record(step, on[0], latents=on[1], pred=on[2])
            for t in on:
                t.fill_(float("nan"))
    run = open_run(path)
    stored = {
        "loss": run.scalars()["loss"],
        "latents": run.stream("latents")[1],
        "pred": run.stream("pred")[1],
    }
    rows = []
    for name, values in kept.items():
        want = np.concatenate(values)
        got = np.asarray(stored[name], dtype=np.float64)
        same = got.shape == want.shape and bool(np.array_equal(got, want))
        rows.append(
            ("client round trip", name, 0.0 if same else math.inf, 0.0, "exact" if same else "OFF")
        )
    return rows


def _timed(fn: Callable[[], dict[str, dict[str, np.ndarray]]]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _derive_rows(device: torch.device, steps: int) -> tuple[list[_Row], list[list[str]]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu-check.zarr"
        rows = _write_store(path, steps, device)
        on_cpu, cpu_wall, cpu_cpu = _timed(lambda: derive_all(path, DeriveSettings(device="cpu")))
        on_dev, dev_wall, dev_cpu = _timed(
            lambda: derive_all(path, DeriveSettings(device=str(device)))
        )
    for group, cols in on_cpu.items():
        for name, values in cols.items():
            if values.dtype.kind not in "fiub":
                continue
            rows.append(_row(f"derive_all {group}", name, on_dev[group][name], values))
    timing = [
        ["cpu", str(steps), f"{cpu_wall:.2f}", f"{cpu_cpu:.2f}", "1.00"],
        [
            str(device),
            str(steps),
            f"{dev_wall:.2f}",
            f"{dev_cpu:.2f}",
            f"{cpu_wall / dev_wall:.2f}",
        ],
    ]
    return rows, timing


def _call_times(call: Callable[[int], object], n: int, period: float) -> np.ndarray:
    """Wall µs of ``call(i)`` on this thread, ``period`` s apart (the writer keeps up)."""
    out = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        call(i)
        out[i] = (time.perf_counter() - start) * 1e6
        time.sleep(period)
    return out


def _record_cost(device: torch.device, n: int) -> list[list[str]]:
    """``record()`` of a device payload on the training thread, beside copying it out by hand."""
    latents = torch.randn(4, 4, 64, 64, device=device)
    pred = torch.rand(4, 3, 256, 256, device=device)
    loss = torch.rand((), device=device)
    pinned = [torch.empty(t.shape, pin_memory=device.type == "cuda") for t in (latents, pred)]

    def by_hand(_: int) -> None:
        for buf, t in zip(pinned, (latents, pred), strict=True):
            buf.copy_(t, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.current_stream(device).record_event()

    def blocking(_: int) -> None:
        latents.cpu()
        pred.cpu()

    lines = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        Recorder(Path(tmp) / "cost.zarr", every={"latents": 1, "pred": 1}) as rec,
    ):
        calls = {
            "texwatch `record`": lambda i: rec.record(i, loss, latents=latents, pred=pred),
            "pinned non_blocking copy + event (floor)": by_hand,
            "`.cpu()` of each tensor (blocking)": blocking,
        }
        times = {k: _call_times(c, n, 0.02) for k, c in calls.items()}
        dropped = sum(rec.stats.drops.values())
    floor = float(np.median(times["pinned non_blocking copy + event (floor)"]))
    for name, t in times.items():
        median = float(np.median(t))
        lines.append(
            [name, f"{median:.1f}", f"{np.percentile(t, 99):.1f}", f"{median / floor:.2f}"]
        )
    lines.append([f"rows dropped by texwatch: {dropped}", "", "", ""])
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
    parser.add_argument("--steps", type=int, default=64, help="steps of the derived store")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("argument --device: 'cuda' asked for but torch sees no CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"# {name}; torch {torch.__version__}; python {platform.python_version()}\n")
    torch.manual_seed(0)
    rows = _metric_rows(device) + _loss_rows(device)
    derive, timing = _derive_rows(device, args.steps)
    rows += derive
    cost = _record_cost(device, 200)
    table(
        ["what", "output", "max rel. difference", "tolerance", "verdict"],
        [[w, n, f"{g:.2e}", f"{t:.0e}", v] for w, n, g, t, v in rows],
    )
    table(["derive_all on", "steps", "wall s", "CPU s", "speed-up vs cpu"], timing)
    table([f"{device} payload 4×4×64² + 4×3×256² fp32", "median µs", "p99 µs", "÷ floor"], cost)
    off = [f"{w}/{n}" for w, n, g, t, _ in rows if not g <= t]
    if off:
        print(f"\nOFF: {', '.join(off)}")
        return 1
    print(f"\nall {len(rows)} outputs agree within {_TOL:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
