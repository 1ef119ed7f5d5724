"""``texwatch report`` on a job recorded on every rank: each rank reported, the ranks merged
(per-rank and pooled loss), and every spike and warning saying which rank it came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from texwatch.cli import main
from texwatch.report import build_report
from texwatch.store import SCALARS, RunWriter

STEPS = 300
SPIKE_RANK, SPIKE_STEP = 2, 200


def _loss(rank: int) -> np.ndarray:
    rng = np.random.default_rng(rank)
    loss = 1.0 + 0.1 * rank + 0.02 * rng.standard_normal(STEPS)
    if rank == SPIKE_RANK:
        loss[SPIKE_STEP] = 60.0
    return loss


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-rank job; rank 2 has a bad batch at step 200 and records only from step 10."""
    job = tmp_path_factory.mktemp("ranks") / "job.zarr"
    for rank in range(3):
        writer = RunWriter.open(job, rank=rank, per_rank=True)
        steps = np.arange(STEPS)
        keep = steps >= (10 if rank == SPIKE_RANK else 0)
        writer.append(
            SCALARS,
            {"step": steps[keep], "time": 1.7e9 + steps[keep], "loss": _loss(rank)[keep]},
        )
        writer.commit()
        writer.close()
    return job


@pytest.fixture(scope="module")
def doc(job: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(job), "-o", str(out), "--quiet"]) == 0
    return json.loads((out / "report.json").read_text())


def test_each_rank_is_reported_as_a_run_labelled_by_its_rank(doc: dict, job: Path) -> None:
    assert [(r["label"], r["rank"], r["path"]) for r in doc["runs"]] == [
        (f"job rank {k}", k, str(job / f"rank{k}")) for k in range(3)
    ]
    assert [r["loss"]["steps"] for r in doc["runs"]] == [STEPS, STEPS, STEPS - 10]


def test_the_job_merges_per_rank_and_pooled_loss(doc: dict) -> None:
    (merged,) = doc["jobs"]
    assert merged["name"] == "job" and merged["ranks"] == [0, 1, 2]
    per_rank = {r["rank"]: r for r in merged["per_rank"]}
    assert per_rank[2]["max_loss"] == 60.0 and per_rank[0]["max_loss"] < 2.0
    expected = np.mean([_loss(k)[-1] for k in range(3)])
    assert merged["pooled"]["last_loss"] == pytest.approx(expected)
    assert merged["pooled"]["steps"] == STEPS
    assert merged["pooled"]["steps_missing_ranks"] == 10  # rank 2 starts at step 10
    assert merged["pooled"]["max_loss"] == pytest.approx(
        np.mean([_loss(k)[SPIKE_STEP] for k in range(3)])
    )
    series = merged["pooled_series"]
    assert series["rows"] == STEPS and series["step"][0] == 0
    assert series["loss"][0] == pytest.approx(np.mean([_loss(k)[0] for k in range(2)]))


def test_every_spike_and_warning_says_its_rank(doc: dict) -> None:
    (merged,) = doc["jobs"]
    spikes = merged["spikes"]
    assert spikes and {s["rank"] for s in spikes} == {SPIKE_RANK}
    assert SPIKE_STEP in {s["step"] for s in spikes}
    assert all({"rank", "step"} <= w.keys() for w in merged["warnings"])
    rank2 = doc["runs"][SPIKE_RANK]
    assert rank2["spikes"] and all(s["rank"] == SPIKE_RANK for s in rank2["spikes"])
    assert not doc["runs"][0]["spikes"]


def test_the_html_names_the_rank_of_a_spike(job: Path, tmp_path: Path) -> None:
    build_report([job], tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert "Job: job (3 ranks merged)" in page and "Run: job rank 2" in page
    row = page[page.index("<th>step</th><th>rank</th><th>kind</th>") :]
    assert f"<td>{SPIKE_STEP}</td><td>{SPIKE_RANK}</td><td>spike</td>" in row


def test_a_run_of_its_own_has_no_rank_and_no_job(tmp_path: Path) -> None:
    single = tmp_path / "single.zarr"
    writer = RunWriter.open(single)
    steps = np.arange(50)
    writer.append(SCALARS, {"step": steps, "time": 1.7e9 + steps, "loss": np.ones(50)})
    writer.commit()
    writer.close()
    doc = build_report([single], tmp_path / "out")
    assert "jobs" not in doc and "rank" not in doc["runs"][0]
    assert doc["runs"][0]["label"] == "single"
