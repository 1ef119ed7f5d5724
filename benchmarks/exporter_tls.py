"""Concurrent TLS scrapes of texwatchd's /metrics, with and without an idle connection open.

200 clients scrape at once over HTTPS (each its own connection and handshake, 5 s client timeout,
the target being all answered within 5 s); in the second scenario one client has opened a TCP
connection first and never sends a byte. Compared, in the same run:

  * texwatch: ``serve_metrics`` (handshake and request in a per-connection thread, timeouts);
  * baseline: prometheus_client's ``start_http_server`` with the same certificate, which is what
    ``serve_metrics`` ran before (handshake in the accepting thread, listen backlog 5).

Latency is per scrape, from the moment all 200 clients are released to the body read, over the
answered scrapes of every round (the client timeout bounds each socket operation, not the whole
scrape, so an answer can come after 5 s). CPU is the whole process's (server and clients both run
here) over a round, beside the round's wall time. Needs the ``openssl`` command for the
certificate.

Usage: python benchmarks/exporter_tls.py [--clients 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from texwatch.daemon._exporter import serve_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tables import table  # noqa: E402  (beside this script)

_TIMEOUT = 5.0


def _self_signed(folder: Path) -> tuple[str, str]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def _texwatch(registry: CollectorRegistry, cert: str, key: str) -> tuple[int, Callable[[], None]]:
    server = serve_metrics(registry, bind="127.0.0.1", port=0, certfile=cert, keyfile=key)
    return server.port, server.close


def _baseline(registry: CollectorRegistry, cert: str, key: str) -> tuple[int, Callable[[], None]]:
    server, thread = start_http_server(
        0, addr="127.0.0.1", registry=registry, certfile=cert, keyfile=key
    )

    def close() -> None:
        server.shutdown()
        thread.join()
        server.server_close()

    return int(server.server_address[1]), close


def _round(port: int, cert: str, clients: int, idle: bool) -> tuple[list[float], float, float]:
    """One burst of ``clients`` scrapes: answered latencies, wall and process CPU seconds."""
    context = ssl.create_default_context(cafile=cert)
    url = f"https://127.0.0.1:{port}/metrics"
    release = threading.Barrier(clients + 1)
    latencies: list[float | None] = [None] * clients
    start = [0.0]

    def scrape(i: int) -> None:
        release.wait()
        try:
            with urllib.request.urlopen(url, timeout=_TIMEOUT, context=context) as response:
                if response.status == 200 and b"texwatch_bench" in response.read():
                    latencies[i] = time.perf_counter() - start[0]
        except OSError:
            pass  # counted as not answered

    silent = socket.create_connection(("127.0.0.1", port)) if idle else None
    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    cpu = time.process_time()
    start[0] = time.perf_counter()
    release.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start[0]
    cpu = time.process_time() - cpu
    if silent is not None:
        silent.close()
    return [x for x in latencies if x is not None], wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    registry = CollectorRegistry()
    Gauge("texwatch_bench", "a sample to scrape", registry=registry).set(1.0)
    servers = {"texwatch serve_metrics": _texwatch, "baseline start_http_server": _baseline}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cert, key = _self_signed(Path(folder))
        for idle in (False, True):
            medians: dict[str, float] = {}
            for name, start in servers.items():
                port, close = start(registry, cert, key)
                answered: list[float] = []
                walls, cpus = [], []
                try:
                    for _ in range(args.rounds):
                        got, wall, cpu = _round(port, cert, args.clients, idle)
                        answered += got
                        walls.append(wall)
                        cpus.append(cpu)
                finally:
                    close()
                total = args.clients * args.rounds
                med = float(np.median(answered)) if answered else float("nan")
                medians[name] = med
                p99 = float(np.percentile(answered, 99)) if answered else float("nan")
                rows.append(
                    [
                        "yes" if idle else "no",
                        name,
                        f"{len(answered)}/{total}",
                        f"{sum(x <= _TIMEOUT for x in answered)}/{total}",
                        f"{1000 * med:,.0f}",
                        f"{1000 * p99:,.0f}",
                        f"{np.median(walls):.2f}",
                        f"{np.median(cpus):.2f}",
                        "",
                    ]
                )
            base = medians["baseline start_http_server"]
            for row, name in zip(rows[-2:], servers, strict=True):
                ratio = medians[name] / base
                row[-1] = "n/a (none answered)" if math.isnan(ratio) else f"{ratio:.2f}"
    table(
        [
            "idle conn",
            "server",
            "answered",
            f"within {_TIMEOUT:g} s",
            "median ms",
            "p99 ms",
            "wall s / round",
            "CPU s / round",
            "median ÷ baseline",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
