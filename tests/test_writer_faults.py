"""The writer side of issue #13: one writer per store, every limit refused at record(), a writer
thread that loses no row uncounted, and durable commits."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import texwatch.client as tw
from texwatch import store as store_module
from texwatch.client import Recorder, WriterError
from texwatch.client._writer import Row, _Batch
from texwatch.detectors import MAX_TERMS, TermMonitor
from texwatch.errors import LockUnsupportedError, StoreLockedError
from texwatch.store import (
    ITEMS,
    LOSS_NAN,
    MAX_NAME,
    MAX_SCALARS,
    OVER_CAP,
    SCALARS,
    RunWriter,
    given_nan,
    open_run,
    remove_run,
)

REPO = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
}

# Records steps 0-99, flushes, says "ready", waits for a line on stdin, records 100-199, closes.
_FIRST_WRITER = """
import sys
import texwatch.client as tw
rec = tw.Recorder(sys.argv[1], run="first", all_ranks=sys.argv[2] == "1", rank=0)
for step in range(100):
    rec.record(step, float(step))
rec.flush()
print("ready", flush=True)
sys.stdin.readline()
for step in range(100, 200):
    rec.record(step, float(step))
rec.close()
print("done", flush=True)
"""

pytestmark = pytest.mark.usefixtures("no_default_recorder")


def _start_first_writer(path: Path, all_ranks: bool = False) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _FIRST_WRITER, str(path), "1" if all_ranks else "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        pytest.fail(f"the first writer did not start: {line!r}")
    return proc


# --- item 1: one live writer per store -------------------------------------------------------


@pytest.mark.integration
def test_a_second_writer_process_is_refused_and_the_first_loses_nothing(path: Path) -> None:
    proc = _start_first_writer(path)
    try:
        with pytest.raises(StoreLockedError, match=f"pid {proc.pid}") as raised:
            Recorder(path)
        message = str(raised.value)
        assert str(path) in message and "all_ranks=True" in message and "another path" in message
        assert raised.value.path == str(path)
        with pytest.raises(StoreLockedError):
            tw.init(path, run="second")
        with pytest.raises(StoreLockedError):
            RunWriter.open(path)
        # readers never take the lock, and Zarr sees nothing but the run
        assert open_run(path).committed() == {SCALARS: 100}
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert sorted(zarr.open_group(path, mode="r").keys()) == [SCALARS]
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "done"
        assert proc.wait(timeout=120) == 0
    run = open_run(path)
    cols = run.scalars(latest_wins=False)
    np.testing.assert_array_equal(cols["step"], np.arange(200))
    np.testing.assert_array_equal(cols["loss"], np.arange(200.0))
    assert run.drops() == {} and run.errors() == 0
    with Recorder(path, run="first") as rec:  # closed cleanly: the next writer opens
        rec.record(200, 200.0)
    assert open_run(path).committed() == {SCALARS: 201}


@pytest.mark.integration
def test_a_writer_killed_with_sigkill_leaves_no_stale_lock(path: Path) -> None:
    proc = _start_first_writer(path)
    proc.kill()
    proc.wait(timeout=120)
    with Recorder(path, run="first") as rec:
        rec.record(100, 100.0)
    np.testing.assert_array_equal(open_run(path).scalars()["step"], np.arange(101))


@pytest.mark.integration
def test_per_rank_stores_each_take_their_own_lock(path: Path) -> None:
    proc = _start_first_writer(path, all_ranks=True)
    try:
        with pytest.raises(StoreLockedError, match="rank0"):
            Recorder(path, all_ranks=True, rank=0)
        with Recorder(path, all_ranks=True, rank=1) as rec:
            rec.record(0, 1.0)
    finally:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    assert open_run(path / "rank0").committed() == {SCALARS: 200}
    assert open_run(path / "rank1").committed() == {SCALARS: 1}


def test_two_recorders_in_one_process_are_fenced_too(path: Path) -> None:
    with Recorder(path) as first:
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            Recorder(path)
        first.record(0, 1.0)
    with Recorder(path) as second:
        second.record(1, 2.0)
    assert open_run(path).committed() == {SCALARS: 2}


def test_a_closed_run_writer_lets_the_next_in_and_refuses_writes(path: Path) -> None:
    with (
        RunWriter.open(path) as first,
        pytest.raises(StoreLockedError, match="already has a live writer"),
    ):
        RunWriter.open(path)
    with pytest.raises(RuntimeError, match="closed"):
        first.commit()
    RunWriter.open(path).close()


def test_remove_run_deletes_the_run_and_its_lock_but_never_under_a_live_writer(path: Path) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0)
        with pytest.raises(StoreLockedError):
            remove_run(path)
    remove_run(path)
    assert list(path.parent.iterdir()) == []
    with Recorder(path) as rec:  # a new run in its place
        rec.record(0, 2.0)
    assert open_run(path).scalars()["loss"].tolist() == [2.0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_the_run_locked(path: Path) -> None:
    """A DataLoader worker forked by the trainer must not hold the lock after the trainer."""
    writer = RunWriter.open(path)
    read_end, write_end = os.pipe()
    started, ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child says it runs (its fork handlers ran), then waits for the parent
        os.close(write_end)
        os.write(ready, b"1")
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    os.close(ready)
    try:
        assert os.read(started, 1) == b"1"
        writer.close()
        RunWriter.open(path).close()
    finally:
        os.close(write_end)
        os.close(started)
        os.waitpid(pid, 0)


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_filesystem_without_flock_is_refused_and_the_store_untouched(
    path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(store_module.fcntl, "flock", no_flock)
    with pytest.raises(LockUnsupportedError, match="cannot be fenced.*does not support flock"):
        Recorder(path)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


# --- items 2-5, 16: every limit refused at record() ------------------------------------------


@pytest.mark.parametrize(
    ("step", "match"),
    [
        (2**63, r"step must fit int64 \(<= 2\*\*63 - 1\), got 9223372036854775808"),
        (np.uint64(2**64 - 1), "step must fit int64"),
        (10**400, "step must fit int64"),
    ],
)
def test_a_step_beyond_int64_is_refused_and_its_neighbours_survive(
    path: Path, step: Any, match: str
) -> None:
    with Recorder(path) as rec:
        for good in range(100):
            rec.record(good, float(good))
        with pytest.raises(ValueError, match=match):
            rec.record(step, 1.0)
        for good in range(100, 201):
            rec.record(good, float(good))
    run = open_run(path)
    np.testing.assert_array_equal(run.scalars()["step"], np.arange(201))
    assert run.drops() == {} and run.errors() == 0


def test_the_largest_step_is_stored(path: Path) -> None:
    with Recorder(path) as rec:
        rec.record(2**63 - 1, 1.0)
    assert open_run(path).scalars()["step"].tolist() == [2**63 - 1]


def test_every_stored_column_name_fits_at_its_final_length(path: Path) -> None:
    longest_term = "t" * (MAX_NAME - len(given_nan("term/")))
    with Recorder(path) as rec:
        rec.record(0, 1.0, terms={longest_term: float("nan")}, weights={longest_term: 1.0})
        rec.record(1, 1.0, scalars={"s" * MAX_NAME: 1.0})
        # one longer: stored under a name as long as the longest, ending in a hash of the key
        rec.record(2, 1.0, terms={longest_term + "t": float("nan")}, scalars={"s" * 300: 2.0})
        renamed = rec.renamed
    term, scalar = renamed["terms"][longest_term + "t"], renamed["scalars"]["s" * 300]
    assert len(term) == len(longest_term) and len(scalar) == MAX_NAME
    run = open_run(path)
    assert run.committed() == {SCALARS: 3} and run.errors() == 0
    cols = run.scalars()
    assert cols[given_nan(f"term/{longest_term}")][0] == 1.0
    assert cols[f"weight/{longest_term}"][0] == 1.0 and cols["s" * MAX_NAME][1] == 1.0
    assert cols[given_nan(f"term/{term}")][2] == 1.0 and cols[scalar][2] == 2.0


@pytest.mark.parametrize("name", ["nonfinite", "nonfinite/loss", "nonfinite/term/v"])
def test_scalar_names_of_internal_columns_are_stored_apart(path: Path, name: str) -> None:
    stored = "nonfinite_" + name[len("nonfinite") :]
    with Recorder(path) as rec:
        rec.record(0, float("nan"), terms={"v": float("nan")}, scalars={name: 1.0})
        for step in range(1, 50):
            rec.record(step, float("nan"))
        assert rec.renamed == {"scalars": {name: stored}}
    run = open_run(path)
    assert run.committed() == {SCALARS: 50} and run.errors() == 0
    assert run.nonfinite()["loss"] == 50 and run.scalars()[LOSS_NAN].tolist() == [1.0] * 50
    assert run.scalars()[given_nan("term/v")][0] == 1.0
    # a resumed recorder stores the key where it was stored
    with Recorder(path) as rec:
        rec.record(50, 1.0, scalars={name: 2.0})
    assert open_run(path).scalars()[stored][[0, 50]].tolist() == [1.0, 2.0]


def test_terms_past_the_cap_are_dropped_counted_and_warned_once(path: Path) -> None:
    extra = 44
    with (
        pytest.warns(RuntimeWarning, match=f"{MAX_TERMS} loss terms") as warned,
        Recorder(path) as rec,
    ):
        for step in range(MAX_TERMS + extra):
            rec.record(step, 1.0, terms={f"t{step}": 0.5, "v": 0.25})
        rec.record(MAX_TERMS + extra, 1.0, weights={"late": 2.0})  # a weight names a term too
    assert len([w for w in warned if "texwatch" in str(w.message)]) == 1
    run = open_run(path)
    assert run.committed() == {SCALARS: MAX_TERMS + extra + 1}  # every row kept
    assert run.drops() == {OVER_CAP: extra + 1 + 1}
    terms = [c for c in run.scalar_names() if c.startswith("term/")]
    assert len(terms) == MAX_TERMS and "term/v" in terms
    assert np.isfinite(run.scalars()["term/v"][:-1]).all()  # the last row gives a weight only
    # the daemon's term monitor takes the run as it is
    monitor = TermMonitor()
    cols = run.scalars()
    for row, step in enumerate(cols["step"]):
        values = {c[5:]: cols[c][row] for c in terms if np.isfinite(cols[c][row])}
        monitor.update(int(step), values)
    assert len(monitor.terms) == MAX_TERMS
    # a resumed recorder counts from the stored terms
    with Recorder(path) as rec, pytest.warns(RuntimeWarning, match="loss terms"):
        rec.record(0, 1.0, terms={"new": 1.0, "v": 1.0})
    assert open_run(path).drops() == {OVER_CAP: extra + 3}


def test_user_scalars_past_the_cap_are_dropped_and_the_marker_stays_bounded(path: Path) -> None:
    with pytest.warns(RuntimeWarning, match=f"{MAX_SCALARS} scalars"), Recorder(path) as rec:
        for step in range(MAX_SCALARS + 100):
            rec.record(step, 1.0, scalars={f"s{step}": 1.0, "lr": 0.1})
    run = open_run(path)
    assert run.committed() == {SCALARS: MAX_SCALARS + 100}
    assert len(run.scalar_names()) == MAX_SCALARS + 1  # and loss
    assert run.drops() == {OVER_CAP: 101}  # s0-s355 and lr: 357 names, 256 kept


def _unrepresentable() -> list[tuple[dict[str, Any], type[Exception], str]]:
    meta = torch.empty(2, device="meta")
    sparse = torch.eye(2).to_sparse()
    return [
        ({"loss": 10**400}, ValueError, r"loss .* too large for a float64"),
        ({"scalars": {"x": -(10**400)}}, ValueError, r"scalars\['x'\] .* too large"),
        ({"terms": {"v": 10**309}}, ValueError, r"terms\['v'\] .* too large"),
        ({"loss": meta}, ValueError, "loss is a meta tensor"),
        ({"terms": {"v": meta[0]}}, ValueError, r"terms\['v'\] is a meta tensor"),
        ({"latents": torch.empty(1, 4, 8, 8, device="meta")}, ValueError, "latents is a meta"),
        ({"timesteps": meta}, ValueError, "timesteps is a meta tensor"),
        ({"loss": sparse[0]}, TypeError, "loss must be a dense tensor, got layout"),
        ({"latents": torch.ones(1, 1, 2, 2).to_sparse()}, TypeError, "latents must be a dense"),
        ({"sample_ids": torch.tensor([0, 1]).to_sparse()}, TypeError, "sample_ids must be a dense"),
    ]


@pytest.mark.parametrize(("call", "error", "match"), _unrepresentable())
def test_unrepresentable_values_raise_the_documented_errors(
    path: Path, call: dict[str, Any], error: type[Exception], match: str
) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0)
        with pytest.raises(error, match=match):
            rec.record(1, **({"loss": 2.0} | call))
        rec.record(2, 3.0)
    run = open_run(path)
    assert run.scalars()["step"].tolist() == [0, 2] and run.errors() == 0


# --- the writer thread: a row is committed or counted, never silently gone -------------------


def _rows_accounted(path: Path, recorded: dict[str, int]) -> None:
    run = open_run(path)
    committed, drops = run.committed(), run.drops()
    for table, rows in recorded.items():
        assert committed.get(table, 0) + drops.get(table, 0) == rows, (table, committed, drops)


@pytest.mark.parametrize("where", ["append", "append_and_rollback", "tables", "commit"])
def test_a_failing_block_loses_no_uncounted_rows(
    path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Blocks are cut by flush(); the second one fails, its error handling too in some cases."""
    failing = {"on": False}
    append, commit, tables = RunWriter.append, RunWriter.commit, _Batch.tables

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "injected")

    def maybe(original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if failing["on"]:
                broken()
            return original(*args, **kwargs)

        return call

    if where.startswith("append"):
        monkeypatch.setattr(RunWriter, "append", maybe(append))
    if where == "append_and_rollback":
        monkeypatch.setattr(RunWriter, "rollback", maybe(RunWriter.rollback))
    if where == "tables":
        monkeypatch.setattr(_Batch, "tables", maybe(tables))
    if where == "commit":
        monkeypatch.setattr(RunWriter, "commit", maybe(commit))
    latents = np.ones((2, 4, 8, 8), np.float32)
    rec = Recorder(path, flush_interval=60.0)
    for block in range(3):
        failing["on"] = block == 1
        warned = pytest.warns(RuntimeWarning, match="training continues")
        with warned if block == 2 else contextlib.nullcontext():
            for step in range(100 * block, 100 * block + 100):
                rec.record(step, float(step), latents=latents, sample_ids=[0, 1])
        if block == 1:
            with pytest.raises(WriterError):
                rec.flush()
        else:
            rec.flush()
    rec.record(300, 300.0)
    rec.close()
    _rows_accounted(path, {SCALARS: 301, ITEMS: 600, "latents": 600})
    steps = open_run(path).scalars()["step"]
    np.testing.assert_array_equal(steps, np.r_[0:100, 200:301])  # good blocks around it survive
    assert open_run(path).errors() >= 1


def test_a_row_the_writer_cannot_store_is_counted_and_its_neighbours_kept(path: Path) -> None:
    """A row that slipped past record()'s checks (injected straight into the queue)."""
    rec = Recorder(path, flush_interval=60.0)
    rec.record(0, 1.0, sample_ids=[0, 1], latents=np.ones((2, 1, 2, 2), np.float32))
    latents = (np.ones((2, 1, 2, 2)), np.float32, "NCHW")
    bad = Row(2**64, 0.0, loss=np.ones(3), images={"latents": latents})
    rec._queue.put(bad)
    rec.record(1, 2.0, sample_ids=[2, 3], latents=np.ones((2, 1, 2, 2), np.float32))
    with pytest.raises(WriterError, match="1 write"):
        rec.flush()
    rec.close()
    run = open_run(path)
    assert run.scalars()["step"].tolist() == [0, 1] and run.committed()[ITEMS] == 4
    assert run.drops() == {SCALARS: 1, ITEMS: 3, "latents": 2}


# --- item 19: durable commits ----------------------------------------------------------------


def _fsync_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Log ("fsync", path) and ("rename", target) in order, from any thread."""
    log: list[tuple[str, str]] = []
    fsync, replace, link = os.fsync, os.replace, os.link

    def logged_fsync(fd: int) -> None:
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def logged_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        replace(src, dst, **kwargs)
        log.append(("rename", str(dst)))

    def logged_link(src: Any, dst: Any, **kwargs: Any) -> None:
        link(src, dst, **kwargs)
        log.append(("rename", str(dst)))

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    monkeypatch.setattr(os, "link", logged_link)
    return log


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_durable_commits_fsync_data_marker_and_folders_in_order(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _fsync_log(monkeypatch)
    with Recorder(path, durable=True) as rec:
        rec.record(0, 1.0, latents=np.ones((1, 4, 8, 8), np.float32))
        rec.flush()
        first_commit = len(log)
        rec.record(1, 2.0, latents=np.ones((1, 4, 8, 8), np.float32))
    root = str(path.resolve())
    synced = [p for kind, p in log if kind == "fsync"]
    # a file's data is synced under its temporary name, '<name>.<hex>.partial', before its rename
    files = {str(p.resolve()) for p in path.rglob("*") if p.is_file()}
    assert files <= {p.rsplit(".", 2)[0] for p in synced if p.endswith(".partial")}
    folders = {str(p.resolve()) for p in path.rglob("*") if p.is_dir()} | {root}
    assert folders <= set(synced)  # and every folder holding them
    # In each commit, every chunk is synced and renamed before the marker is renamed into place,
    # and the marker's own data is synced before its rename, its folder after.
    marker = os.path.join(root, "zarr.json")
    for commit in (log[:first_commit], log[first_commit:]):
        renamed = [i for i, (kind, p) in enumerate(commit) if kind == "rename" and p == marker]
        last = renamed[-1]
        chunks = [i for i, (kind, p) in enumerate(commit) if kind == "rename" and "/c." in p]
        assert chunks and max(chunks) < last
        assert commit[last - 1][0] == "fsync" and commit[last - 1][1].endswith(".partial")
        assert ("fsync", root) in commit[last + 1 :]
    np.testing.assert_array_equal(open_run(path).scalars()["loss"], [1.0, 2.0])


def test_default_commits_do_not_fsync(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _fsync_log(monkeypatch)
    with Recorder(path) as rec:
        rec.record(0, 1.0)
    assert not [entry for entry in log if entry[0] == "fsync"]
    assert json.loads((path / "zarr.json").read_text())["attributes"]["committed"] == {SCALARS: 1}
