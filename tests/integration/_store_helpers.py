"""Helpers for the store/client tests: zarr's thread pools, deterministic payloads, and the
subprocess side of the process tests (run as ``python _store_helpers.py MODE ...``).

PATH may be an object-store URL; ``$TEXWATCH_TEST_RECORDER`` (JSON) then holds the Recorder's
``storage_options`` and ``lease_seconds``.

Modes:
    append PATH STEPS FLUSH_INTERVAL     record STEPS steps of scalars + small latents, then close
    forkserver PATH                      per stdin line ``go DELAY``: fork a writer that resumes the
                                         store and records until SIGKILLed after DELAY seconds;
                                         answer ``killed FLUSHED`` (rows flushed before the kill)
    diskfull PATH LIMIT_BYTES STEPS      record under RLIMIT_FSIZE; print a JSON summary
    atexit PATH STEPS                    record and exit without close()
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np

LATENT_SHAPE = (4, 8, 8)
LATENT_ITEMS = 2


def loss_of(step: np.ndarray | int) -> np.ndarray:
    """The loss a test writer records at ``step``."""
    return np.asarray(step, dtype=np.float64) * 0.25 + 1.0


def latents_of(step: int) -> np.ndarray:
    """The (LATENT_ITEMS, C, H, W) latents a test writer records at ``step``."""
    base = np.arange(np.prod(LATENT_SHAPE), dtype=np.float32).reshape(LATENT_SHAPE) / 256.0
    return np.stack([base + step + 0.5 * i for i in range(LATENT_ITEMS)]).astype(np.float32)


def check_rows(scalars: dict[str, np.ndarray], steps: np.ndarray, data: np.ndarray) -> None:
    """Assert committed rows are exactly what the writer recorded (no gap, duplicate or tear)."""
    n = scalars["step"].shape[0]
    np.testing.assert_array_equal(scalars["step"], np.arange(n))
    # A store killed before its first commit has no loss column yet: that reads as zero rows.
    np.testing.assert_array_equal(scalars.get("loss", np.zeros(0)), loss_of(np.arange(n)))
    assert np.isfinite(scalars["time"]).all()
    np.testing.assert_array_equal(steps, np.repeat(np.arange(n), LATENT_ITEMS))
    for row in range(0, steps.shape[0], max(1, steps.shape[0] // 50)):
        step = int(steps[row])
        np.testing.assert_array_equal(data[row], latents_of(step)[row % LATENT_ITEMS])


def kill_after(server: subprocess.Popen[str], delay: float) -> int:
    """Have a ``forkserver`` helper fork a writer and SIGKILL it after ``delay`` seconds; the rows
    that writer had flushed (every one of them must be in the store)."""
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(f"go {delay:.4f}\n")
    server.stdin.flush()
    reply = server.stdout.readline().split()
    assert reply[0] == "killed", reply
    return int(reply[1])


def check_killed_run(run: object, flushed: int, previous: int) -> int:
    """Assert a run whose writer was just killed holds every row promised (``flushed``, and the
    ``previous`` check's), complete and exact; its committed scalar rows."""
    committed = run.committed()  # type: ignore[attr-defined]
    n = committed.get("scalars", 0)
    assert n >= max(flushed, previous), (n, flushed, previous)
    assert committed.get("latents", 0) == 2 * n and run.drops() == {}  # type: ignore[attr-defined]
    scalars = run.scalars(latest_wins=False)  # type: ignore[attr-defined]
    steps, data = run.stream("latents") if n else (np.zeros(0), np.zeros(0))  # type: ignore[attr-defined]
    check_rows(scalars, steps, data)
    return int(n)


def _record(recorder: object, step: int) -> None:
    recorder.record(  # type: ignore[attr-defined]
        step,
        float(loss_of(step)),
        latents=latents_of(step),
        sample_ids=np.array([2 * step, 2 * step + 1]),
        terms={"v": 0.5},
    )


def _options() -> dict[str, object]:
    """The Recorder options the test passed in the environment (object-store runs)."""
    return json.loads(os.environ.get("TEXWATCH_TEST_RECORDER", "{}"))


def _committed(path: str) -> int:
    """Scalar rows committed at ``path`` (0 when there is no store yet)."""
    from texwatch.errors import StoreMissingError
    from texwatch.store import open_run

    try:
        return open_run(path, _options().get("storage_options")).committed().get("scalars", 0)
    except StoreMissingError:
        return 0


def _append(path: str, steps: int, flush_interval: float) -> None:
    from texwatch.client import Recorder

    with Recorder(path, run="proc", flush_interval=flush_interval, **_options()) as rec:
        for step in range(steps):
            _record(rec, step)
            time.sleep(0.0002)  # ~1 s for 5,000 steps: many commits, however fast the machine
    print(json.dumps(rec.stats.drops), flush=True)


def _resume_writer(path: str, report: int) -> None:
    """Resume the store at its committed row count and record until killed."""
    from texwatch.client import Recorder

    start = _committed(path)
    rec = Recorder(path, run="proc", flush_interval=0.005, **_options())
    step = start
    while True:
        _record(rec, step)
        step += 1
        if step % 16 == 0:
            rec.flush()
            os.write(report, f"{step}\n".encode())


def _forkserver(path: str) -> None:
    import texwatch.client  # noqa: F401  (imported once, before forking: children start fast)

    for line in sys.stdin:
        delay = float(line.split()[1])
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            try:
                _resume_writer(path, write_end)
            finally:
                os._exit(1)
        os.close(write_end)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        received = b""
        while select.select([read_end], [], [], 0)[0]:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            received += chunk
        os.close(read_end)
        complete = received[: received.rfind(b"\n") + 1].split()
        flushed = int(complete[-1]) if complete else 0
        print(f"killed {flushed}", flush=True)


def _diskfull(path: str, limit: int, steps: int) -> None:
    import resource

    from texwatch.client import Recorder, WriterError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    rng = np.random.default_rng(0)
    rec = Recorder(path, run="full", flush_interval=0.05)
    done = 0
    for step in range(steps):
        rec.record(step, float(loss_of(step)), latents=rng.standard_normal((2, 3, 32, 32)))
        done += 1
        if step == 3:
            rec.flush()  # the first rows land before the disk fills up
    error = None
    try:
        rec.close()
    except WriterError as err:
        cause = err.__cause__
        error = {"type": type(cause).__name__, "errno": getattr(cause, "errno", None)}
    stats = rec.stats
    print(
        json.dumps(
            {"recorded": done, "error": error, "errors": stats.errors, "drops": dict(stats.drops)}
        ),
        flush=True,
    )


def _atexit(path: str, steps: int) -> None:
    import texwatch.client as tw

    tw.init(path, run="exit", flush_interval=60.0)
    for step in range(steps):
        tw.record(step, float(loss_of(step)))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "append":
        _append(args[0], int(args[1]), float(args[2]))
    elif mode == "forkserver":
        _forkserver(args[0])
    elif mode == "diskfull":
        _diskfull(args[0], int(args[1]), int(args[2]))
    elif mode == "atexit":
        _atexit(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
