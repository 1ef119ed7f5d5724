"""texwatchd under faults: a hung run, a long backlog, deleted or garbage derived data, stores that
are missing, not yet there or copied, runs sharing a name, and exceptions texwatch does not know."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_daemon import write_run

from texwatch.daemon import Daemon, DaemonOptions, _runs, main
from texwatch.daemon._exporter import MetricsBoard
from texwatch.daemon._runs import RunWorker
from texwatch.derive import Deriver, DeriveSettings, derive_all
from texwatch.errors import ComputeError, CorruptChunkError
from texwatch.metric_names import ERROR_KINDS
from texwatch.store import SCALARS, DerivedWriter, RunWriter, open_run

DEADLINE = 120.0  # seconds a condition may take on a loaded 2-core machine


def _daemon(
    stores: list[Path], registry: CollectorRegistry, tmp_path: Path, **options: Any
) -> Daemon:
    opts = DaemonOptions(
        stores=tuple(stores),
        rescan=options.pop("rescan", 0.05),
        batch_rows=options.pop("batch_rows", 64),
        snapshot_dir=tmp_path / "snaps",
        **options,
    )
    return Daemon(opts, DeriveSettings(window=64, dead_window=20), MetricsBoard(registry))


def _series(
    registry: CollectorRegistry, metric: str, **labels: str
) -> list[tuple[dict[str, str], float]]:
    """Every sample of ``metric`` whose labels include ``labels``."""
    return [
        (s.labels, s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name == metric and labels.items() <= s.labels.items()
    ]


def _value(registry: CollectorRegistry, metric: str, **labels: str) -> float | None:
    found = _series(registry, metric, **labels)
    assert len(found) <= 1, f"{metric}{labels} matches {found}"
    return found[0][1] if found else None


def _errors(registry: CollectorRegistry) -> dict[str, float]:
    return {
        kind: _value(registry, "texwatch_errors_total", kind=kind) or 0.0 for kind in ERROR_KINDS
    }


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _lag(store: Path) -> int:
    run = open_run(store)
    cursor = run.derived_cursor()
    return sum(n - cursor.get(t, 0) for t, n in run.committed().items())


# --- item 7: one run's hung read or long backlog never holds up another ------------------------


def test_a_hung_read_stalls_only_its_own_run_which_resumes_once_it_returns(tmp_path: Path) -> None:
    hung, healthy = tmp_path / "hung.zarr", tmp_path / "healthy.zarr"
    write_run(hung, range(40))
    write_run(healthy, range(20))
    # A chunk replaced by a FIFO nobody writes: reading it blocks, as a hung NFS read does.
    chunk = next(
        p for p in sorted((hung / "scalars" / "loss").iterdir()) if p.name.startswith("c.")
    )
    saved = chunk.read_bytes()
    chunk.unlink()
    os.mkfifo(chunk)
    registry = CollectorRegistry()
    daemon = _daemon([hung, healthy], registry, tmp_path, stall_after=0.5)
    loop = threading.Thread(target=daemon.run)
    loop.start()
    unblocked = False

    def unblock() -> None:
        # The blocked reader holds the FIFO open, so this open does not block; later reads find
        # the real chunk again, and the blocked one reads its bytes.
        writer = os.open(chunk, os.O_WRONLY | os.O_NONBLOCK)
        restored = chunk.with_name("restored")
        restored.write_bytes(saved)
        os.replace(restored, chunk)
        os.write(writer, saved)
        os.close(writer)

    try:
        _wait(lambda: _value(registry, "texwatch_run_stalled", run="hung") == 1, "the stall")
        assert "stalled" in daemon.failures[hung]
        for first in (20, 40, 60):
            write_run(healthy, range(first, first + 20), seed=first)
            _wait(
                lambda last=first + 19: (
                    _value(registry, "texwatch_last_step", run="healthy") == last
                ),
                f"the healthy run to reach step {first + 19}",
            )
        assert _value(registry, "texwatch_run_stalled", run="hung") == 1
        unblock()
        unblocked = True
        _wait(lambda: _value(registry, "texwatch_last_step", run="hung") == 39, "the hung run")
        _wait(lambda: _value(registry, "texwatch_run_stalled", run="hung") == 0, "its recovery")
    finally:
        if not unblocked:
            unblock()
        daemon.stop()
        loop.join(timeout=DEADLINE)
        daemon.close()
    assert not loop.is_alive()
    # A slow first turn of the healthy run on a loaded machine may count a stall too.
    assert _errors(registry)["stalled"] >= 1 and hung not in daemon.failures
    np.testing.assert_array_equal(open_run(hung).derived(SCALARS)["step"], np.arange(40))


def test_a_backlog_is_derived_a_batch_per_round_while_other_runs_keep_up(tmp_path: Path) -> None:
    backlog, healthy = tmp_path / "backlog.zarr", tmp_path / "healthy.zarr"
    write_run(backlog, range(3000), image_every=1000, commit_every=500)
    write_run(healthy, range(20))
    registry = CollectorRegistry()
    # Rounds that wait for every turn, so the counts below are exact on any machine.
    daemon = _daemon([backlog, healthy], registry, tmp_path, batch_rows=64, turn_seconds=DEADLINE)
    newest, rounds = 19, 0
    try:
        for more in range(4):
            deadline = time.monotonic() + DEADLINE
            while _value(registry, "texwatch_last_step", run="healthy") != newest:
                assert time.monotonic() < deadline, f"the healthy run never reached {newest}"
                daemon.pass_once()
                rounds += 1
            # A round derives one batch of the backlog, and the lag gauge is what is committed
            # now minus what is derived, including rows committed meanwhile.
            assert rounds == more + 1
            assert open_run(backlog).derived_cursor()[SCALARS] == 64 * rounds
            assert _value(registry, "texwatch_daemon_lag_rows", run="backlog") == _lag(backlog) > 0
            write_run(healthy, range(newest + 1, newest + 11), seed=more + 1)
            newest += 10
            if more == 1:
                write_run(backlog, range(3000, 3100), seed=9)
        daemon.catch_up()
    finally:
        daemon.close()
    assert _lag(backlog) == 0
    assert _value(registry, "texwatch_daemon_lag_rows", run="backlog") == 0
    assert _value(registry, "texwatch_last_step", run="backlog") == 3099
    assert _value(registry, "texwatch_last_step", run="healthy") == newest


def test_image_rows_start_at_one_grow_on_fast_turns_and_halve_on_slow_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run's first image turn derives one row per stream, so even its first turn is short;
    the loss detectors' scalar rows always go a whole batch at a time."""
    store = tmp_path / "slow.zarr"
    write_run(store, range(128), image_every=1, commit_every=128)
    # Each turn's duration, by a fake clock; the first turn takes the scalars alone.
    durations = iter([0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 0.0])
    readings: list[float] = []

    def perf_counter() -> float:  # a turn reads it at its start and at its end
        readings.append(readings[-1] + next(durations) if len(readings) % 2 else 0.0)
        return readings[-1]

    monkeypatch.setattr(_runs, "time", SimpleNamespace(perf_counter=perf_counter, time=time.time))
    worker = RunWorker(store, DeriveSettings(window=32), batch_rows=128, turn_seconds=1.0)
    cursors = []
    for _ in range(7):
        worker.step()
        cursor = open_run(store).derived_cursor()
        cursors.append((cursor[SCALARS], cursor.get("pred", 0)))
    # pred rows per turn: 1, 2, 4 (fast: doubled), 8 (slow: halved), 4 (slow), 2.
    assert cursors == [(128, 0), (128, 1), (128, 3), (128, 7), (128, 15), (128, 19), (128, 21)]


def test_without_a_turn_bound_image_rows_go_whole_batches_at_once(tmp_path: Path) -> None:
    store = tmp_path / "once.zarr"
    write_run(store, range(100), image_every=1, commit_every=100)
    worker = RunWorker(store, DeriveSettings(window=32), batch_rows=64, turn_seconds=None)
    cursors = []
    for _ in range(3):
        worker.step()
        cursor = open_run(store).derived_cursor()
        cursors.append((cursor[SCALARS], cursor.get("pred", 0)))
    # The loss first, then each table 64 rows a turn from the first image turn on (--once).
    assert cursors == [(64, 0), (100, 64), (100, 100)]
    assert open_run(store).derived("pred")["step"].tolist() == list(range(100))


def test_new_loss_rows_go_out_before_the_images_committed_with_them(tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    write_run(store, range(20), image_every=1, commit_every=20)
    worker = RunWorker(store, DeriveSettings(window=8), batch_rows=64)
    derived = []
    for more in (range(20, 30), range(30, 40), None, None):
        worker.step()
        cursor = open_run(store).derived_cursor()
        derived.append((cursor[SCALARS], cursor.get("pred", 0), worker.deriver.last_step))
        if more is not None:
            write_run(store, more, image_every=1, commit_every=10, seed=more.start)
    # Turn 1: the loss alone (its last step exported at once); turn 2: the images, with the
    # loss committed meanwhile, so new loss rows never starve the images; then alternate again.
    assert derived[0] == (20, 0, 19)
    assert derived[1][:2] == (30, 1)
    assert derived[2][:2] == (40, 1)
    assert derived[3][1] > 1 and derived[3][0] == 40


# --- item 9: derived/ deleted, or its marker garbage --------------------------------------------


def test_deleting_derived_while_serving_re_derives_it_and_a_restart_serves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "r.zarr"
    write_run(store, range(100), spike_at=50)
    settings = DeriveSettings(window=64, dead_window=20)
    before = derive_all(store, settings)
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    try:
        daemon.catch_up()
        shutil.rmtree(store / "derived")
        write_run(store, range(100, 140), seed=1)
        # Deleted again between a batch's rows and its commit: the commit marker comes back but
        # the arrays it lists do not.
        commit = DerivedWriter.commit
        deleted: list[bool] = []

        def commit_after_rm(self: DerivedWriter, *args: Any, **kwargs: Any) -> None:
            if not deleted:
                deleted.append(True)
                shutil.rmtree(store / "derived")
            commit(self, *args, **kwargs)

        daemon.catch_up()
        monkeypatch.setattr(DerivedWriter, "commit", commit_after_rm)
        write_run(store, range(140, 160), seed=2)
        daemon.catch_up()
        monkeypatch.undo()
        daemon.catch_up()
    finally:
        daemon.close()
    assert deleted
    run = open_run(store)
    assert run.derived_cursor() == run.committed()
    np.testing.assert_array_equal(run.derived(SCALARS)["step"], np.arange(160))
    np.testing.assert_array_equal(run.derived(SCALARS)["spike"][:100], before[SCALARS]["spike"])
    assert len(derive_all(store, settings)[SCALARS]["step"]) == 160  # the report's path
    assert set(_errors(registry).values()) == {0.0}
    restarted = CollectorRegistry()
    daemon = _daemon([store], restarted, tmp_path)
    try:
        daemon.catch_up()
    finally:
        daemon.close()
    assert _value(restarted, "texwatch_last_step", run="r") == 159
    assert set(_errors(restarted).values()) == {0.0}


def test_a_garbage_derived_marker_is_an_error_naming_the_file(tmp_path: Path) -> None:
    store = tmp_path / "g.zarr"
    write_run(store, range(30))
    DerivedWriter(store).commit({SCALARS: 0})
    marker = store / "derived" / "zarr.json"
    marker.write_text('{"zarr_format": 3 "node_type": "group"}')
    with pytest.raises(CorruptChunkError, match=str(marker)) as info:
        DerivedWriter(store)
    assert info.value.path == str(marker) and info.value.kind == "corrupt_chunk"
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    try:
        daemon.pass_once()
        daemon.pass_once()
    finally:
        daemon.close()
    assert _errors(registry)["corrupt_chunk"] == 1
    assert str(marker) in daemon.failures[store]


def _write_latents(store: Path, rows: int = 200) -> Path:
    """A run of ``rows`` steps with latents 4x32x32 every step; the path of latents chunk 2.

    A latents row is 16 KiB, so a chunk holds 64 rows and chunk 2 rows 128-191.
    """
    rng = np.random.default_rng(11)
    writer = RunWriter.open(store)
    steps = np.arange(rows)
    writer.append(SCALARS, {"step": steps, "loss": 1.0 + 0.05 * rng.standard_normal(rows)})
    writer.append(
        "latents", {"step": steps, "data": rng.standard_normal((rows, 4, 32, 32), np.float32)}
    )
    writer.commit()
    writer.close()
    return store / "latents" / "data" / "c.2.0.0.0"


def test_a_corrupt_stream_is_counted_once_fails_once_by_name_and_clears_when_repaired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "run.zarr"
    chunk = _write_latents(store)
    good = chunk.read_bytes()
    chunk.write_bytes(good[: len(good) // 3])
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    try:
        daemon.catch_up()
        daemon.pass_once()  # the stream is retried, not counted again
        assert _errors(registry)["corrupt_chunk"] == 1
        assert sum(_errors(registry).values()) == 1
        assert str(chunk) in daemon.failures[store.resolve() / "latents"]
        cursor = open_run(store).derived_cursor()
        assert cursor[SCALARS] == 200 and cursor["latents"] == 128  # only latents stopped
        chunk.write_bytes(good)
        daemon.catch_up()
        assert daemon.failures == {}
        assert open_run(store).derived_cursor()["latents"] == 200
    finally:
        daemon.close()

    bad, other = tmp_path / "bad.zarr", tmp_path / "other.zarr"
    _write_latents(bad).write_bytes(good[:100])
    _write_latents(other)
    argv = ["--store", str(bad), "--store", str(other), "--once", "--device", "cpu"]
    assert main(argv) == 1
    assert f"store {bad.resolve() / 'latents'} failed: corrupt_chunk" in capsys.readouterr().err
    assert open_run(bad).derived_cursor()[SCALARS] == 200
    assert open_run(other).derived_cursor()["latents"] == 200


# --- items 10 and 11: failed stores with --once, stores that are not there yet ------------------


@pytest.mark.parametrize("fault", ["missing", "a file", "another schema"])
def test_once_exits_non_zero_naming_the_store_that_failed(
    tmp_path: Path, fault: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.zarr", tmp_path / "bad.zarr"
    write_run(good, range(30))
    if fault == "a file":
        bad.write_text("not a store")
    elif fault == "another schema":
        write_run(bad, range(10))
        meta = json.loads((bad / "zarr.json").read_text())
        meta["attributes"]["schema_version"] = 99
        (bad / "zarr.json").write_text(json.dumps(meta))
    argv = ["--store", str(good), "--store", str(bad), "--once", "--device", "cpu"]
    assert main([*argv, "--snapshot-dir", str(tmp_path / "snaps")]) == 1
    assert f"store {bad} failed" in capsys.readouterr().err
    assert open_run(good).derived_cursor()[SCALARS] == 30


def test_stores_and_a_root_that_do_not_exist_yet_are_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, root = tmp_path / "later" / "run.zarr", tmp_path / "runs"
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path, root=root)
    try:
        with caplog.at_level(logging.INFO, logger="texwatch.daemon"):
            for _ in range(3):
                daemon.pass_once()
        waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert len(waiting) == 2 and str(store) in waiting[0] and str(root) in waiting[1]
        assert set(_errors(registry).values()) == {0.0}
        write_run(store, range(25))
        write_run(root / "b.zarr", range(5))
        daemon.catch_up()
    finally:
        daemon.close()
    assert _value(registry, "texwatch_last_step", run="run") == 24
    assert _value(registry, "texwatch_last_step", run="b") == 4
    assert set(_errors(registry).values()) == {0.0}
    assert daemon.failures == {}


# --- item 12: runs keyed by their id --------------------------------------------------------------


def _write_ranks(job: Path, seed: int) -> None:
    """A job recording on every rank: ``job/rank0``, ``job/rank1``, each named ``job``."""
    for rank in (0, 1):
        writer = RunWriter.open(job, run="job", rank=rank, per_rank=True)
        steps = np.arange(10 + 5 * rank + seed)
        writer.append(SCALARS, {"step": steps, "time": steps * 1.0, "loss": np.ones(len(steps))})
        writer.commit()


def test_runs_sharing_a_name_keep_their_own_series_and_snapshot_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "x.zarr", tmp_path / "b" / "x.zarr"
    write_run(first, range(30), name="same")
    write_run(second, range(50), name="same", seed=1)
    jobs = [tmp_path / "job1.zarr", tmp_path / "job2.zarr"]
    for seed, job in enumerate(jobs):
        _write_ranks(job, seed)
    registry = CollectorRegistry()
    daemon = _daemon([first, second, *jobs], registry, tmp_path)
    try:
        daemon.catch_up()
        daemon.snapshot_all()
    finally:
        daemon.close()
    ids = {
        open_run(p).run_id: p
        for p in [first, second] + [j / f"rank{r}" for j in jobs for r in (0, 1)]
    }
    assert len(ids) == 6
    same = {
        labels["run_id"]: value
        for labels, value in _series(registry, "texwatch_last_step", run="same")
    }
    assert same == {open_run(first).run_id: 29, open_run(second).run_id: 49}
    ranks = {
        labels["run_id"]: value
        for labels, value in _series(registry, "texwatch_last_step", run="job")
    }
    assert ranks == {
        open_run(j / f"rank{r}").run_id: 9 + 5 * r + s for s, j in enumerate(jobs) for r in (0, 1)
    }
    folders = sorted(p.name for p in (tmp_path / "snaps").iterdir())
    names = {first: "same", second: "same"}
    assert folders == sorted(f"{names.get(p, 'job')}-{run_id[:8]}" for run_id, p in ids.items())


def test_a_copied_store_is_refused_not_mixed_into_its_original(tmp_path: Path) -> None:
    original, copy = tmp_path / "orig.zarr", tmp_path / "copy.zarr"
    write_run(original, range(30))
    shutil.copytree(original, copy)
    registry = CollectorRegistry()
    daemon = _daemon([original, copy], registry, tmp_path)
    try:
        daemon.catch_up()
        daemon.pass_once()
    finally:
        daemon.close()
    assert _errors(registry)["schema"] == 1
    assert str(original) in daemon.failures[copy] and "run_id" in daemon.failures[copy]
    assert len(_series(registry, "texwatch_last_step", run="orig")) == 1


# --- errors are typed where raised: their kind is counted, anything else is a bug ---------------


@pytest.mark.parametrize(
    ("error", "kind", "traceback"),
    [
        (ZeroDivisionError("division by zero"), "internal", True),
        (ComputeError("spectral metrics failed", "x"), "compute", False),
        (CorruptChunkError("chunk c.3 is truncated", "x/c.3"), "corrupt_chunk", False),
    ],
)
def test_a_failure_is_counted_by_its_type_and_a_bug_logged_with_its_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    kind: str,
    traceback: bool,
) -> None:
    store = tmp_path / "f.zarr"
    write_run(store, range(30))

    def advance(self: Deriver, *args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Deriver, "advance", advance)
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="texwatch.daemon"):
            daemon.pass_once()
            daemon.pass_once()
    finally:
        daemon.close()
    assert {k: v for k, v in _errors(registry).items() if v} == {kind: 1}
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert str(error) in record.getMessage()
    assert (record.exc_info is not None) == traceback


def test_catch_up_ends_when_rows_are_left_that_no_turn_derives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a stream stopped by a corrupt chunk leaves its rows behind: --once must still end.
    store = tmp_path / "stuck.zarr"
    write_run(store, range(100))
    monkeypatch.setattr(Deriver, "lag", lambda self, committed: 7)
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    done = threading.Event()
    loop = threading.Thread(target=lambda: (daemon.catch_up(), done.set()))
    loop.start()
    try:
        assert done.wait(DEADLINE), "catch_up never ended"
    finally:
        daemon.stop()
        loop.join()
        daemon.close()
    assert open_run(store).derived_cursor()[SCALARS] == 100
    assert _value(registry, "texwatch_daemon_lag_rows", run="stuck") == 7
