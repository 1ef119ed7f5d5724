"""Suite-wide guards (every test must clean up the threads it starts) and the client's fixtures."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_server import S3Server

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server on loopback (moto's standalone server, in its own process);
    the endpoint and dummy credentials are set in the environment, as a user would set them."""
    server = S3Server.start()
    saved = {k: os.environ.get(k) for k in S3Server.ENV}
    os.environ.update(server.env)
    try:
        yield server.endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A new, empty bucket on the S3 server for this test: its ``s3://`` URL."""
    return S3Server.create_bucket(s3_server, request.node.name)
