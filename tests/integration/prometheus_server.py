"""A real Prometheus for integration tests, on a free loopback port with its own config and data.

Starts the installed ``prometheus`` binary (Debian package ``prometheus``) with short scrape and
evaluation intervals and the given rule files, answers queries through its HTTP API, and waits a
bounded time for alerts or query results before failing with what it saw and Prometheus's log.
``tests/integration/conftest.py`` wraps it in the ``prometheus_factory`` fixture.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from dashboards.alerts import prometheus_rules
from dashboards.build import to_yaml
from dashboards.metrics import SCRAPE_JOB
from dashboards.thresholds import Thresholds

__all__ = ["PrometheusServer", "free_port", "wait_until", "write_rules"]

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_rules(path: str | Path, thresholds: Thresholds) -> Path:
    """Write texwatch's Prometheus alert rules for ``thresholds`` (e.g. seconds-long ``for``)."""
    path = Path(path)
    path.write_text(to_yaml(prometheus_rules(thresholds)), encoding="utf-8")
    return path


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25
) -> T:
    """Call ``probe`` until it returns something truthy, at most ``timeout`` seconds.

    Raises:
        TimeoutError: naming ``what`` and the last value ``probe`` returned.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g}s for {what}; last saw {last!r}")
        time.sleep(interval)


class _Exited(Exception):
    """Prometheus exited while starting (most likely its port was taken meanwhile)."""


class PrometheusServer:
    """One Prometheus process scraping ``targets`` as job ``texwatch``; a context manager.

    Args:
        targets: ``host:port`` of the /metrics endpoints to scrape.
        workdir: folder for the config, the TSDB and the log (created).
        rule_files: rule files to load.
        scrape_interval: Prometheus duration between scrapes.
        evaluation_interval: Prometheus duration between rule evaluations.
        job: the scrape job name (the alert rules expect ``texwatch``).
        scrape: more keys of the job's scrape config (``metrics_path``, ``params``,
            ``honor_labels``... to federate another Prometheus).
        startup_timeout: seconds to wait for ``/-/ready``.
    """

    def __init__(
        self,
        targets: Sequence[str],
        workdir: str | Path,
        *,
        rule_files: Sequence[str | Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
        job: str = SCRAPE_JOB,
        scrape: Mapping[str, Any] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        if isinstance(targets, str) or not all(isinstance(t, str) and ":" in t for t in targets):
            raise ValueError(f"targets must be a list of 'host:port' strings, got {targets!r}")
        binary = shutil.which("prometheus")
        if binary is None:
            raise FileNotFoundError("prometheus is not installed (Debian package 'prometheus')")
        self._binary = binary
        self._targets = list(targets)
        self._workdir = Path(workdir)
        self._rule_files = [Path(f).resolve() for f in rule_files]
        for rule_file in self._rule_files:
            if not rule_file.is_file():
                raise FileNotFoundError(f"rule file {rule_file} does not exist")
        self._scrape_interval = scrape_interval
        self._evaluation_interval = evaluation_interval
        self._job = job
        self._scrape = dict(scrape or {})
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = self._workdir / "prometheus.log"
        self.url = ""

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> PrometheusServer:
        """Write the config, start Prometheus and wait until it is ready; returns ``self``."""
        if self._process is not None:
            raise RuntimeError("this Prometheus is already running")
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": self._scrape_interval,
                        "scrape_timeout": self._scrape_interval,
                        "evaluation_interval": self._evaluation_interval,
                    },
                    "rule_files": [str(f) for f in self._rule_files],
                    "scrape_configs": [
                        {
                            "job_name": self._job,
                            "static_configs": [{"targets": self._targets}],
                            **self._scrape,
                        }
                    ],
                }
            ),
            encoding="utf-8",
        )
        # The port is probed free, then bound by Prometheus: retry if another process won it.
        for _ in range(3):
            port = free_port()
            with self._log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [
                        self._binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self._workdir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            self.url = f"http://127.0.0.1:{port}"
            try:
                wait_until(self._ready, timeout=self._startup_timeout, what="Prometheus /-/ready")
                return self
            except _Exited:
                self.stop()
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"Prometheus did not get ready:\n{self.log_tail()}") from None
        raise RuntimeError(f"Prometheus failed to start three times:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop Prometheus (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of Prometheus's log, for failure messages."""
        if not self._log_path.is_file():
            return "(no log)"
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    def _ready(self) -> bool:
        if self._process is None or self._process.poll() is not None:
            raise _Exited
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``.

        Raises:
            RuntimeError: Prometheus is not running, or answered with an error.
        """
        if self._process is None:
            raise RuntimeError("Prometheus is not running; call start() first")
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"GET /api/v1/{path} failed: {err.read().decode()}") from err
        if body.get("status") != "success":
            raise RuntimeError(f"GET /api/v1/{path} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query: the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise RuntimeError(f"expected a vector from {expr!r}, got {data['resultType']}")
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active (pending or firing) alerts: ``[{"labels", "annotations", "state", ...}]``."""
        return list(self.api("alerts")["alerts"])

    def wait_for_alerts(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        *,
        timeout: float = 30.0,
        what: str = "the expected alerts",
    ) -> list[dict[str, Any]]:
        """Poll ``/api/v1/alerts`` until ``predicate(alerts)`` holds; return those alerts.

        Raises:
            TimeoutError: with the last alerts seen and Prometheus's log tail.
        """
        return self._wait(lambda: (a := self.alerts(), predicate(a)), timeout, what)

    def wait_for_query(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool] = bool,
        *,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll an instant query until ``predicate(result)`` holds (default: non-empty)."""
        return self._wait(lambda: (r := self.query(expr), predicate(r)), timeout, repr(expr))

    def _wait(
        self,
        probe: Callable[[], tuple[list[dict[str, Any]], bool]],
        timeout: float,
        what: str,
    ) -> list[dict[str, Any]]:
        seen: list[list[dict[str, Any]]] = [[]]

        def attempt() -> tuple[list[dict[str, Any]]] | None:
            value, ok = probe()
            seen[0] = value
            return (value,) if ok else None  # a tuple is truthy even when the list is empty

        try:
            return wait_until(attempt, timeout=timeout, what=what)[0]
        except TimeoutError as err:
            raise TimeoutError(
                f"{err}\nlast result: {json.dumps(seen[0], indent=1)}\n"
                f"Prometheus log:\n{self.log_tail()}"
            ) from None
