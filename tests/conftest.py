"""Suite-wide guards (every test must clean up the threads it starts) and the client's fixtures."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import texwatch.client as tw

_PROCESS_WIDE = ("zarr_io", "asyncio_")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (a writer or watcher that was never closed)."""
    before = set(threading.enumerate())
    # zarr runs its I/O on one process-wide event loop thread and executor, started on first use
    # and kept for the life of the process: not a leak.
    yield
    deadline = time.monotonic() + 5.0
    leaked: list[threading.Thread] = []
    while time.monotonic() < deadline:
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and not t.name.startswith(_PROCESS_WIDE)
        ]
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


@pytest.fixture()
def path(tmp_path: Path) -> Path:
    """A run store path whose parent folder does not exist yet."""
    return tmp_path / "runs" / "x.zarr"


@pytest.fixture()
def no_default_recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ``$TEXWATCH_STORE`` or ``$RANK`` from outside; the default recorder closed after."""
    monkeypatch.delenv("TEXWATCH_STORE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    yield
    tw.close()
