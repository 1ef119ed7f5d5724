"""texwatchd for a fleet: a per-rank job served as one job with a ``rank`` label, and ``--shard``
splitting a root of runs between daemons that never talk to each other."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from texwatch.daemon import Daemon, DaemonOptions, main
from texwatch.daemon._exporter import MetricsBoard
from texwatch.daemon._shard import Shard, parse_shard, shard_of
from texwatch.derive import DeriveSettings
from texwatch.store import SCALARS, RunWriter, open_run, store_id


def _write(writer: RunWriter, steps: int, loss: float = 1.0) -> None:
    block = np.arange(steps)
    writer.append(SCALARS, {"step": block, "time": 1.7e9 + block, "loss": np.full(steps, loss)})
    writer.commit()
    writer.close()


def _write_job(job: Path, ranks: int, steps: int) -> None:
    """A job recording on every rank: ``job/rank<r>``, rank r writing ``steps + r`` steps."""
    for rank in range(ranks):
        _write(RunWriter.open(job, rank=rank, per_rank=True), steps + rank, loss=1.0 + rank)


def _serve(registry: CollectorRegistry, **options: object) -> Daemon:
    daemon = Daemon(
        DaemonOptions(rescan=0.05, **options),  # type: ignore[arg-type]
        DeriveSettings(window=16, dead_window=8),
        MetricsBoard(registry),
    )
    try:
        daemon.catch_up()
    finally:
        daemon.close()
    return daemon


def _exposed(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    """``name``'s samples in the /metrics text, by (run, rank)."""
    text = generate_latest(registry).decode()
    out = {}
    for labels, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.MULTILINE):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[pairs["run"], pairs["rank"]] = float(value)
    return out


# --- every rank -------------------------------------------------------------------------------


def test_a_per_rank_job_is_served_as_one_job_labelled_by_rank(tmp_path: Path) -> None:
    job = tmp_path / "job.zarr"
    _write_job(job, ranks=3, steps=10)
    assert {open_run(job / f"rank{r}").name for r in range(3)} == {"job"}
    registry = CollectorRegistry()
    daemon = _serve(registry, stores=(job,))
    assert daemon.failures == {}
    assert _exposed(registry, "texwatch_last_step") == {
        ("job", "0"): 9.0,
        ("job", "1"): 10.0,
        ("job", "2"): 11.0,
    }
    assert _exposed(registry, "texwatch_loss") == {
        ("job", "0"): 1.0,
        ("job", "1"): 2.0,
        ("job", "2"): 3.0,
    }
    text = generate_latest(registry).decode()
    for rank in range(3):
        run_id = open_run(job / f"rank{rank}").run_id
        assert f'rank="{rank}",run="job",run_id="{run_id}"' in text
        assert (
            f'texwatch_processing_seconds_count{{rank="{rank}",run="job",run_id="{run_id}"}}'
            in text
        )


def test_a_root_serves_per_rank_jobs_beside_single_runs(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _write_job(root / "job.zarr", ranks=2, steps=5)
    _write(RunWriter.open(root / "single.zarr"), 7)
    registry = CollectorRegistry()
    daemon = _serve(registry, root=root)
    assert daemon.failures == {}
    # A run of its own has an empty rank: Prometheus stores it as no label, as before.
    assert _exposed(registry, "texwatch_last_step") == {
        ("job", "0"): 4.0,
        ("job", "1"): 5.0,
        ("single", ""): 6.0,
    }


# --- --shard ----------------------------------------------------------------------------------


def test_shards_split_a_root_into_disjoint_parts_whose_union_is_every_run(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for k in range(38):
        _write(RunWriter.open(root / f"r{k:02d}.zarr"), 2)
    jobs = [root / "job-a.zarr", root / "job-b.zarr"]
    for job in jobs:
        _write_job(job, ranks=2, steps=2)
    every = {r.run_id for r in _serve(CollectorRegistry(), root=root).workers.values()}
    assert len(every) == 38 + 2 * 2
    served = []
    for index in (0, 1):
        daemon = _serve(CollectorRegistry(), root=root, shard=Shard(index, 2))
        assert daemon.failures == {}
        served.append({w.run_id for w in daemon.workers.values()})
    assert served[0].isdisjoint(served[1]) and served[0] | served[1] == every
    assert 8 <= len(served[0]) <= 34  # md5 spreads 42 runs, not all on one side
    for job in jobs:  # every rank of a job on the daemon its job_id picks
        ranks = {open_run(job / f"rank{r}").run_id for r in (0, 1)}
        owner = shard_of(str(store_id(job)), 2)
        assert ranks <= served[owner] and ranks.isdisjoint(served[1 - owner])


def test_shard_of_is_the_same_in_every_process() -> None:
    keys = [f"{k:032x}" for k in range(0, 2**128, 2**122)]
    here = [shard_of(k, 5) for k in keys]
    code = f"from texwatch.daemon._shard import shard_of; print([shard_of(k, 5) for k in {keys}])"
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == str(here)
    assert set(here) == {0, 1, 2, 3, 4}
    # md5("a") = 0cc175b9c0f1b6a8 31c399e269772661: its last 8 bytes as a big-endian integer
    assert shard_of("a", 1000) == 0x31C399E269772661 % 1000


@pytest.mark.parametrize("given", ["2/2", "-1/2", "0/0", "1", "a/b", "0/2/3", ""])
def test_a_bad_shard_is_refused_naming_the_flag_the_value_and_the_form(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=rf"`--shard` as i/n .* but got {re.escape(repr(given))}"):
        parse_shard(given)
    with pytest.raises(SystemExit) as exit_:
        main(["--root", "runs", f"--shard={given}", "--once"])
    assert exit_.value.code == 2
    assert "argument --shard: Expected argument `--shard` as i/n" in capsys.readouterr().err
    assert parse_shard("1/2") == Shard(1, 2) and str(Shard(1, 2)) == "1/2"
