"""Run stores on object storage, against a real S3-compatible server on loopback (moto)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from texwatch._location import ObjectPath, locate
from texwatch.client import Recorder
from texwatch.derive import derive_all
from texwatch.errors import StoreLockedError, StoreMissingError
from texwatch.store import SCALARS, RunWriter, open_run, remove_run, run_paths

LEASE = 6.0  # short, for the tests; long enough that a loaded machine renews it in time
SHORT = {"client_options": {"timeout": "2s"}}  # a request timeout that allows a 6 s lease


def _frozen_writer(url: str) -> RunWriter:
    """A writer that committed steps 0-4, then stopped renewing its lease, as when its process
    is frozen or killed."""
    writer = RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE)
    _rows(writer, 0, 5)
    writer.commit()
    lease = writer._lock
    lease._stop.set()  # type: ignore[union-attr]
    lease._thread.join()  # type: ignore[union-attr]
    lease._stop.clear()  # type: ignore[union-attr]
    return writer


def _rows(writer: RunWriter, start: int, n: int) -> None:
    steps = np.arange(start, start + n)
    writer.append(SCALARS, {"step": steps, "time": steps * 0.1, "loss": steps * 0.5})


# --- where a store is ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("ftp://host/x.zarr", "unknown URL scheme 'ftp'"),
        ("hdfs://nn/x.zarr", "expected a local path, file://, s3://, gs://, az:// or memory://"),
        ("s3:///x.zarr", "names no bucket"),
        ("file://host/x.zarr", "file:// URL names a local path"),
        ("s3://b/x.zarr?versionId=1", "takes no ?query"),
    ],
)
def test_a_url_texwatch_cannot_serve_is_an_error_never_a_local_folder(
    where: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="path=") as caught:
        Recorder(where)
    assert message in str(caught.value)
    assert list(tmp_path.iterdir()) == []  # nothing made here


def test_file_urls_and_paths_name_the_same_local_store(tmp_path: Path) -> None:
    assert locate(f"file://{tmp_path}/x.zarr") == tmp_path / "x.zarr"
    with Recorder(f"file://{tmp_path}/x.zarr") as rec:
        rec.record(0, 1.0)
    assert open_run(tmp_path / "x.zarr").committed() == {SCALARS: 1}


def test_storage_options_are_checked_where_given(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="object-store URLs only"):
        Recorder(tmp_path / "x.zarr", storage_options={"region": "eu-west-1"})
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        Recorder("s3://bucket/x.zarr", storage_options=["region"])
    with pytest.raises(ValueError, match="max_requests_per_second"):
        locate("s3://bucket-opts/x.zarr", {"max_requests_per_second": 0})
    with pytest.raises(ValueError, match="storage_options for s3://bucket-opts are not valid"):
        locate("s3://bucket-opts/x.zarr", {"no_such_option": 1})


def test_memory_urls_share_one_store_per_process() -> None:
    with Recorder("memory://tests/one.zarr") as rec:
        rec.record(0, 2.0)
        rec.record(1, 3.0)
    run = open_run("memory://tests/one.zarr")
    assert run.scalars()["loss"].tolist() == [2.0, 3.0]


# --- the client and the reader on S3 -----------------------------------------------------------


def test_recorder_writes_an_s3_store_that_reads_back_exactly(s3_bucket: str) -> None:
    url = f"{s3_bucket}/runs/x.zarr"
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((6, 2, 4, 16, 16)).astype(np.float32)
    with Recorder(url, run="cloud", config={"lr": 1e-4}, every={"latents": 1}) as rec:
        for step in range(6):
            rec.record(step, 1.0 / (step + 1), latents=latents[step], scalars={"lr": 0.1})
    stats = rec.stats.object_store
    assert stats["requests"] > 0 and stats["failures"] == 0
    run = open_run(url)
    assert isinstance(run.path, ObjectPath) and str(run.path) == url
    assert run.name == "cloud" and run.config == {"lr": 1e-4}
    assert run.committed() == {SCALARS: 6, "latents": 12}
    np.testing.assert_allclose(run.scalars()["loss"], [1 / (s + 1) for s in range(6)])
    steps, data = run.stream("latents")
    assert steps.tolist() == [s for s in range(6) for _ in range(2)]
    np.testing.assert_array_equal(data, latents.reshape(12, 4, 16, 16))
    # the bucket holds plain Zarr v3: the marker says what is committed, and nothing is local
    marker = json.loads((locate(url) / "zarr.json").read_bytes())
    assert marker["attributes"]["committed"] == {SCALARS: 6, "latents": 12}
    assert run_paths(url) == [locate(url)]


def test_open_run_on_a_missing_s3_store_names_it(s3_bucket: str) -> None:
    with pytest.raises(StoreMissingError, match="does not exist"):
        open_run(f"{s3_bucket}/nothing.zarr")


def test_derive_all_and_remove_run_work_on_s3(s3_bucket: str) -> None:
    url = f"{s3_bucket}/x.zarr"
    with RunWriter.open(url) as writer:
        _rows(writer, 0, 50)
        writer.commit()
    derived = derive_all(url)
    assert derived[SCALARS]["step"].tolist() == list(range(50))
    remove_run(url)
    assert not locate(url).exists()


def test_per_rank_runs_on_s3(s3_bucket: str) -> None:
    url = f"{s3_bucket}/job.zarr"
    for rank in (0, 1):
        with RunWriter.open(url, rank=rank, per_rank=True) as writer:
            _rows(writer, 0, 3)
            writer.commit()
    assert [str(p) for p in run_paths(url)] == [f"{url}/rank0", f"{url}/rank1"]


# --- one writer per store ------------------------------------------------------------------------


def test_a_second_writer_on_an_s3_store_is_refused_and_nothing_is_lost(s3_bucket: str) -> None:
    url = f"{s3_bucket}/x.zarr"
    first = RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE)
    try:
        _rows(first, 0, 10)
        first.commit()
        with pytest.raises(StoreLockedError, match="already has a live writer") as caught:
            RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE)
        assert "pid" in str(caught.value)
        time.sleep(LEASE + 0.5)  # longer than a lease: only renewals keep the first writer in
        _rows(first, 10, 10)
        first.commit()
    finally:
        first.close()
    run = open_run(url, SHORT)
    assert run.scalars()["step"].tolist() == list(range(20))
    # a released lease lets the next writer in at once, resuming after the committed rows
    started = time.monotonic()
    with RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE) as again:
        assert time.monotonic() - started < LEASE / 2  # no lease to wait out
        assert again.committed() == {SCALARS: 20}


def test_a_dead_writers_lease_is_taken_over_after_one_lease(s3_bucket: str) -> None:
    url = f"{s3_bucket}/x.zarr"
    dead = _frozen_writer(url)
    started = time.monotonic()
    with RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE) as heir:
        waited = time.monotonic() - started
        assert LEASE <= waited < 4 * LEASE
        assert heir.committed() == {SCALARS: 5}
        _rows(heir, 5, 5)
        heir.commit()
    dead.close()  # its release finds the lease taken over and leaves it be
    assert open_run(url).scalars()["step"].tolist() == list(range(10))
    with RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE) as last:
        assert last.committed() == {SCALARS: 10}


def test_a_writer_that_lost_its_lease_can_never_publish(s3_bucket: str) -> None:
    url = f"{s3_bucket}/x.zarr"
    old = _frozen_writer(url)
    with RunWriter.open(url, storage_options=SHORT, lease_seconds=LEASE) as new:
        _rows(new, 5, 3)
        new.commit()
        # the old writer wakes up: its lease is stale, so it refuses to write at all
        with pytest.raises(StoreLockedError, match="lost its lease"):
            _rows(old, 5, 100)
            old.commit()
    # even a writer whose clock said its lease was fresh is stopped by the marker's If-Match
    old._lock._renewed = time.monotonic()  # type: ignore[union-attr]
    old._lock._lost = None  # type: ignore[union-attr]
    with pytest.raises(StoreLockedError, match="written by another writer"):
        old.commit()
    old.close()  # nothing to release: the lease is the new writer's
    assert open_run(url).scalars()["step"].tolist() == list(range(8))


def test_two_recorders_racing_for_one_s3_store_one_wins(s3_bucket: str) -> None:
    url = f"{s3_bucket}/race.zarr"
    results: list[object] = []

    def open_one() -> None:
        try:
            results.append(Recorder(url, storage_options=SHORT, lease_seconds=LEASE))
        except StoreLockedError as err:
            results.append(err)

    threads = [threading.Thread(target=open_one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, Recorder)]
    assert len(winners) == 1 and sum(isinstance(r, StoreLockedError) for r in results) == 1
    winners[0].record(0, 1.0)
    winners[0].close()
    assert open_run(url).committed() == {SCALARS: 1}


# --- requests ------------------------------------------------------------------------------------


def test_requests_to_a_bucket_are_counted_and_capped(s3_bucket: str) -> None:
    where = locate(f"{s3_bucket}/capped.zarr", {"max_requests_per_second": 20.0})
    assert isinstance(where, ObjectPath)
    before = where.bucket.counts.snapshot()
    started = time.monotonic()
    for k in range(45):  # a burst of 20 is allowed, then 20 a second
        (where / f"k{k}").put(b"x")
    took = time.monotonic() - started
    after = where.bucket.counts.snapshot()
    assert after["requests"] - before["requests"] == 45
    assert took >= 1.0 and after["throttled_seconds"] > 0
    assert after["failures"] == before["failures"]


def test_texwatchd_exports_the_request_counts_of_each_bucket(s3_bucket: str) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from texwatch.daemon._exporter import MetricsBoard

    with RunWriter.open(f"{s3_bucket}/x.zarr") as writer:
        _rows(writer, 0, 3)
        writer.commit()
    other = locate(f"{s3_bucket}/x.zarr", {"max_requests_per_second": 50.0})  # a second client
    assert isinstance(other, ObjectPath) and other.is_dir()
    registry = CollectorRegistry()
    MetricsBoard(registry)
    text = generate_latest(registry).decode()
    samples = [
        (s.name, s.labels.get("bucket"), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("bucket") == s3_bucket
    ]
    counts = {(name, bucket): value for name, bucket, value in samples}
    assert len(counts) == len(samples) == 4  # one series per family: the clients summed
    assert counts[("texwatch_object_store_requests_total", s3_bucket)] > 0
    assert counts[("texwatch_object_store_failures_total", s3_bucket)] == 0


# --- texwatchd over a bucket --------------------------------------------------------------------


def test_shards_split_an_s3_root_and_serve_per_rank_jobs_as_one_job(s3_bucket: str) -> None:
    from prometheus_client import CollectorRegistry

    from texwatch.daemon import Daemon, DaemonOptions
    from texwatch.daemon._exporter import MetricsBoard
    from texwatch.daemon._shard import Shard
    from texwatch.derive import DeriveSettings

    root = f"{s3_bucket}/runs"
    for k in range(8):
        with RunWriter.open(f"{root}/r{k}.zarr") as writer:
            _rows(writer, 0, 3)
            writer.commit()
    for rank in (0, 1):
        with RunWriter.open(f"{root}/job.zarr", rank=rank, per_rank=True) as writer:
            _rows(writer, 0, 4 + rank)
            writer.commit()

    def serve(shard: Shard) -> Daemon:
        daemon = Daemon(
            DaemonOptions(root=locate(root), rescan=0.05, shard=shard),
            DeriveSettings(window=16, dead_window=8),
            MetricsBoard(CollectorRegistry()),
        )
        try:
            daemon.catch_up()
        finally:
            daemon.close()
        assert daemon.failures == {}
        return daemon

    every = serve(Shard(0, 1)).workers
    assert len(every) == 8 + 2
    ranks = sorted(w.labels["rank"] for w in every.values() if w.name == "job")
    assert ranks == ["0", "1"]
    halves = [set(serve(Shard(i, 2)).workers) for i in (0, 1)]
    assert halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == set(every)
    job_ids = {w.run_id for w in every.values() if w.name == "job"}
    assert job_ids <= halves[0] or job_ids <= halves[1]  # a job's ranks stay together
