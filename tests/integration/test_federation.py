"""Fleet Prometheus for real: texwatchd serves a per-rank job beside a run of its own, a first
Prometheus scrapes it, and a second one federates the first with deploy/prometheus/federation.yml's
scrape job. The texwatch series arrive in the second with their rank, and Prometheus' own
``hashmod`` of a run id agrees with the shard ``texwatchd --shard`` assigns."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_server import PrometheusServer, free_port

from texwatch.daemon._shard import shard_of
from texwatch.store import SCALARS, RunWriter, open_run

pytestmark = pytest.mark.integration

FEDERATION = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "federation.yml"
STEPS = 40


def _write(writer: RunWriter, loss: float) -> None:
    steps = np.arange(STEPS)
    writer.append(SCALARS, {"step": steps, "time": 1.7e9 + steps, "loss": np.full(STEPS, loss)})
    writer.commit()
    writer.close()


@pytest.mark.timeout(240)
def test_a_second_prometheus_federates_texwatch_series_from_the_first(
    prometheus_factory: Callable[..., PrometheusServer], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    for rank in (0, 1):
        _write(RunWriter.open(root / "job.zarr", rank=rank, per_rank=True), 1.0 + rank)
    _write(RunWriter.open(root / "single.zarr"), 3.0)
    port = free_port()
    daemon = subprocess.Popen(
        [sys.executable, "-m", "texwatch.daemon", "--root", str(root), "--port", str(port)]
        + ["--device", "cpu", "--rescan", "1", "--log-level", "WARNING"]
        + ["--snapshot-dir", str(tmp_path / "snaps")],
        stderr=subprocess.PIPE,
    )
    try:
        first = prometheus_factory([f"127.0.0.1:{port}"])
        (job,) = yaml.safe_load(FEDERATION.read_text(encoding="utf-8"))["scrape_configs"]
        scrape = {k: v for k, v in job.items() if k not in ("job_name", "static_configs")}
        # Prometheus' hashmod over each series' run_id, to compare with texwatchd's shards.
        scrape["metric_relabel_configs"] = [
            {
                "source_labels": ["run_id"],
                "modulus": 1000,
                "target_label": "shard",
                "action": "hashmod",
            }
        ]
        second = prometheus_factory(
            [first.url.removeprefix("http://")], job=job["job_name"], scrape=scrape
        )
        found = second.wait_for_query(
            f'texwatch_last_step{{job="texwatch"}} == {STEPS - 1}',
            lambda r: len(r) == 3,
            timeout=120,
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        if daemon.stderr:
            daemon.stderr.close()
    assert code == 0
    series = {(s["metric"]["run"], s["metric"].get("rank")): s["metric"] for s in found}
    assert set(series) == {("job", "0"), ("job", "1"), ("single", None)}
    ids = {open_run(root / "job.zarr" / f"rank{r}").run_id for r in (0, 1)}
    assert {series["job", "0"]["run_id"], series["job", "1"]["run_id"]} == ids
    for labels in series.values():  # federated with the first's job and instance kept
        assert labels["instance"] == f"127.0.0.1:{port}"
        assert labels["shard"] == str(shard_of(labels["run_id"], 1000))
