"""Prometheus exposition for texwatchd: a custom collector over the latest derived results.

The pipeline computes; the collector only copies what the pipeline published (under a lock) and
turns it into metric families, so a scrape never triggers computation. The metric names and
labels come from :mod:`texwatch.metric_names`, the contract the dashboards and alert rules are
tested against. The same server hands out each run's newest snapshot under ``/snapshots/``.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import importlib.metadata
import platform
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from texwatch import __version__
from texwatch._location import buckets
from texwatch.metric_names import DEFAULT_PORT, ERROR_KINDS, FAMILIES

from ._http import ConnectionServer, make_server

__all__ = [
    "MetricsBoard",
    "MetricsServer",
    "Sample",
    "build_info",
    "read_basic_auth_file",
    "serve_metrics",
]


@dataclass(frozen=True)
class Sample:
    """One labelled value of a family in :data:`FAMILIES`."""

    name: str
    labels: Mapping[str, str]
    value: float


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_info() -> dict[str, str]:
    """The labels of ``texwatch_build_info``: texwatch's version and the Python, torch and zarr
    it runs on (read from the installed packages: nothing is imported)."""
    return {
        "version": __version__,
        "python": platform.python_version(),
        "torch": _version("torch"),
        "zarr": _version("zarr"),
    }


class MetricsBoard(Collector):
    """The latest results of every run, published by the pipeline and read by scrapes.

    Runs are keyed by their unique id (two runs may share a name); each run's samples are
    replaced as a whole, so a scrape sees one consistent batch per run. Errors and processing
    times are ordinary prometheus_client metrics in the same registry, beside the standard
    ``process_*`` and ``python_info`` families and ``texwatch_build_info``.

    Example:
        >>> registry = CollectorRegistry()
        >>> board = MetricsBoard(registry)
        >>> labels = {"run": "r1", "run_id": "id1", "rank": ""}
        >>> board.publish("id1", [Sample("texwatch_loss", labels, 0.5)])
        >>> registry.get_sample_value("texwatch_loss", labels)
        0.5
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[Sample, ...]] = {}
        self._observed: dict[str, tuple[str, ...]] = {}  # run id -> its processing labels
        self._errors = Counter(
            "texwatch_errors", FAMILIES["texwatch_errors"].doc, ["kind"], registry=registry
        )
        for kind in ERROR_KINDS:
            self._errors.labels(kind=kind)
        self._processing = Histogram(
            "texwatch_processing_seconds",
            FAMILIES["texwatch_processing_seconds"].doc,
            list(FAMILIES["texwatch_processing_seconds"].labels),
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=registry,
        )
        # prometheus_client's own instances are registered in its global registry only.
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        self._build = build_info()
        registry.register(self)

    def publish(self, run_id: str, samples: Iterable[Sample]) -> None:
        """Replace everything exported for the run ``run_id`` by ``samples``."""
        checked = self._checked(samples)
        with self._lock:
            self._runs[run_id] = checked

    def set_stalled(self, run_id: str, labels: Mapping[str, str], stalled: bool) -> None:
        """Set the run's ``texwatch_run_stalled`` and keep its other samples (its turn is busy)."""
        (sample,) = self._checked([Sample("texwatch_run_stalled", dict(labels), float(stalled))])
        with self._lock:
            kept = tuple(s for s in self._runs.get(run_id, ()) if s.name != sample.name)
            self._runs[run_id] = (*kept, sample)

    def forget(self, run_id: str) -> None:
        """Stop exporting the run ``run_id`` (deleted, or finished long ago)."""
        with self._lock:
            self._runs.pop(run_id, None)
            labels = self._observed.pop(run_id, None)
        if labels is not None:
            with contextlib.suppress(KeyError):
                self._processing.remove(*labels)

    def runs(self) -> list[str]:
        """Ids of the runs being exported."""
        with self._lock:
            return sorted(self._runs)

    def count_error(self, kind: str) -> None:
        """Count one daemon error of ``kind`` (one of :data:`ERROR_KINDS`)."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"Expected error kind in {ERROR_KINDS} but got {kind!r}")
        self._errors.labels(kind=kind).inc()

    def observe_processing(self, run_id: str, labels: Mapping[str, str], seconds: float) -> None:
        """Record how long one turn spent on the run ``run_id``, whose series carry ``labels``."""
        values = tuple(labels[k] for k in FAMILIES["texwatch_processing_seconds"].labels)
        with self._lock:
            self._observed[run_id] = values
        self._processing.labels(*values).observe(seconds)

    @staticmethod
    def _checked(samples: Iterable[Sample]) -> tuple[Sample, ...]:
        """``samples`` if each is of a known family with exactly its labels, else ValueError."""
        checked = tuple(samples)
        for s in checked:
            family = FAMILIES.get(s.name)
            if family is None or family.kind == "histogram" or tuple(s.labels) != family.labels:
                raise ValueError(
                    f"Expected sample {s.name!r} to be a known family with labels "
                    f"{family.labels if family else '?'} but got labels {tuple(s.labels)}"
                )
        return checked

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            runs = dict(self._runs)
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for samples in runs.values():
            for s in samples:
                fam = families.get(s.name)
                if fam is None:
                    spec = FAMILIES[s.name]
                    cls = GaugeMetricFamily if spec.kind == "gauge" else CounterMetricFamily
                    fam = families[s.name] = cls(s.name, spec.doc, labels=list(spec.labels))
                fam.add_metric(list(s.labels.values()), s.value)
        runs_gauge = GaugeMetricFamily("texwatch_runs", FAMILIES["texwatch_runs"].doc)
        runs_gauge.add_metric([], len(runs))
        yield runs_gauge
        spec = FAMILIES["texwatch_build_info"]
        build = GaugeMetricFamily(spec.name, spec.doc, labels=list(spec.labels))
        build.add_metric([self._build[k] for k in spec.labels], 1.0)
        yield build
        yield from families.values()
        yield from _object_store_families()


_STORE_COUNTS = {
    "texwatch_object_store_requests": "requests",
    "texwatch_object_store_retries": "retries",
    "texwatch_object_store_failures": "failures",
    "texwatch_object_store_throttled_seconds": "throttled_seconds",
}


def _object_store_families() -> Iterator[Metric]:
    """The request counters of every object store this process reached (none for local runs),
    summed per bucket URL (clients made with other options or credentials count together)."""
    counts: dict[str, dict[str, float]] = {}
    for bucket in buckets():
        total = counts.setdefault(bucket.url(""), dict.fromkeys(_STORE_COUNTS.values(), 0.0))
        for key, value in bucket.counts.snapshot().items():
            total[key] += value
    for name, key in _STORE_COUNTS.items():
        family = CounterMetricFamily(name, FAMILIES[name].doc, labels=["bucket"])
        for url, snapshot in counts.items():
            family.add_metric([url], snapshot[key])
        yield family


def read_basic_auth_file(path: str | Path) -> tuple[str, str]:
    """Read ``user:password`` from the first line of ``path`` (keep the file mode 0600)."""
    text = Path(path).read_text(encoding="utf-8").splitlines()
    line = text[0].strip() if text else ""
    user, sep, password = line.partition(":")
    if not sep or not user or not password:
        raise ValueError(
            f"Expected argument `--basic-auth-file` to hold one line 'user:password' "
            f"but {str(path)!r} holds {'nothing' if not line else 'no user:password pair'}"
        )
    return user, password


def _with_basic_auth(app: Callable[..., Any], user: str, password: str) -> Callable[..., Any]:
    """Wrap a WSGI app so only requests with the right Basic credentials reach it.

    The credentials are compared as bytes in constant time, so any header (non-ASCII included)
    is an ordinary 401, never an error.
    """
    expected = base64.b64encode(f"{user}:{password}".encode())

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        # WSGI hands header values over as latin-1 text (PEP 3333): this gives back the bytes sent.
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", errors="replace")
        scheme, _, token = given.strip().partition(b" ")
        if scheme.lower() == b"basic" and hmac.compare_digest(token.strip(), expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="texwatch"'), ("Content-Type", "text/plain")],
        )
        return [b"unauthorized\n"]

    return guarded


_SNAPSHOT_FILES = {
    "latest.png": (".png", "image/png"),
    "latest.json": (".json", "application/json"),
}


def _reply(start_response: Callable[..., Any], status: str, text: str) -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
    return [text.encode()]


def _with_snapshots(
    metrics: Callable[..., Any], newest: Callable[[str, str], Path | None]
) -> Callable[..., Any]:
    """Route ``/snapshots/<run folder>/latest.png`` (and ``latest.json``) to the newest
    snapshot of that run, everything else to ``metrics``.

    ``newest(folder name, ".png" or ".json")`` finds the file among the folders of the runs
    being served only: a request selects a known folder by name and a known file name, and no
    path is ever built from what it sent, so nothing outside the snapshot folders is reached.
    """

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if path != "/snapshots" and not path.startswith("/snapshots/"):
            return metrics(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", "GET only\n")
        parts = path.split("/")  # "", "snapshots", folder, file
        served = _SNAPSHOT_FILES.get(parts[3]) if len(parts) == 4 else None
        found = newest(parts[2], served[0]) if served is not None else None
        if found is None or served is None:
            return _reply(
                start_response,
                "404 Not Found",
                "no such snapshot: expected /snapshots/<run folder>/latest.png or latest.json "
                "of a run texwatchd serves\n",
            )
        try:
            body = found.read_bytes()
        except OSError:  # replaced by a newer one meanwhile, or unreadable: ask again
            return _reply(start_response, "404 Not Found", "snapshot gone; try again\n")
        start_response(
            "200 OK",
            [
                ("Content-Type", served[1]),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Texwatch-Step", found.stem),
            ],
        )
        return [b"" if environ["REQUEST_METHOD"] == "HEAD" else body]

    return app


def _tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server TLS context for the certificate chain and key, or a ValueError naming them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as err:
        raise ValueError(
            f"Expected arguments `--tls-cert` and `--tls-key` to be a PEM certificate chain and "
            f"its private key but loading {certfile!r} and {keyfile!r} failed: {err}"
        ) from err
    return context


class MetricsServer:
    """A running ``/metrics`` endpoint; :meth:`close` stops it and joins its threads."""

    def __init__(self, server: ConnectionServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and end the connections still open; safe to call twice."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


def serve_metrics(
    registry: CollectorRegistry,
    *,
    bind: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    certfile: str | None = None,
    keyfile: str | None = None,
    basic_auth: tuple[str, str] | None = None,
    snapshots: Callable[[str, str], Path | None] | None = None,
) -> MetricsServer:
    """Serve ``registry`` on ``bind:port`` (IPv4 or IPv6), with optional TLS and Basic auth.

    Each connection is served in its own thread, TLS handshake included, under a timeout: an
    idle or slow client cannot hold up the other scrapes (see :mod:`texwatch.daemon._http`).
    With ``snapshots`` (a served run's snapshot folder name and ``.png`` or ``.json`` -> its
    newest such file, or None), ``/snapshots/<folder>/latest.png`` and ``latest.json`` serve
    each run's newest snapshot, behind the same TLS and Basic auth.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError(
            "Expected arguments `--tls-cert` and `--tls-key` together but got "
            f"cert={certfile!r}, key={keyfile!r}"
        )
    tls = _tls_context(certfile, keyfile) if certfile and keyfile else None
    app = make_wsgi_app(registry)
    if snapshots is not None:
        app = _with_snapshots(app, snapshots)
    if basic_auth is not None:
        app = _with_basic_auth(app, *basic_auth)
    server = make_server(app, bind=bind, port=port, tls=tls)
    thread = threading.Thread(target=server.serve_forever, name="texwatch-metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
