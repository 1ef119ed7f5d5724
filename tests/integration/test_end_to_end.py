"""The whole chain for real: a training process records, texwatchd derives and serves, a real
Prometheus scrapes it and evaluates texwatch's alert rules. A run with an injected loss spike and
a harmonic-doubled texture fires the harmonic-lock and spike alerts; a clean run fires nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_server import PrometheusServer, free_port, wait_until, write_rules

from dashboards.thresholds import Thresholds

pytestmark = pytest.mark.integration

TRAINER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import texwatch.client as tw

    path, name, pred_period, spike = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(0)
    x = np.arange(64, dtype=np.float32)
    def grating(period):
        row = 0.5 + 0.4 * np.sin(2 * np.pi * x / period)
        return np.broadcast_to(row, (1, 1, 64, 64)).astype(np.float32)
    tw.init(path, run=name, every={"pred": 20, "target": 20, "latents": 20})
    for step in range(400):
        loss = 80.0 if step == spike else 1.0 + 0.05 * rng.standard_normal()
        tw.record(step, loss, pred=grating(pred_period), target=grating(8.0),
                  terms={"v": loss}, weights={"v": 1.0})
    tw.close(finished=False)  # training goes on: a finished run's alerts are silenced
    """
)


def _train(path: Path, name: str, pred_period: float, spike: int) -> None:
    subprocess.run(
        [sys.executable, "-c", TRAINER, str(path), name, str(pred_period), str(spike)],
        check=True,
        timeout=120,
    )


def _firing(alerts: list[dict[str, Any]], name: str, run: str) -> bool:
    return any(
        a["labels"]["alertname"] == name
        and a["labels"].get("run") == run
        and a["state"] == "firing"
        for a in alerts
    )


@pytest.mark.timeout(240)
def test_alerts_fire_for_the_faulty_run_and_not_for_the_clean_one(
    prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    _train(runs / "bad.zarr", "bad", pred_period=16.0, spike=300)
    _train(runs / "clean.zarr", "clean", pred_period=8.0, spike=-1)
    port = free_port()
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "texwatch.daemon",
            "--root",
            str(runs),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--device",
            "cpu",
            "--rescan",
            "1",
            "--log-level",
            "WARNING",
            "--snapshot-dir",
            str(tmp_path / "snaps"),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        thresholds = Thresholds(harmonic_for="2s", spike_window="5m", down_for="2s")
        rules = write_rules(tmp_path / "rules.yml", thresholds)
        prom = prometheus_factory([f"127.0.0.1:{port}"], rule_files=[rules])
        prom.wait_for_query('texwatch_last_step{run="bad"} == 399', timeout=120)
        prom.wait_for_query('texwatch_last_step{run="clean"} == 399', timeout=60)
        alerts = prom.wait_for_alerts(
            lambda a: (
                _firing(a, "TexwatchHarmonicLock", "bad")
                and _firing(a, "TexwatchLossSpikes", "bad")
            ),
            timeout=60,
            what="harmonic-lock and loss-spike alerts firing for run 'bad'",
        )
        # The clean run has been evaluated as long as the bad one: nothing of it fires or pends.
        assert not [a for a in alerts if a["labels"].get("run") == "clean"], alerts
        assert not [a for a in prom.alerts() if a["labels"].get("run") == "clean"]
        locks = [
            a["labels"]
            for a in alerts
            if a["labels"]["alertname"] == "TexwatchHarmonicLock" and a["state"] == "firing"
        ]
        assert {(lock["run"], lock["stream"], lock["harmonic"]) for lock in locks} == {
            ("bad", "pred", "half")
        }, locks
        doubled = f'texwatch_tile_scale{{run="bad",stream="pred"}} >= {thresholds.harmonic_scale}'
        wait_until(
            lambda: prom.query(doubled) or None,
            timeout=10,
            what=f"{doubled} (tiles doubled) for the doubled run",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        if daemon.stderr:
            daemon.stderr.close()
    assert code == 0
