"""The run store: layout, commit protocol, resume, derived tables and the committed-rows reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

from texwatch.errors import CorruptChunkError, StoreMissingError, StoreReadError
from texwatch.store import (
    CHUNK_TARGET_BYTES,
    DERIVED,
    ITEMS,
    SCALARS,
    SCHEMA_VERSION,
    DerivedWriter,
    RunWriter,
    StoreFormatError,
    check_name,
    latest_rows,
    open_run,
    run_paths,
)


def _scalars(steps: np.ndarray, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "step": steps,
        "time": np.full(steps.shape, 1.7e9),
        "loss": steps * 0.5,
        **extra,
    }


def _latents(steps: np.ndarray) -> dict[str, np.ndarray]:
    data = np.stack([np.full((4, 8, 8), s, dtype=np.float16) for s in steps])
    return {"step": steps, "data": data}


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "x.zarr"


def test_round_trip_of_every_table(store: Path) -> None:
    writer = RunWriter.open(store, run="brick", config={"lr": 1e-4, "tags": ["a"]})
    steps = np.arange(10)
    writer.append(SCALARS, _scalars(steps, **{"term/v": steps * 2.0, "lr": np.full(10, 1e-4)}))
    writer.append("latents", _latents(steps[:3]))
    writer.append("val/0", {"step": np.array([5]), "data": np.ones((1, 3, 4, 4), np.float32)})
    writer.append(
        ITEMS,
        {
            "step": np.repeat(steps, 2),
            "loss": np.arange(20.0),
            "timestep": np.arange(20.0) * 10,
            "sample_id": np.arange(20),
        },
    )
    assert writer.commit(drops={"pred": 2}, nonfinite={"loss": 1}, errors=3) == {
        SCALARS: 10,
        "latents": 3,
        "val/0": 1,
        ITEMS: 20,
    }

    run = open_run(store)
    assert (run.name, run.config, run.schema_version) == ("brick", {"lr": 1e-4, "tags": ["a"]}, 1)
    assert run.committed() == {SCALARS: 10, "latents": 3, "val/0": 1, ITEMS: 20}
    assert run.scalar_names() == ["loss", "term/v", "lr"]
    assert run.stream_names() == ["latents", "val/0"]
    assert (run.drops(), run.nonfinite(), run.errors()) == ({"pred": 2}, {"loss": 1}, 3)
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], steps)
    np.testing.assert_array_equal(cols["term/v"], steps * 2.0)
    assert cols["step"].dtype == np.int64 and cols["loss"].dtype == np.float64
    got_steps, data = run.stream("latents")
    np.testing.assert_array_equal(got_steps, [0, 1, 2])
    assert data.dtype == np.float16 and data.shape == (3, 4, 8, 8)
    np.testing.assert_array_equal(data[:, 0, 0, 0], [0, 1, 2])
    spec = run.stream_spec("val/0")
    assert spec.shape == (3, 4, 4) and spec.dtype == np.float32
    items = run.items(start=2, stop=4)
    np.testing.assert_array_equal(items["sample_id"], [2, 3])
    np.testing.assert_array_equal(run.batch(3)["loss"], [6.0, 7.0])
    assert run.attrs["created"].endswith("+00:00") and run.rank is None


def test_uncommitted_rows_are_invisible_and_overwritten_after_rollback(store: Path) -> None:
    writer = RunWriter.open(store)
    writer.append(SCALARS, _scalars(np.arange(4)))
    writer.commit()
    writer.append(SCALARS, _scalars(np.arange(4, 8)))
    writer.append("latents", _latents(np.arange(2)))
    run = open_run(store)
    assert run.committed() == {SCALARS: 4}
    assert run.scalars(start=0, stop=100)["step"].tolist() == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="latents"):
        run.stream("latents")
    writer.rollback()
    writer.append(SCALARS, _scalars(np.array([40, 41])))
    writer.commit()
    assert open_run(store).scalars()["step"].tolist() == [0, 1, 2, 3, 40, 41]
    assert open_run(store).stream_names() == []


def test_column_first_seen_late_reads_nan_without_back_fill(store: Path) -> None:
    writer = RunWriter.open(store)
    writer.append(SCALARS, _scalars(np.arange(5000)))
    writer.commit()
    writer.append(SCALARS, _scalars(np.arange(5000, 5010), grad_norm=np.ones(10)))
    writer.commit()
    cols = open_run(store).scalars(start=4990)
    assert np.isnan(cols["grad_norm"][:10]).all() and (cols["grad_norm"][10:] == 1).all()
    # only the block that held values was written: no chunk was filled in for rows < 5000
    chunk_files = sorted(p.name for p in (store / SCALARS / "grad_norm").iterdir())
    assert chunk_files == ["c.0", "zarr.json"]
    meta = json.loads((store / SCALARS / "grad_norm" / "zarr.json").read_text())
    assert meta["fill_value"] == "NaN"


def test_layout_capacity_chunks_codec_and_keys(store: Path) -> None:
    writer = RunWriter.open(store)
    data = np.zeros((40, 3, 64, 64), np.float32)
    for start in range(0, 200, 40):
        writer.append("pred", {"step": np.arange(start, start + 40), "data": data})
        writer.commit()
    meta = json.loads((store / "pred" / "data" / "zarr.json").read_text())
    chunk_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
    row_bytes = 3 * 64 * 64 * 4
    assert CHUNK_TARGET_BYTES // 2 < chunk_rows * row_bytes <= CHUNK_TARGET_BYTES
    capacity = meta["shape"][0]
    assert capacity >= 200 and capacity // chunk_rows & (capacity // chunk_rows - 1) == 0
    assert meta["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "."}}
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc"]
    assert all(p.is_file() for p in (store / "pred" / "data").iterdir())  # flat keys
    root = json.loads((store / "zarr.json").read_text())
    assert "consolidated_metadata" not in root or root["consolidated_metadata"] is None
    assert not (store / SCALARS).exists()  # tables appear with their first rows


def test_plain_zarr_and_tensorstore_read_it_without_texwatch(store: Path) -> None:
    writer = RunWriter.open(store, run="plain")
    writer.append(SCALARS, _scalars(np.arange(7), **{"term/v": np.arange(7.0)}))
    writer.append("latents", _latents(np.arange(3)))
    writer.commit()
    group = zarr.open_group(store, mode="r")
    attrs: dict[str, Any] = group.attrs.asdict()
    assert attrs["schema_version"] == SCHEMA_VERSION
    for path in ("scalars/term/v", "scalars/loss", "latents/data"):
        rows = attrs["committed"][path.split("/")[0]]
        plain = group[path]
        assert isinstance(plain, zarr.Array)
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / path)}}
        independent = ts.open(spec).result()
        np.testing.assert_array_equal(independent[:rows].read().result(), plain[:rows])
        if path == "scalars/term/v":
            np.testing.assert_array_equal(plain[:rows], np.arange(7.0))


def test_resume_appends_and_latest_row_wins(store: Path) -> None:
    writer = RunWriter.open(store, run="r")
    writer.append(SCALARS, _scalars(np.arange(100)))
    writer.append("latents", _latents(np.arange(0, 100, 10)))
    writer.commit()
    writer.close()
    resumed = RunWriter.open(store, run="r", config={"resumed": True})
    assert resumed.committed() == {SCALARS: 100, "latents": 10}
    spec = resumed.stream_spec("latents")
    assert spec is not None and spec.shape == (4, 8, 8)
    steps = np.arange(50, 120)
    resumed.append(SCALARS, _scalars(steps, loss=steps * -1.0))
    resumed.append("latents", _latents(np.array([50, 60])))
    resumed.commit()
    run = open_run(store)
    assert run.config == {"resumed": True}
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(120))
    np.testing.assert_array_equal(cols["loss"][:50], np.arange(50) * 0.5)
    np.testing.assert_array_equal(cols["loss"][50:], np.arange(50, 120) * -1.0)
    assert run.scalars(latest_wins=False)["step"].shape == (170,)
    got, _ = run.stream("latents")
    assert got.tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 50, 60]
    at_steps, data = run.stream_at("latents", [60, 0, 999])
    assert at_steps.tolist() == [0, 60] and data.shape == (2, 4, 8, 8)
    assert run.stream("latents", start=11)[0].tolist() == [60]


def test_latest_rows() -> None:
    assert latest_rows(np.array([0, 1, 2, 1, 2, 3])).tolist() == [0, 3, 4, 5]
    assert latest_rows(np.array([5, 5, 5])).tolist() == [2]
    assert latest_rows(np.zeros(0, np.int64)).tolist() == []


def test_checkpoint_steps_use_the_latest_row(store: Path) -> None:
    writer = RunWriter.open(store)
    ckpt = np.full(6, np.nan)
    ckpt[[0, 4]] = 1.0
    writer.append(SCALARS, _scalars(np.arange(6), checkpoint=ckpt))
    writer.append(SCALARS, _scalars(np.array([4, 5])))  # resumed run did not save at step 4
    writer.commit()
    assert open_run(store).checkpoint_steps() == [0]


@pytest.mark.parametrize(
    ("setup", "error", "match"),
    [
        ("missing", FileNotFoundError, "does not exist"),
        ("file", StoreFormatError, "is a file"),
        ("folder", StoreFormatError, "no zarr.json"),
        ("array", StoreFormatError, "not a Zarr v3 group"),
        ("plain", StoreFormatError, "not a texwatch run"),
        ("v2", StoreFormatError, "schema_version 2"),
    ],
)
def test_open_run_errors(store: Path, setup: str, error: type, match: str) -> None:
    store.parent.mkdir(parents=True)
    if setup == "file":
        store.write_text("x")
    elif setup == "folder":
        (store / "notes").mkdir(parents=True)
    elif setup == "array":
        zarr.create_array(store, shape=(3,), dtype="f8")
    elif setup == "plain":
        zarr.open_group(store, mode="w")
    elif setup == "v2":
        zarr.open_group(store, mode="w", attributes={"schema_version": 2})
    with pytest.raises(error, match=match) as raised:
        open_run(store)
    assert raised.value.path is not None and Path(raised.value.path).is_relative_to(store)


def test_writer_open_errors_leave_the_path_as_it_was(store: Path) -> None:
    store.parent.mkdir(parents=True)
    store.write_text("not a store")
    with pytest.raises(StoreFormatError, match="is a file"):
        RunWriter.open(store)
    assert store.read_text() == "not a store"
    store.unlink()
    (store / "data.bin").parent.mkdir()
    (store / "data.bin").write_bytes(b"1")
    with pytest.raises(StoreFormatError, match="not empty"):
        RunWriter.open(store)
    other = store.parent / "v9.zarr"
    zarr.open_group(other, mode="w", attributes={"schema_version": 9})
    with pytest.raises(StoreFormatError, match="schema_version 9"):
        RunWriter.open(other)
    with pytest.raises(TypeError, match="config must be JSON-serialisable"):
        RunWriter.open(store.parent / "c.zarr", config={"f": object()})
    with pytest.raises(ValueError, match="NaN"):
        RunWriter.open(store.parent / "c.zarr", config={"f": float("nan")})
    with pytest.raises(TypeError, match="config must be a dict"):
        RunWriter.open(store.parent / "c.zarr", config=[1])  # type: ignore[arg-type]
    assert not (store.parent / "c.zarr").exists()
    RunWriter.open(store.parent / "named.zarr", run="a")
    with pytest.raises(ValueError, match="holds run 'a'"):
        RunWriter.open(store.parent / "named.zarr", run="b")


def test_config_with_numpy_values_and_paths_is_stored_as_json(store: Path) -> None:
    RunWriter.open(store, config={"n": np.int64(3), "w": np.float32(0.5), "p": Path("/d")})
    assert open_run(store).config == {"n": 3, "w": 0.5, "p": "/d"}


def test_empty_folder_becomes_a_store(store: Path) -> None:
    store.mkdir(parents=True)
    RunWriter.open(store)
    assert open_run(store).committed() == {}


def test_append_errors(store: Path) -> None:
    writer = RunWriter.open(store)
    writer.append("latents", _latents(np.arange(2)))
    with pytest.raises(ValueError, match=r"rows of shape \(4, 8, 8\).*\(4, 4, 4\)"):
        writer.append("latents", {"step": np.array([2]), "data": np.zeros((1, 4, 4, 4))})
    with pytest.raises(ValueError, match="sharing their leading length"):
        writer.append(SCALARS, {"step": np.arange(3), "time": np.zeros(2)})
    with pytest.raises(ValueError, match="takes columns step"):
        writer.append("pred", {"step": np.arange(2), "data": np.zeros((2, 8, 8))})
    with pytest.raises(ValueError, match="may not live under"):
        writer.append("scalars/x", {"step": np.arange(1), "data": np.zeros((1, 1, 2, 2))})
    with pytest.raises(ValueError, match="DerivedWriter"):
        writer.append("derived", {"step": np.arange(1)})
    with pytest.raises(TypeError, match="must hold numbers"):
        writer.append(SCALARS, {"step": np.arange(2), "note": np.array(["a", "b"])})
    writer.append(SCALARS, _scalars(np.arange(2), **{"term/v": np.ones(2)}))
    with pytest.raises(ValueError, match="clashes"):
        writer.append(SCALARS, {"step": np.arange(1), "term": np.ones(1)})
    with pytest.raises(ValueError, match="clashes"):
        writer.append("latents/x", {"step": np.arange(1), "data": np.zeros((1, 1, 2, 2))})
    writer.commit()
    assert open_run(store).committed() == {"latents": 2, SCALARS: 2}


@pytest.mark.parametrize(
    "name",
    ["", "a b", "../x", ".hidden", "__x", "a//b", "x/zarr.json", "y.partial", "a/", "/a", "é"],
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="segments"):
        check_name(name, "stream")


def test_check_name_accepts_and_types() -> None:
    for name in ("loss", "term/v", "val/0", "lr.warmup", "a-b_c"):
        assert check_name(name, "x") == name
    with pytest.raises(TypeError, match="images key must be a str, got int"):
        check_name(3, "images key")


def test_reader_ranges_and_errors(store: Path) -> None:
    writer = RunWriter.open(store)
    writer.append(SCALARS, _scalars(np.arange(10)))
    writer.commit()
    run = open_run(store)
    assert run.scalars(3, 6)["step"].tolist() == [3, 4, 5]
    assert run.scalars(20)["step"].tolist() == []
    assert run.scalars(names=["loss"]).keys() == {"step", "time", "loss"}
    with pytest.raises(KeyError, match="nope"):
        run.scalars(names=["nope"])
    with pytest.raises(ValueError, match="start must be an int >= 0"):
        run.scalars(-1)
    with pytest.raises(KeyError, match="no image stream 'pred'"):
        run.stream("pred")
    with pytest.raises(KeyError, match="no derived table"):
        run.derived("latents")
    assert run.items()["sample_id"].dtype == np.int64 and run.items()["step"].size == 0
    assert run.batch(3)["loss"].size == 0 and run.checkpoint_steps() == []
    empty = RunWriter.open(store.parent / "empty.zarr")
    assert open_run(empty.path).scalars()["step"].dtype == np.int64


def test_per_rank_container(store: Path) -> None:
    for rank in (1, 0):
        writer = RunWriter.open(store, rank=rank, per_rank=True)
        writer.append(SCALARS, _scalars(np.arange(rank + 1)))
        writer.commit()
    assert run_paths(store) == [store / "rank0", store / "rank1"]
    assert open_run(store / "rank1").rank == 1
    assert open_run(store / "rank0").name == store.stem  # its ranks are named after the job
    # a rank's run named otherwise (older texwatch named it rank<r>) resumes under its name
    RunWriter.open(store, rank=2, per_rank=True, run="rank2").close()
    with RunWriter.open(store, rank=2, per_rank=True) as again:
        assert again.name == "rank2"
    steps = zarr.open_group(store, mode="r")["rank1/scalars/step"]
    assert isinstance(steps, zarr.Array) and steps.shape[0] > 0
    with pytest.raises(StoreFormatError, match="one run per rank"):
        open_run(store)
    single = store.parent / "single.zarr"
    RunWriter.open(single)
    assert run_paths(single) == [single]
    with pytest.raises(StoreFormatError, match="single run"):
        RunWriter.open(single, rank=0, per_rank=True)


def test_derived_writer_commits_cursor_and_state_without_touching_root(store: Path) -> None:
    writer = RunWriter.open(store)
    writer.append(SCALARS, _scalars(np.arange(8)))
    writer.commit()
    root_before = (store / "zarr.json").read_bytes()

    derived = DerivedWriter(store)
    assert (derived.cursor(), derived.state(), derived.committed()) == ({}, None, {})
    derived.append(SCALARS, {"step": np.arange(8), "loss_ema": np.linspace(0, 1, 8)})
    derived.append("latents", {"step": np.arange(2), "profile": np.ones((2, 16), np.float32)})
    derived.commit({SCALARS: 8}, state={"ema": float("nan"), "n": 8})
    assert (store / "zarr.json").read_bytes() == root_before

    run = open_run(store)
    assert run.derived_committed() == {SCALARS: 8, "latents": 2}
    assert run.derived_cursor() == {SCALARS: 8}
    state = run.derived_state()
    assert state is not None and np.isnan(state["ema"]) and state["n"] == 8
    assert run.derived("latents")["profile"].dtype == np.float32
    assert run.derived_columns(SCALARS) == ["step", "loss_ema"]

    again = DerivedWriter(store)
    assert again.cursor() == {SCALARS: 8} and again.state()["n"] == 8  # type: ignore[index]
    again.append(SCALARS, {"step": np.array([8]), "spike": np.array([1])})
    again.commit({SCALARS: 9})
    cols = open_run(store).derived(SCALARS)
    assert np.isnan(cols["loss_ema"][8]) and cols["spike"].tolist() == [-1] * 8 + [1]
    assert open_run(store).derived_state() is None


def test_derived_writer_resumes_at_committed_rows_after_a_crash(store: Path) -> None:
    RunWriter.open(store)
    first = DerivedWriter(store)
    first.append(SCALARS, {"step": np.arange(5), "z": np.arange(5.0)})
    first.commit({SCALARS: 5})
    first.append(
        SCALARS, {"step": np.arange(5, 9), "z": np.full(4, -7.0), "late": np.ones(4)}
    )  # killed before commit
    del first
    second = DerivedWriter(store)
    assert second.committed() == {SCALARS: 5} and second.cursor() == {SCALARS: 5}
    second.append(SCALARS, {"step": np.arange(5, 7), "z": np.array([5.0, 6.0])})
    second.commit({SCALARS: 7})
    cols = open_run(store).derived(SCALARS)
    np.testing.assert_array_equal(cols["step"], np.arange(7))  # no gap, no duplicate
    np.testing.assert_array_equal(cols["z"], np.arange(7.0))
    assert "late" not in cols
    third = DerivedWriter(store)
    third.append(SCALARS, {"step": np.array([7]), "late": np.array([2.0])})
    third.commit({SCALARS: 8})
    late = open_run(store).derived(SCALARS)["late"]
    assert np.isnan(late[:7]).all() and late[7] == 2.0  # the dead writer's rows are not back


def test_derived_writer_errors(store: Path) -> None:
    with pytest.raises(FileNotFoundError):
        DerivedWriter(store)
    RunWriter.open(store)
    derived = DerivedWriter(store)
    with pytest.raises(ValueError, match=">= 0"):
        derived.commit({SCALARS: -1})
    with pytest.raises(TypeError, match="state must be JSON"):
        derived.commit({}, state={"x": object()})


def test_each_commit_is_one_write_of_the_marker(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader must never see `committed` without the `tables` (or cursor, state) beside it."""
    published: list[tuple[str, dict[str, Any]]] = []
    replace = Path.replace

    def spy(self: Path, target: Any) -> Any:
        if Path(target).name == "zarr.json" and Path(target).parent.name in (store.name, DERIVED):
            attrs = json.loads(self.read_text()).get("attributes", {})
            published.append((Path(target).parent.name, attrs))
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", spy)
    writer = RunWriter.open(store)
    published.clear()
    writer.append(SCALARS, {"step": np.arange(3), "time": np.zeros(3), "loss": np.ones(3)})
    writer.commit(drops={"latents": 1})
    assert len(published) == 1
    attrs = published[0][1]
    assert attrs["committed"] == {SCALARS: 3} and attrs["drops"] == {"latents": 1}
    assert attrs["tables"][SCALARS] == ["step", "time", "loss"]

    derived = DerivedWriter(store)
    published.clear()
    derived.append(SCALARS, {"step": np.arange(3), "loss_ema": np.ones(3)})
    derived.commit({SCALARS: 3}, state={"ema": 1.0})
    assert [where for where, _ in published] == [DERIVED]
    attrs = published[0][1]
    assert attrs["committed"] == {SCALARS: 3} and attrs["cursor"] == {SCALARS: 3}
    assert json.loads(attrs["state"]) == {"ema": 1.0} and SCALARS in attrs["tables"]


def _chunked_latents(store: Path, rows: int = 200) -> Path:
    """A run whose latents (4x32x32 float32, 64 rows per chunk) span several chunk files."""
    writer = RunWriter.open(store)
    data = np.random.default_rng(0).standard_normal((rows, 4, 32, 32)).astype(np.float32)
    writer.append("latents", {"step": np.arange(rows), "data": data})
    writer.append(SCALARS, _scalars(np.arange(rows)))
    writer.commit()
    return store / "latents" / "data"


def test_a_truncated_chunk_is_a_corrupt_chunk_error_naming_the_file(store: Path) -> None:
    chunk = _chunked_latents(store) / "c.2.0.0.0"
    chunk.write_bytes(chunk.read_bytes()[:100])
    run = open_run(store)
    assert run.stream("latents", 0, 128)[1].shape == (128, 4, 32, 32)  # rows before it still read
    for read in (lambda: run.stream("latents", 64, 200), lambda: run.stream_at("latents", [150])):
        with pytest.raises(CorruptChunkError, match="c.2.0.0.0") as raised:
            read()
        assert raised.value.path == str(chunk) and raised.value.kind == "corrupt_chunk"
        assert str(store / "latents" / "data" / "c.2.0.0.0") in str(raised.value)


def test_an_unreadable_chunk_is_a_store_read_error_naming_the_file(store: Path) -> None:
    chunk = _chunked_latents(store) / "c.1.0.0.0"
    chunk.unlink()
    chunk.symlink_to(chunk.name)  # a link to itself: reading it fails with an OSError (ELOOP)
    with pytest.raises(StoreReadError, match="c.1.0.0.0") as raised:
        open_run(store).stream("latents")
    assert raised.value.path == str(chunk) and raised.value.kind == "read"


def test_garbage_metadata_is_a_corrupt_chunk_error_naming_the_file(store: Path) -> None:
    folder = _chunked_latents(store)
    DerivedWriter(store).commit({SCALARS: 0})
    run = open_run(store)
    (folder / "zarr.json").write_text('{"zarr_format": 3 "node_type"')
    with pytest.raises(CorruptChunkError, match="zarr.json") as raised:
        run.stream("latents")
    assert raised.value.path == str(folder / "zarr.json")
    derived = store / DERIVED / "zarr.json"
    derived.write_text('{"attributes": {"cursor": 1 "state"')
    for read in (run.derived_cursor, run.derived_committed, run.derived_state):
        with pytest.raises(CorruptChunkError, match="Expecting ',' delimiter") as raised:
            read()
        assert raised.value.path == str(derived) and str(derived) in str(raised.value)


def test_a_store_deleted_under_the_reader_is_store_missing(store: Path) -> None:
    _chunked_latents(store)
    run = open_run(store)
    for p in sorted(store.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    store.rmdir()
    with pytest.raises(StoreMissingError) as raised:
        run.stream("latents")
    assert raised.value.path == str(store)
