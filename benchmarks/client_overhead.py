"""Cost of ``texwatch.client.record()`` on the calling thread, beside TensorBoard, trackio, copies.

Per call on the training thread, median and p99 in microseconds, every baseline in the same run:

(a) ``record(step, loss)`` with a 0-d loss tensor (and with a Python float), against TensorBoard's
    ``SummaryWriter.add_scalar`` on a fresh writer (recreated every 1,000 events) and on one that
    already holds 10,000 events, trackio's ``log`` (which takes no tensor: ``loss.item()``), a
    plain ``detach().clone()`` of the loss and a ``SimpleQueue.put``. Measured two ways:
    *between training steps* (a 256x256 matmul and a pass over 32 MiB before every timed call, so
    caches and TLBs are cold as in a training loop; the cases take turns call by call, so the
    machine's load falls on all alike) and *back-to-back* (blocks of 100 calls, in turns).
(b) ``record(step, loss, latents=8x4x64x64, pred=8x3x512x512)`` between training steps at 20
    calls/s with ``every={"pred": 10}`` (latents every call, 4 items of each kept): all calls and
    the image calls alone, against a raw copy of what ``record`` keeps, the loss and the kept
    items (``numpy.copyto`` into preallocated buffers: the memory-bandwidth floor), and against
    ``torch.clone`` of the same, taken in turns with ``record``; the p99 also with the time the
    thread waited runnable for a CPU taken out (read from ``/proc/thread-self/schedstat``: on a
    loaded machine that wait, not the call, sets the p99); drops; the process CPU time per step
    against the same loop without ``record`` (the writer thread's work included); TensorBoard's
    ``add_scalar`` + ``add_histogram`` + ``add_images`` for scale (a few calls, unpaced).
(c) Sustained: record at a fixed rate (2,000 scalar steps/s; 200 steps/s with latents at their
    default sampling) and count drops; and the highest scalar rate, record-to-committed.
(d) Where the time of (a) goes: each part of the cached path timed alone, between training steps.

Run: ``python benchmarks/client_overhead.py`` (``--quick`` for a shorter run). Needs torch,
tensorboard and trackio (the ``bench`` extra); without trackio its row is left out.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import platform
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from texwatch.client import Recorder

Call = Callable[[int], object]


class _Steps:
    """What a training step leaves behind: a matmul, then a write pass over 32 MiB."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self._a = torch.randn(256, 256, generator=gen)
        self._pass = torch.zeros(8 << 20)  # 32 MiB of float32

    def __call__(self) -> None:
        self._a @ self._a
        self._pass.add_(1.0)


def _time(call: Call, step: int) -> float:
    t0 = time.perf_counter_ns()
    call(step)
    return (time.perf_counter_ns() - t0) / 1e3


def _between_steps(cases: Sequence[Call], rounds: int, steps: _Steps) -> list[np.ndarray]:
    """Per-call µs of each case, each call after a training step; the cases take turns."""
    out = [np.empty(rounds) for _ in cases]
    order = list(range(len(cases)))
    for r in range(rounds):
        for k in order[r % len(order) :] + order[: r % len(order)]:
            steps()
            out[k][r] = _time(cases[k], r)
    return out


def _back_to_back(cases: Sequence[Call], rounds: int, block: int = 100) -> list[np.ndarray]:
    """Per-call µs of each case, in blocks of ``block`` consecutive calls taking turns."""
    out: list[list[float]] = [[] for _ in cases]
    for r in range(rounds):
        for k, call in enumerate(cases):
            first = r * block
            out[k] += [_time(call, first + i) for i in range(block)]
    return [np.asarray(times) for times in out]


_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _runqueue_ns() -> int:
    """Nanoseconds this thread has waited runnable but not running (Linux); 0 elsewhere."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _stats(times: np.ndarray) -> tuple[float, float]:
    return float(np.median(times)), float(np.percentile(times, 99))


def _row(name: str, times: np.ndarray, reference: np.ndarray) -> str:
    median, p99 = _stats(times)
    return f"| {name} | {median:,.1f} | {p99:,.1f} | {median / float(np.median(reference)):.2f} |"


def _trackio(root: Path) -> Any:
    """A local trackio run in ``root``, or None without trackio."""
    os.environ["TRACKIO_DIR"] = str(root / "trackio")  # read when trackio is imported
    try:
        import trackio
    except ImportError:
        return None
    return trackio.init(project="bench", auto_log_cpu=False, auto_log_gpu=False, embed=False)


class _FreshBoard:
    """``add_scalar`` on a writer that never holds more than 1,000 events (a new one after)."""

    def __init__(self, root: Path) -> None:
        self._root, self._made, self._events = root, 0, 0
        self._writer = self._new()

    def _new(self) -> SummaryWriter:
        self._made += 1
        return SummaryWriter(str(self._root / f"tb_fresh{self._made}"))

    def add_scalar(self, loss: torch.Tensor, step: int) -> None:
        self._writer.add_scalar("loss", loss, step)
        self._events += 1

    def renew(self) -> None:
        """Between timed calls: a new writer once this one holds 1,000 events."""
        if self._events >= 1000:
            self._writer.close()
            self._writer, self._events = self._new(), 0

    def close(self) -> None:
        self._writer.close()


def _scalar_case(root: Path, rounds: int, blocks: int) -> list[str]:
    loss = torch.tensor(0.5, requires_grad=True) * 1.0  # what a training step hands over
    rec = Recorder(root / "scalar.zarr")
    fresh = _FreshBoard(root)
    full = SummaryWriter(str(root / "tb_10k"))
    for i in range(10_000):
        full.add_scalar("loss", loss, i)
    full.flush()
    run = _trackio(root)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    first = [10_000]  # steps go on from the warm-up and between the two measurements

    def ours(i: int) -> None:
        rec.record(first[0] + i, loss)

    def ours_float(i: int) -> None:
        rec.record(first[0] + i, 0.5)

    def board_fresh(i: int) -> None:
        fresh.add_scalar(loss, first[0] + i)

    def board_full(i: int) -> None:
        full.add_scalar("loss", loss, 10_000 + first[0] + i)

    def track(i: int) -> None:
        run.log({"loss": loss.item()}, step=first[0] + i)

    names = [
        "texwatch `record(step, loss)`, 0-d tensor",
        "texwatch `record(step, loss)`, float",
        "raw copy (`loss.detach().clone()`)",
        "`SimpleQueue.put`",
        "TensorBoard `add_scalar`, fresh writer",
        "TensorBoard `add_scalar`, after 10k events",
    ]
    cases: list[Call] = [
        ours,
        ours_float,
        lambda i: loss.detach().clone(),
        inbox.put,
        board_fresh,
        board_full,
    ]
    if run is not None:
        names.append("trackio `log({'loss': loss.item()})`")
        cases.append(track)
    steps = _Steps()
    try:
        _back_to_back(cases, 5)  # warm-up: first calls, first signature
        first[0] += 5 * 100
        fresh.renew()
        between: list[list[np.ndarray]] = [[] for _ in cases]
        chunk = 50
        for done in range(0, rounds, chunk):  # renewing TensorBoard's fresh writer in between
            for k, times in enumerate(_between_steps(cases, min(chunk, rounds - done), steps)):
                between[k].append(times)
            first[0] += chunk
            fresh.renew()
            while not inbox.empty():
                inbox.get()
        in_steps = [np.concatenate(parts) for parts in between]
        back = []
        for _ in range(blocks):  # renew the fresh writer between blocks of rounds
            back.append(_back_to_back(cases, 1))
            first[0] += 100
            fresh.renew()
        back_to_back = [np.concatenate([b[k] for b in back]) for k in range(len(cases))]
        rec.flush()
        drops = dict(rec.stats.drops)
    finally:
        rec.close()
        fresh.close()
        full.close()
        if run is not None:
            run.finish()
    lines = []
    for title, results in (
        ("between training steps", in_steps),
        ("back-to-back", back_to_back),
    ):
        ours_t = results[0]
        lines += [
            f"| (a) {title} | median µs | p99 µs | ÷ texwatch (tensor) |",
            "|---|---:|---:|---:|",
            *(_row(name, times, ours_t) for name, times in zip(names, results, strict=True)),
            "",
        ]
        med = {name: float(np.median(t)) for name, t in zip(names, results, strict=True)}
        mine = med[names[0]]
        lines.append(
            f"{title}: `add_scalar` fresh / texwatch {med[names[4]] / mine:.1f}x, after 10k "
            f"events {med[names[5]] / mine:.1f}x; texwatch / `detach().clone()` "
            f"{mine / med[names[2]]:.2f}x"
            + (f"; trackio / texwatch {med[names[6]] / mine:.1f}x" if run is not None else "")
            + "\n"
        )
    if run is None:
        lines.append("trackio: not installed, not measured\n")
    lines.append(f"drops: {drops or 'none'}")
    return lines


def _image_case(root: Path, calls: int, rate: float, board_calls: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    latents = torch.randn(8, 4, 64, 64, generator=gen)
    pred = torch.rand(8, 3, 512, 512, generator=gen)
    every, kept = 10, 4
    loss_buf = np.empty((), np.float32)
    lat_buf = np.empty((kept, 4, 64, 64), np.float32)
    pred_buf = np.empty((kept, 3, 512, 512), np.float32)
    steps = _Steps()
    period = 1 / rate

    def ours(i: int) -> None:
        rec.record(i, loss, latents=latents, pred=pred)

    def memcpy(i: int) -> None:  # what record keeps: the loss, and the kept items
        np.copyto(loss_buf, loss.detach().numpy())
        np.copyto(lat_buf, latents.numpy()[:kept])
        if i % every == 0:
            np.copyto(pred_buf, pred.numpy()[:kept])

    def clone(i: int) -> None:
        loss.detach().clone()
        latents[:kept].clone()
        if i % every == 0:
            pred[:kept].clone()

    def paced(cases: Sequence[Call], n: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
        """Each step: a training step, then each case; ``rate`` steps/s.

        Per call: wall µs and µs spent waiting for a CPU (run queue); process CPU s per step.
        """
        out = [np.empty(n) for _ in cases]
        waits = [np.empty(n) for _ in cases]
        next_start = time.perf_counter()
        cpu = time.process_time()
        for i in range(n):
            next_start += period
            for k, call in enumerate(cases):
                steps()
                queued = _runqueue_ns()
                out[k][i] = _time(call, i)
                waits[k][i] = (_runqueue_ns() - queued) / 1e3
            delay = next_start - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return out, waits, (time.process_time() - cpu) / n

    rec = Recorder(root / "images.zarr", every={"pred": every})
    try:
        paced([ours, memcpy, clone], 2 * every)  # warm-up: buffers pooled, signature cached
        (t_ours, t_copy, t_clone), (w_ours, w_copy, w_clone), _ = paced(
            [ours, memcpy, clone], calls
        )
        rec.flush()
        # process CPU per step, with and without record (the writer thread's work included)
        n_cpu = max(calls // 2, 4 * every)
        _, _, cpu_without = paced([lambda i: None], n_cpu)
        cpu0 = time.process_time()
        _, _, cpu_with = paced([lambda i: ours(calls + i)], n_cpu)
        rec.flush()
        cpu_with += (time.process_time() - cpu0) / n_cpu - cpu_with  # the final flush's share
        drops = dict(rec.stats.drops)
    finally:
        rec.close()
    board = SummaryWriter(str(root / "tb_images"))
    t_board = np.empty(board_calls)
    try:
        for i in range(board_calls):
            steps()
            t0 = time.perf_counter_ns()
            board.add_scalar("loss", loss, i)
            board.add_histogram("latents", latents[:kept], i)
            board.add_images("pred", pred[:kept], i)
            t_board[i] = (time.perf_counter_ns() - t0) / 1e3
    finally:
        board.close()
    image = np.arange(calls) % every == 0
    mib = kept * (latents[0].numel() + pred[0].numel()) * 4 / 2**20

    def row(name: str, sel: np.ndarray, times: np.ndarray, waits: np.ndarray | None) -> str:
        median, p99 = _stats(times[sel])
        net = "" if waits is None else f"{np.percentile(times[sel] - waits[sel], 99):,.1f}"
        ratio = median / float(np.median(t_copy[sel]))
        return f"| {name} | {median:,.1f} | {p99:,.1f} | {net} | {ratio:.2f} |"

    board_p99 = f"{np.percentile(t_board, 99):,.1f}"
    lines = [
        f"| (b) `record` with latents 8×4×64×64 + pred 8×3×512×512, pred every {every}th call "
        f"({rate:g} calls/s, {kept} items kept: {mib:.2f} MiB on image calls); raw copies of "
        f"what `record` keeps (the loss and the kept items) | median µs | p99 µs "
        f"| p99 µs less run-queue wait | ÷ raw copy (`numpy.copyto`) |",
        "|---|---:|---:|---:|---:|",
        row("texwatch `record`, image calls", image, t_ours, w_ours),
        row("raw copy (`numpy.copyto`, preallocated), image calls", image, t_copy, w_copy),
        row("raw copy (`torch.clone`), image calls", image, t_clone, w_clone),
        row("texwatch `record`, latents-only calls", ~image, t_ours, w_ours),
        row("raw copy (`numpy.copyto`), latents-only calls", ~image, t_copy, w_copy),
        f"| TensorBoard `add_scalar` + `add_histogram` + `add_images` ({board_calls} calls) "
        f"| {np.median(t_board):,.1f} | {board_p99} | | "
        f"{np.median(t_board) / np.median(t_copy[image]):.2f} |",
        "",
        f"image calls: {int(image.sum())}; drops: {drops or 'none'}; process CPU per step "
        f"{cpu_without * 1e3:.1f} ms without `record`, {cpu_with * 1e3:.1f} ms with it "
        f"({(cpu_with / cpu_without - 1) * 100:+.0f} %, the writer thread included)",
    ]
    return lines


def _sustained(root: Path, seconds: float) -> list[str]:
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    latents = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    lines = ["| (c) sustained | steps | achieved steps/s | drops |", "|---|---:|---:|---:|"]
    for name, rate, with_latents in (
        ("scalars at 2,000 steps/s", 2000.0, False),
        ("loss + latents 4×4×64×64 at 200 steps/s", 200.0, True),
    ):
        steps = int(rate * seconds)
        with Recorder(root / f"sustained{int(rate)}.zarr") as rec:
            call = partial(rec.record, loss=loss, latents=latents if with_latents else None)
            t0 = time.perf_counter()
            next_start = t0
            for i in range(steps):
                next_start += 1 / rate
                delay = next_start - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                call(i)
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


def _breakdown(root: Path, rounds: int) -> list[str]:
    """Each part of the cached ``record(step, loss)`` path, timed alone between training steps."""
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    rec = Recorder(root / "breakdown.zarr", queue_size=10**6)
    plans: dict[Any, Any] = {}
    read = ctypes.c_float.from_address
    tensor = torch.Tensor

    def key(i: int) -> object:  # as record() reads it inline
        return plans.get(
            (
                tensor,
                loss.ndim and loss.shape,
                loss.dtype,
                loss.layout,
                loss.is_cpu or loss.device,
                loss.is_neg(),
            )
        )

    def empty(
        step: int,
        loss: Any = None,
        *,
        latents: Any = None,
        pred: Any = None,
        target: Any = None,
        images: Any = None,
        terms: Any = None,
        weights: Any = None,
        scalars: Any = None,
        sample_ids: Any = None,
        timesteps: Any = None,
        checkpoint: bool = False,
    ) -> None:
        return None

    names = [
        "`record(step, loss)`, 0-d tensor (all of it)",
        "`record(step, loss)`, float",
        "a Python call with `record`'s arguments, doing nothing",
        "the signature (type, shape, dtype, layout, device, neg bit) and its dict lookup",
        "the copy: a 4-byte read at `loss.data_ptr()` (ctypes)",
        "the copy it replaced: `loss.numpy(force=True).copy()`",
        "`time.time()`",
        "`SimpleQueue.put` of the row tuple",
        "raw copy (`loss.detach().clone()`)",
        "an empty lambda (the timer's own cost)",
    ]
    row = (None, 0, 0.0, None, None, None, None, 0)
    cases: list[Call] = [
        lambda i: rec.record(i, loss),
        lambda i: rec.record(i, 0.5),
        lambda i: empty(i, loss),
        key,
        lambda i: read(loss.data_ptr()).value,
        lambda i: loss.numpy(force=True).copy(),
        lambda i: time.time(),
        lambda i: inbox.put(row),
        lambda i: loss.detach().clone(),
        lambda i: None,
    ]
    try:
        _back_to_back(cases, 2)
        results = _between_steps(cases, rounds, _Steps())
    finally:
        rec.close()
    whole = results[0]
    return [
        "| (d) where `record(step, loss)` goes, between training steps | median µs | p99 µs "
        "| ÷ record |",
        "|---|---:|---:|---:|",
        *(_row(name, times, whole) for name, times in zip(names, results, strict=True)),
    ]


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"machine: {model}, {os.cpu_count()} cores, load average {load}; Python "
        f"{sys.version.split()[0]}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), CPU tensors"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls, shorter runs")
    args = parser.parse_args()
    rounds, blocks, calls, seconds = (300, 30, 200, 2.0) if args.quick else (2000, 200, 1000, 5.0)
    gc.collect()
    print(_machine() + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for lines in (
            _scalar_case(root, rounds, blocks),
            _image_case(root, calls, 20.0, 5 if args.quick else 10),
            _sustained(root, seconds),
            _breakdown(root, rounds),
        ):
            print("\n".join(lines) + "\n", flush=True)
    print(_machine())


if __name__ == "__main__":
    main()
