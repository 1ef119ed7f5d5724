"""texwatchd's peak memory on an image backlog: unbounded batches vs the byte budget.

Writes a store holding a backlog of ``pred`` rows (C x S x S float32, one item per step, with
their loss rows) and runs a real ``texwatchd --once`` subprocess on it per case, measuring the
child's peak RSS, wall and CPU time with ``os.wait4``. The baseline, measured in the same run, is
the behaviour before the budget: one batch of ``--batch-rows`` rows (256) derived at once
(``--memory-budget 1TiB``). Derived rows are deleted between runs so every run derives it all.

``--model`` measures the working set the deriver plans with (per row and per sub-batch, in
float32 copies); ``--find-as`` the smallest ``RLIMIT_AS`` under which ``import torch`` works.

Usage: python benchmarks/daemon_memory.py [--rows 256] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table  # noqa: E402  (beside this script)

from texwatch.store import SCALARS, RunWriter, open_run  # noqa: E402

_MiB = 1 << 20


def write_backlog(path: Path, rows: int, size: int, channels: int = 3) -> None:
    """``rows`` steps, each one loss row and one ``pred`` item (a noisy grating, float32)."""
    rng = np.random.default_rng(0)
    writer = RunWriter.open(path, run="backlog")
    x = np.arange(size, dtype=np.float32)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / 16.0)[None, :].repeat(size, 0)
    for first in range(0, rows, 16):
        steps = np.arange(first, min(first + 16, rows))
        n = len(steps)
        writer.append(SCALARS, {"step": steps, "loss": 1.0 + 0.05 * rng.standard_normal(n)})
        noise = 0.05 * rng.standard_normal((n, channels, size, size)).astype(np.float32)
        writer.append("pred", {"step": steps, "data": wave[None, None] + noise})
        writer.commit()


def run_daemon(store: Path, budget: str, workdir: Path) -> tuple[float, float, float, int]:
    """(peak RSS MiB, wall s, CPU s, pred rows derived) of one ``texwatchd --once``."""
    shutil.rmtree(store / "derived", ignore_errors=True)
    argv = [sys.executable, "-m", "texwatch.daemon", "--store", str(store), "--once"]
    argv += ["--device", "cpu", "--snapshot-dir", str(workdir / "snaps")]
    argv += ["--memory-budget", budget, "--log-level", "WARNING"]
    started = time.perf_counter()
    child = subprocess.Popen(argv)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"texwatchd exited {child.returncode} with --memory-budget {budget}")
    derived = open_run(store).derived_cursor().get("pred", 0)
    return usage.ru_maxrss / 1024, wall, usage.ru_utime + usage.ru_stime, derived


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def compare(rows: int, size: int, repeats: int, budgets: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "backlog.zarr"
        write_backlog(store, rows, size)
        results: dict[str, list[tuple[float, float, float, int]]] = {}
        for _ in range(repeats):  # cases interleaved, so a load change hits them alike
            for budget in budgets:
                results.setdefault(budget, []).append(run_daemon(store, budget, Path(tmp)))
    base = float(np.median([r[0] for r in results[budgets[0]]]))
    lines = []
    for budget, runs in results.items():
        rss, wall, cpu = ([r[i] for r in runs] for i in range(3))
        name = "unbounded (1TiB): one 256-row batch" if budget == budgets[0] else budget
        lines.append(
            [
                name,
                f"{np.median(rss):,.0f}",
                f"{_pct(rss, 99):,.0f}",
                f"{np.median(rss) / base:.2f}",
                f"{np.median(wall):.1f}",
                f"{_pct(wall, 99):.1f}",
                f"{np.median(cpu):.1f}",
                f"{min(r[3] for r in runs)}/{rows}",
            ]
        )
    print(f"texwatchd --once on {rows} pred rows 3x{size}x{size} float32, {repeats} runs each")
    header = ["--memory-budget", "peak RSS MiB median", "p99", "x unbounded", "wall s median"]
    table([*header, "wall p99", "CPU s median", "rows derived"], lines)


_MODEL_CHILD = """
import resource, sys
from pathlib import Path
from texwatch._memory import retain_freed_memory
from texwatch.derive import Deriver, DeriveSettings
from texwatch.store import open_run
retain_freed_memory()
run = open_run(Path(sys.argv[1]))
deriver = Deriver(DeriveSettings(memory_budget=1 << 40))
committed = run.committed()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
deriver.advance(run, {"target": committed["target"], "pred": committed["pred"]}, 1 << 20)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def model(size: int) -> None:
    """Peak bytes of one advance over n paired pred rows, fitted as fixed + n x per-row."""
    counts, peaks = [1, 2, 4, 8], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            store = Path(tmp) / f"m{n}.zarr"
            rng = np.random.default_rng(n)
            writer = RunWriter.open(store)
            for stream in ("target", "pred"):
                data = rng.random((n, 3, size, size), dtype=np.float32)
                writer.append(stream, {"step": np.arange(n), "data": data})
            writer.commit()
            out = subprocess.run(
                [sys.executable, "-c", _MODEL_CHILD, str(store)],
                check=True,
                capture_output=True,
                text=True,
            )
            peaks.append(int(out.stdout.split()[-1]))
    slope, intercept = np.polyfit(counts, peaks, 1)
    row32, plane32 = 3 * size * size * 4, size * size * 4
    print(f"working set of one advance, pred 3x{size}x{size} float32 with targets")
    lines = [[str(n), f"{p / _MiB:,.1f}"] for n, p in zip(counts, peaks, strict=True)]
    table(["rows", "peak growth MiB"], lines)
    print(f"per row: {slope / _MiB:.1f} MiB = {slope / row32:.1f} float32 copies of a row")
    print(f"per sub-batch: {intercept / _MiB:.1f} MiB = {intercept / plane32:.1f} float32 planes\n")


def find_as() -> None:
    """The smallest RLIMIT_AS (64 MiB steps) under which ``import torch`` succeeds."""

    def works(limit: int) -> bool:
        code = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
        code += "import torch; torch.zeros(1)"
        return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0

    low, high = 64, 8192  # MiB: fails, works
    while high - low > 64:
        mid = (low + high) // 2 // 64 * 64
        low, high = (low, mid) if works(mid * _MiB) else (mid, high)
    print(f"import torch needs RLIMIT_AS >= {high} MiB of virtual memory here\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budgets", nargs="+", default=["1TiB", "512MiB", "256MiB"])
    p.add_argument("--model", action="store_true", help="measure the working-set model")
    p.add_argument("--find-as", action="store_true", help="measure torch's RLIMIT_AS floor")
    args = p.parse_args()
    print(f"{os.cpu_count()} CPUs, {sys.platform}, torch threads default\n")
    if args.find_as:
        find_as()
    if args.model:
        model(args.size)
    compare(args.rows, args.size, args.repeats, args.budgets)


if __name__ == "__main__":
    main()
