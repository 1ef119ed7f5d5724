"""Fixtures for integration tests that need a real Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_server import PrometheusServer


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Start real Prometheus servers (``factory(targets, rule_files=..., ...)``), all stopped
    at teardown. Keyword arguments go to :class:`PrometheusServer`."""
    started: list[PrometheusServer] = []

    def start(targets: Sequence[str], **kwargs: Any) -> PrometheusServer:
        server = PrometheusServer(targets, tmp_path / f"prometheus-{len(started)}", **kwargs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
