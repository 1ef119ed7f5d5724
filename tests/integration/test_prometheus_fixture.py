"""The Prometheus fixture with texwatch's real alert rules: a harmonic lock (tiles halved) fires,
a clean exposition (right scale, NaN) fires nothing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_server import PrometheusServer, write_rules

from dashboards.metrics import SCRAPE_JOB
from dashboards.thresholds import Thresholds


@contextmanager
def _exporter(registry: CollectorRegistry) -> Iterator[str]:
    """Serve ``registry`` on a free loopback port; yields ``host:port``."""
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _texture(registry: CollectorRegistry, run: str, tile_scales: dict[str, float]) -> None:
    """``texwatch_tile_scale`` of ``run``: stream name -> value."""
    gauge = Gauge(
        "texwatch_tile_scale", "period / ref period", ["run", "stream"], registry=registry
    )
    for stream, value in tile_scales.items():
        gauge.labels(run, stream).set(value)


def _healthy_run(registry: CollectorRegistry, run: str) -> None:
    """Everything the other rules read, at values that must not fire."""
    _texture(registry, run, {"pred": 1.02, "target": 1.0, "latents": math.nan})
    spikes = Counter("texwatch_loss_spikes", "spikes", ["run", "rule"], registry=registry)
    spikes.labels(run, "sigma")
    Counter("texwatch_nonfinite", "NaN/Inf", ["run", "stream"], registry=registry).labels(
        run, "latents"
    )
    dead = Gauge("texwatch_loss_term_dead", "dead", ["run", "term"], registry=registry)
    dead.labels(run, "lpips").set(0)
    Gauge("texwatch_daemon_lag_rows", "lag", ["run"], registry=registry).labels(run).set(3)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_harmonic_lock_fires_and_a_clean_exposition_fires_nothing(
    prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    locked = CollectorRegistry()
    _texture(locked, "locked", {"pred": 0.5, "target": 1.0})
    clean = CollectorRegistry()
    _healthy_run(clean, "clean")
    rules = write_rules(tmp_path / "rules.yml", Thresholds(harmonic_for="2s", down_for="2s"))

    with _exporter(locked) as locked_target, _exporter(clean) as clean_target:
        prom = prometheus_factory([locked_target, clean_target], rule_files=[rules])

        def lock_firing(alerts: list[dict]) -> bool:
            return any(
                a["labels"]["alertname"] == "TexwatchHarmonicLock" and a["state"] == "firing"
                for a in alerts
            )

        prom.wait_for_alerts(lock_firing, timeout=40, what="TexwatchHarmonicLock firing")
        # Both targets were scraped and up while the rules ran for longer than their `for`.
        up = prom.wait_for_query(f'up{{job="{SCRAPE_JOB}"}} == 1', lambda r: len(r) == 2)
        assert {r["metric"]["instance"] for r in up} == {locked_target, clean_target}
        clean_scales = prom.query('texwatch_tile_scale{run="clean"}')
        values = {r["metric"]["stream"]: float(r["value"][1]) for r in clean_scales}
        assert values["pred"] == pytest.approx(1.02) and math.isnan(values["latents"])

        (alert,) = prom.alerts()
        assert alert["state"] == "firing"
        assert alert["labels"] == {
            "alertname": "TexwatchHarmonicLock",
            "severity": "warning",
            "harmonic": "2f",
            "run": "locked",
            "stream": "pred",
            "job": SCRAPE_JOB,
            "instance": locked_target,
        }
        assert float(alert["value"]) == pytest.approx(2.0)  # 1 / tile_scale
        assert (
            alert["annotations"]["summary"] == "locked/pred: texture tiles halved (harmonic lock)"
        )
        assert alert["annotations"]["description"].endswith(" Tile scale: 1/2.")
