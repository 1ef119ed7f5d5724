"""Run stores on object storage: obstore against fsspec, record()'s cost, texwatchd's latency
and a texwatchd serving 200 runs from a bucket.

Everything talks to moto's S3 server on loopback (``tests/s3_server.py``), started by this script
in a process of its own with the script's nice level, through ``AWS_ENDPOINT_URL`` as a user's
S3-compatible storage would be reached. Each table's baseline is measured in the same run.

1. PUTs through zarr's ``Store.set`` of a 1 MiB incompressible chunk and a 2 KB ``zarr.json``,
   one at a time and 16 at once: latency (median, p99), throughput, and this process's CPU time
   per 100 PUTs (obstore's and aiohttp's threads included), for ``zarr.storage.FsspecStore`` on
   s3fs, texwatch's ``ObjectZarrStore`` on obstore and ``zarr.storage.ObjectStore`` on obstore;
   the stores take turns, batch by batch, so the machine's load falls on all alike.
2. ``record(step, loss)`` and ``record(step, loss, latents=4x4x64x64)`` on the training thread,
   a local store against an S3 store, calls alternating between training steps
   (``client_overhead.py``'s ``_Steps``/``_between_steps``): the I/O is the writer thread's, so
   the ratio should be about 1.
3. ``record()`` returned -> the step's ``texwatch_last_step`` on /metrics of a real ``texwatchd
   --store s3://...`` (default flags but the port and snapshot folder), 10 steps/s, flushed every
   second.
4. 200 runs under ``--root s3://bucket/runs/``: a real ``texwatchd`` derives them all (time, peak
   RSS from ``/proc/<pid>/status`` VmHWM, idle CPU); then a ``Daemon`` in this process times its
   passes over the 200 unchanged runs and counts their requests (``Bucket.counts``).

Usage: nice python benchmarks/object_store.py [--only 1 2 3 4] [--quick]
Needs the cloud, test and bench extras (obstore, moto[server], s3fs, torch, tensorboard).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _tables import table
from client_overhead import _between_steps, _Steps
from daemon_latency import free_port, last_step, wait_step
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync as zarr_sync

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from s3_server import S3Server  # noqa: E402  (the test suite's moto server)

from texwatch._location import MAX_REQUESTS_PER_SECOND, ObjectPath, locate  # noqa: E402
from texwatch._object_zarr import ObjectZarrStore  # noqa: E402
from texwatch.client import Recorder  # noqa: E402
from texwatch.store import SCALARS, RunWriter  # noqa: E402

_UNCAPPED = {"max_requests_per_second": 1e9}  # library against library: texwatch's cap aside


def _machine() -> str:
    model = platform.machine()
    with open("/proc/cpuinfo") as info:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), model
        )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{date.today()}, {model}, {os.cpu_count()} cores, load average {load}"


def _ms(values: Sequence[float]) -> tuple[str, str]:
    return f"{np.median(values) * 1e3:,.1f}", f"{np.percentile(values, 99) * 1e3:,.1f}"


# --- 1. PUTs: obstore against fsspec -------------------------------------------------------------


def _put_stores(endpoint: str, bucket: str) -> dict[str, Store]:
    from obstore.store import S3Store
    from zarr.storage import FsspecStore, ObjectStore

    return {
        "texwatch `ObjectZarrStore` (obstore)": ObjectZarrStore(
            locate(f"s3://{bucket}/texwatch", _UNCAPPED), read_only=False
        ),
        "zarr `ObjectStore` (obstore)": ObjectStore(
            S3Store(
                bucket, prefix="obstore", endpoint=endpoint, client_options={"allow_http": True}
            ),
            read_only=False,
        ),
        "zarr `FsspecStore` (s3fs)": FsspecStore.from_url(
            f"s3://{bucket}/fsspec", storage_options={"endpoint_url": endpoint}, read_only=False
        ),
    }


async def _put_batch(
    store: Store, data: Any, keys: list[str], concurrency: int
) -> tuple[list[float], float, float]:
    """Seconds per PUT, and the wall and process CPU seconds of the whole batch."""
    latencies: list[float] = []

    async def one_by_one(mine: list[str]) -> None:
        for key in mine:
            started = time.perf_counter()
            await store.set(key, data)
            latencies.append(time.perf_counter() - started)

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_by_one(keys[i::concurrency]) for i in range(concurrency)))
    return latencies, time.perf_counter() - wall, time.process_time() - cpu


def bench_puts(endpoint: str, bucket: str, rounds: int) -> None:
    stores = _put_stores(endpoint, bucket)
    rng = np.random.default_rng(0)
    buffer = default_buffer_prototype().buffer
    chunk = buffer.from_bytes(rng.bytes(1 << 20))  # compressed data does not compress further
    meta = buffer.from_bytes(
        b'{"zarr_format": 3, "node_type": "array", "attributes": {"pad": "' + b"x" * 1960 + b'"}}'
    )
    cases = [  # payload, its key, PUTs per batch, concurrency
        ("1 MiB chunk", chunk, "c/0/{}", 8, 1),
        ("1 MiB chunk", chunk, "c/0/{}", 32, 16),
        ("2 KB zarr.json", meta, "zarr.json", 20, 1),
        ("2 KB zarr.json", meta, "zarr.json", 64, 16),
    ]
    names = list(stores)
    for store in stores.values():  # first connections, first PUTs: not timed
        zarr_sync(_put_batch(store, meta, ["warm/zarr.json"] * 4, 1))
    lines = []
    for what, data, key, per_batch, concurrency in cases:
        got: dict[str, tuple[list[float], float, float]] = {n: ([], 0.0, 0.0) for n in names}
        for r in range(rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                keys = [key.format(i % 32) for i in range(per_batch)]  # bounded moto memory
                lat, wall, cpu = zarr_sync(_put_batch(stores[name], data, keys, concurrency))
                before = got[name]
                got[name] = (before[0] + lat, before[1] + wall, before[2] + cpu)
        base = float(np.median(got[names[0]][0]))
        for name in names:
            lat, wall, cpu = got[name]
            median, p99 = _ms(lat)
            mbps = len(lat) * len(data) / wall / 1e6
            lines.append(
                [
                    f"{what}, {'sequential' if concurrency == 1 else f'{concurrency} at once'}",
                    name,
                    str(len(lat)),
                    median,
                    p99,
                    f"{float(np.median(lat)) / base:.2f}",
                    f"{len(lat) / wall:,.0f}",
                    f"{mbps:,.1f}",
                    f"{cpu / len(lat) * 100:.2f}",
                ]
            )
    print(f"1. PUT through zarr's Store.set to moto S3 on loopback ({_machine()})")
    head = ["payload", "store", "PUTs", "median ms", "p99 ms", "median ÷ texwatch", "PUTs/s"]
    table([*head, "MB/s", "CPU s / 100 PUTs"], lines)


# --- 2. record() on the training thread: local against S3 ----------------------------------------


def bench_record(bucket: str, tmp: Path, rounds: int) -> None:
    gen = torch.Generator().manual_seed(0)
    loss = torch.tensor(0.5, requires_grad=True) * 1.0
    latents = torch.randn(4, 4, 64, 64, generator=gen)
    steps = _Steps()
    lines, totals = [], []
    local, remote = Recorder(tmp / "record.zarr"), Recorder(f"s3://{bucket}/record.zarr")
    try:
        for what, kwargs, first in (
            ("`record(step, loss)`", {}, 0),
            ("`record(step, loss, latents=4×4×64×64)`", {"latents": latents}, rounds + 100),
        ):
            cpu: list[list[float]] = [[], []]

            def call(
                rec: Recorder, times: list[float], first: int = first, kwargs: Any = kwargs
            ) -> Callable[[int], None]:
                def timed(i: int) -> None:
                    started = time.thread_time()
                    rec.record(first + i, loss, **kwargs)
                    times.append(time.thread_time() - started)

                return timed

            cases = [call(local, cpu[0]), call(remote, cpu[1])]
            _between_steps(cases, 20, steps)  # warm-up: the signature cached, buffers pooled
            for times in cpu:
                times.clear()
            walls = _between_steps(cases, rounds, steps)
            base = float(np.median(walls[0]))
            for k, where in enumerate(("local folder", "S3 (moto)")):
                lines.append(
                    [
                        what,
                        where,
                        f"{np.median(walls[k]):,.1f}",
                        f"{np.percentile(walls[k], 99):,.1f}",
                        f"{np.median(walls[k]) / base:.2f}",
                        f"{np.median(cpu[k]) * 1e6:,.1f}",
                    ]
                )
        for rec in (local, remote):  # each alone: the whole process's CPU, writer included
            rec.flush()
            wall, cpu0 = time.perf_counter(), time.process_time()
            for i in range(rounds):
                steps()
                rec.record(3 * rounds + i, loss, latents=latents)
            rec.flush()
            totals.append((time.process_time() - cpu0, time.perf_counter() - wall))
        drops = {**local.stats.drops, **{f"s3 {k}": v for k, v in remote.stats.drops.items()}}
    finally:
        local.close()
        remote.close()
    print(f"2. record() on the training thread, calls alternating, {rounds} each ({_machine()})")
    table(["call", "store", "median µs", "p99 µs", "÷ local", "thread CPU µs median"], lines)
    local_cpu, remote_cpu = (c / rounds * 1e3 for c, _ in totals)
    print(
        f"process CPU per step with latents, writer thread and a training step included, "
        f"{rounds} steps each store alone: local {local_cpu:.2f} ms, S3 {remote_cpu:.2f} ms "
        f"({remote_cpu / local_cpu:.2f}x); drops: {drops or 'none'}\n"
    )


# --- 3. record() -> /metrics through a real texwatchd on S3 -------------------------------------


def _texwatchd(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "texwatch.daemon", *args], stdout=out, stderr=out
        )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _memory_mib(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_metrics_latency(bucket: str, tmp: Path, seconds: float) -> None:
    url = f"s3://{bucket}/latency.zarr"
    rec = Recorder(url, flush_interval=1.0)
    rec.record(0, 1.0)
    rec.flush()
    port = free_port()
    proc = _texwatchd(
        ["--store", url, "--port", str(port), "--snapshot-dir", str(tmp / "snaps")],
        tmp / "latency.log",
    )
    n = int(seconds * 10)
    recorded: dict[int, float] = {}
    latency: dict[int, float] = {}
    updates = [0]
    done = threading.Event()

    def poll() -> None:
        newest = 0
        while newest < n and not done.is_set():
            try:
                step = last_step(port)
            except OSError:
                step = None
            now = time.perf_counter()
            if step is not None and step > newest:
                updates[0] += 1
                for s in range(newest + 1, int(step) + 1):
                    latency[s] = now - recorded[s]
                newest = int(step)
            time.sleep(0.02)

    try:
        wait_step(port, 0, limit=120)
        poller = threading.Thread(target=poll)
        poller.start()
        cpu0, wall0 = _cpu_seconds(proc.pid), time.perf_counter()
        tick = time.perf_counter()
        for step in range(1, n + 1):
            tick += 0.1
            time.sleep(max(0.0, tick - time.perf_counter()))
            rec.record(step, 1.0 + 0.01 * step)
            recorded[step] = time.perf_counter()
        poller.join(60)
        cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - wall0)
    finally:
        done.set()
        rec.close()
        _stop(proc)
    values = list(latency.values())
    print(
        f"3. record() returned -> texwatch_last_step on /metrics, texwatchd --store s3://… "
        f"({_machine()})"
    )
    table(
        ["steps", "/metrics updates", "median s", "p95 s", "p99 s", "target", "texwatchd CPU"],
        [
            [
                str(len(values)),
                str(updates[0]),
                f"{np.median(values):.2f}",
                f"{np.percentile(values, 95):.2f}",
                f"{np.percentile(values, 99):.2f}",
                "p95 <= 3 s",
                f"{cpu * 100:.0f} % of a core",
            ]
        ],
    )


# --- 4. 200 runs under an S3 --root --------------------------------------------------------------


def _make_run(root: str, k: int, rows: int) -> None:
    rng = np.random.default_rng(k)
    with RunWriter.open(f"{root}/run{k:03d}.zarr", storage_options=_UNCAPPED) as writer:
        for first in range(0, rows, 100):
            steps = np.arange(first, min(rows, first + 100))
            loss = 1.0 + 0.05 * rng.standard_normal(len(steps))
            writer.append(SCALARS, {"step": steps, "time": steps * 0.5, "loss": loss})
            if k % 4 == 0:  # a quarter of the runs carry a latents row per commit
                data = rng.standard_normal((1, 4, 64, 64)).astype(np.float16)
                writer.append("latents", {"step": steps[:1], "data": data})
            writer.commit()


def _derived_runs(port: int, step: int) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            lines = reply.read().decode().splitlines()
    except OSError:  # not serving yet
        return 0
    return sum(
        1 for ln in lines if ln.startswith("texwatch_last_step{") and float(ln.split()[-1]) == step
    )


def _wait_until(check: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(1.0)


def bench_root(bucket: str, tmp: Path, runs: int, rows: int, passes: int) -> None:
    from prometheus_client import CollectorRegistry

    from texwatch.daemon import Daemon, DaemonOptions
    from texwatch.daemon._daemon import REMOTE_POLL
    from texwatch.daemon._exporter import MetricsBoard
    from texwatch.derive import DeriveSettings

    root = f"s3://{bucket}/runs"
    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: _make_run(root, k, rows), range(runs)))
    made = time.perf_counter() - started

    port = free_port()
    proc = _texwatchd(
        ["--root", f"{root}/", "--port", str(port), "--snapshot-dir", str(tmp / "snaps")],
        tmp / "root.log",
    )
    try:
        started = time.perf_counter()
        _wait_until(lambda: _derived_runs(port, rows - 1) == runs, 900, "runs never derived")
        caught_up = time.perf_counter() - started
        cpu0, idle0 = _cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(20.0)  # idle: every run polled about once a second, the root listed every 5 s
        idle_cpu = (_cpu_seconds(proc.pid) - cpu0) / (time.perf_counter() - idle0)
        memory = _memory_mib(proc.pid)
    finally:
        _stop(proc)

    where = locate(f"{root}/")
    assert isinstance(where, ObjectPath)
    daemon = Daemon(
        DaemonOptions(root=where, snapshot_dir=tmp / "snaps"),
        DeriveSettings(),
        MetricsBoard(CollectorRegistry()),
    )
    walls, cpus, requests, throttled = [], [], [], []
    try:
        daemon.catch_up()  # opens the 200 runs; nothing is left to derive
        assert len(daemon.workers) == runs, f"{len(daemon.workers)} runs served, not {runs}"
        for _ in range(passes):
            time.sleep(REMOTE_POLL)  # as texwatchd waits between passes
            before = where.bucket.counts.snapshot()
            wall, cpu = time.perf_counter(), time.process_time()
            daemon.pass_once()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            after = where.bucket.counts.snapshot()
            requests.append(after["requests"] - before["requests"])
            throttled.append(after["throttled_seconds"] - before["throttled_seconds"])
    finally:
        daemon.close()
    print(
        f"4. {runs} runs of {rows} loss rows (a quarter with latents) under texwatchd --root "
        f"s3://… ({_machine()})"
    )
    print(
        f"written in {made:.0f} s (8 threads); the texwatchd process derived them all "
        f"{caught_up:.0f} s after its start\n"
    )
    median, p99 = (f"{np.median(walls):.3f}", f"{np.percentile(walls, 99):.3f}")
    table(
        ["measure", "median", "p99 / max", "target"],
        [
            ["one pass over the unchanged runs, wall s", median, p99, "<= 2 s"],
            [
                "its CPU s (this process)",
                f"{np.median(cpus):.3f}",
                f"{np.percentile(cpus, 99):.3f}",
                "",
            ],
            ["requests per pass", f"{np.median(requests):.0f}", f"{max(requests)}", ""],
            [
                f"seconds waiting for the {MAX_REQUESTS_PER_SECOND:g}/s cap per pass",
                f"{np.median(throttled):.3f}",
                f"{max(throttled):.3f}",
                "",
            ],
            ["texwatchd peak RSS MiB (VmHWM)", f"{memory['VmHWM']:,.0f}", "", "<= 1024"],
            ["texwatchd RSS MiB when idle", f"{memory['VmRSS']:,.0f}", "", ""],
            ["texwatchd CPU when idle, % of a core", f"{idle_cpu * 100:.0f}", "", ""],
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, nargs="+", choices=[1, 2, 3, 4], default=[1, 2, 3, 4])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    args = parser.parse_args()
    quick = args.quick
    server = S3Server.start()
    os.environ.update(server.env)  # as a user points texwatch at S3-compatible storage
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)

            def bucket(name: str) -> str:
                return S3Server.create_bucket(server.endpoint, name).removeprefix("s3://")

            print(f"{_machine()}; moto S3 server on loopback, Python {sys.version.split()[0]}\n")
            if 1 in args.only:
                bench_puts(server.endpoint, bucket("puts"), 3 if quick else 10)
            if 2 in args.only:
                bench_record(bucket("record"), tmp, 200 if quick else 1000)
            if 3 in args.only:
                bench_metrics_latency(bucket("latency"), tmp, 15.0 if quick else 70.0)
            if 4 in args.only:
                bench_root(bucket("root"), tmp, 40 if quick else 200, 300, 5 if quick else 20)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
