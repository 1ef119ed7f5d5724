"""The in-process client: round trips, copies without syncs, sampling, back-pressure, errors."""

from __future__ import annotations

import errno
import inspect
import math
import os
import random
import re
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import texwatch.client as tw
from texwatch.client import (
    DEFAULT_EVERY,
    DEFAULT_MAX_ITEMS,
    Recorder,
    RecorderOptions,
    WriterError,
    detect_rank,
)
from texwatch.client._capture import BufferPool
from texwatch.client._names import RESERVED, escaped
from texwatch.detectors import MAX_TERMS
from texwatch.store import (
    ITEMS,
    LOSS_NAN,
    MAX_NAME,
    OVER_CAP,
    SCALARS,
    RunWriter,
    StoreFormatError,
    check_name,
    given_nan,
    logged_name,
    open_run,
    run_paths,
)

pytestmark = pytest.mark.usefixtures("no_default_recorder")


def test_round_trip_of_every_argument(path: Path) -> None:
    rng = np.random.default_rng(0)
    z0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    pred = torch.randn(2, 3, 16, 16, dtype=torch.bfloat16, requires_grad=True) * 1
    target = rng.random((3, 16, 16))  # (C, H, W) float64
    per_item = torch.arange(1.0, 5.0, requires_grad=True) * 1  # (B,) per-item loss
    with Recorder(path, run="rt", config={"a": 1}, every={"pred": 1, "target": 1}) as rec:
        rec.record(
            0,
            per_item,
            latents=z0,
            pred=pred,
            target=target,
            images={"val/0": np.ones((1, 3, 4, 5), np.float32)},
            terms={"v": torch.tensor(0.25), "lpips": 0.5},
            weights={"v": 1, "lpips": np.float32(0.125)},
            scalars={"lr": 1e-4, "grad_norm": torch.tensor(3.0, dtype=torch.float64)},
            sample_ids=torch.tensor([10, 11, 12, 13]),
            timesteps=np.array([1.0, 250.0, 500.0, 999.0]),
            checkpoint=True,
        )
        rec.record(np.int64(1), 2.0)

    run = open_run(path)
    assert (run.name, run.config) == ("rt", {"a": 1})
    assert run.committed() == {
        SCALARS: 2,
        ITEMS: 4,
        "latents": 4,
        "pred": 2,
        "target": 1,
        "val/0": 1,
    }
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], [0, 1])
    np.testing.assert_array_equal(cols["loss"], [2.5, 2.0])
    np.testing.assert_array_equal(cols["term/v"], [0.25, np.nan])
    np.testing.assert_array_equal(cols["weight/lpips"], [0.125, np.nan])
    np.testing.assert_array_equal(cols["scalars" if False else "lr"], [1e-4, np.nan])
    np.testing.assert_array_equal(cols["grad_norm"], [3.0, np.nan])
    np.testing.assert_array_equal(cols["checkpoint"], [1.0, np.nan])
    assert run.checkpoint_steps() == [0]
    items = run.items()
    np.testing.assert_array_equal(items["step"], [0, 0, 0, 0])
    np.testing.assert_array_equal(items["loss"], [1, 2, 3, 4])
    np.testing.assert_array_equal(items["timestep"], [1, 250, 500, 999])
    np.testing.assert_array_equal(items["sample_id"], [10, 11, 12, 13])
    steps, data = run.stream("latents")
    assert data.dtype == np.float16 and steps.tolist() == [0, 0, 0, 0]
    np.testing.assert_array_equal(data, z0[:4].numpy())  # first max_items=4 items
    _, data = run.stream("pred")
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, pred.detach().float().numpy())
    _, data = run.stream("target")
    assert data.shape == (1, 3, 16, 16) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], target.astype(np.float32))
    assert run.stream("val/0")[1].shape == (1, 3, 4, 5)


def test_copies_are_taken_at_record_time(path: Path) -> None:
    big = torch.ones(4, 4, 64, 64)  # 256 KiB: a pooled buffer
    small = np.ones((1, 2, 4, 4), np.float32)
    loss = torch.tensor(1.0)
    with Recorder(path, flush_interval=60.0) as rec:
        rec.record(0, loss, latents=big, images={"s": small})
        big.fill_(7.0)
        small[:] = 7.0
        loss.fill_(7.0)
        rec.record(1, loss, latents=big, images={"s": small})
    run = open_run(path)
    np.testing.assert_array_equal(run.scalars()["loss"], [1.0, 7.0])
    _, data = run.stream("latents")
    assert (data[:4] == 1.0).all() and (data[4:] == 7.0).all()
    _, data = run.stream("s")
    assert data[0].max() == 1.0 and data[1].min() == 7.0


class _Spy(torch.Tensor):
    """Logs every torch function called on it, with the calling thread."""

    calls: list[tuple[str, int]] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        _Spy.calls.append((getattr(func, "__name__", str(func)), threading.get_ident()))
        return super().__torch_function__(func, types, args, kwargs or {})


def test_no_python_float_is_taken_on_the_training_thread(path: Path) -> None:
    _Spy.calls.clear()
    loss = torch.tensor(0.75).as_subclass(_Spy)
    term = torch.tensor(0.5).as_subclass(_Spy)
    with Recorder(path) as rec:
        rec.record(0, loss, terms={"v": term})
        on_caller = {name for name, thread in _Spy.calls if thread == threading.get_ident()}
    assert on_caller and not on_caller & {"item", "__float__", "tolist", "__bool__", "__int__"}
    cols = open_run(path).scalars()
    assert (cols["loss"][0], cols["term/v"][0]) == (0.75, 0.5)


def test_sampling_defaults_and_overrides(path: Path) -> None:
    assert DEFAULT_EVERY == {"latents": 1, "pred": 100, "target": 100}
    assert DEFAULT_MAX_ITEMS == {"latents": 4, "pred": 4, "target": 4}
    pred = np.zeros((6, 3, 4, 4), np.float32)
    latents = np.zeros((6, 4, 2, 2), np.float32)
    user = np.zeros((6, 1, 2, 2), np.float32)
    with Recorder(path) as rec:
        for step in range(201):
            rec.record(step, latents=latents, pred=pred, images={"u": user} if step < 3 else None)
    run = open_run(path)
    assert np.unique(run.stream("pred")[0]).tolist() == [0, 100, 200]
    assert run.committed()["pred"] == 12 and run.committed()["latents"] == 201 * 4
    assert run.committed()["u"] == 3 * 4

    other = path.parent / "y.zarr"
    with Recorder(other, every={"pred": 50, "u": 2}, max_items=1) as rec:
        for step in range(101):
            rec.record(step, latents=latents, pred=pred, images={"u": user})
    run = open_run(other)
    assert run.stream("pred")[0].tolist() == [0, 50, 100]
    assert run.committed()["latents"] == 101 and run.committed()["u"] == 51

    third = path.parent / "z.zarr"
    with Recorder(third, max_items={"latents": 2}) as rec:
        rec.record(0, latents=latents, pred=pred)
    assert open_run(third).committed() == {SCALARS: 1, "latents": 2, "pred": 4}


def _bad_calls() -> list[tuple[dict[str, Any], type[Exception], str]]:
    x = np.zeros((1, 4, 8, 8), np.float32)
    return [
        ({"step": -1}, ValueError, "step must be >= 0"),
        ({"step": 1.5}, TypeError, "step must be an int"),
        ({"step": True}, TypeError, "step must be an int"),
        ({"step": "3"}, TypeError, "step must be an int"),
        ({"step": torch.tensor(3)}, TypeError, "Python int"),
        ({"loss": "x"}, TypeError, "loss must be a torch.Tensor"),
        ({"loss": True}, TypeError, "loss must be a number"),
        ({"loss": torch.ones(2, 2)}, ValueError, r"loss must be a scalar or a 1-D"),
        ({"loss": torch.zeros(0)}, ValueError, "loss is empty"),
        ({"loss": np.array([1 + 2j])}, TypeError, "real numbers"),
        ({"latents": torch.zeros(8, 8)}, ValueError, r"\(B, C, H, W\) or \(C, H, W\)"),
        ({"latents": torch.zeros(0, 4, 8, 8)}, ValueError, "latents is empty"),
        ({"latents": torch.zeros(1, 4, 4, 4)}, ValueError, r"created with \(4, 8, 8\)"),
        ({"latents": torch.zeros(1, 4, 8, 8, dtype=torch.bool)}, TypeError, "float or integer"),
        ({"latents": "img"}, TypeError, "latents must be a torch.Tensor"),
        ({"images": [x]}, TypeError, "images must be a dict"),
        ({"images": {3: x}}, TypeError, "images keys must be str"),
        ({"images": {"v": np.zeros((1, 3, 8, 3))}}, ValueError, "could be first or last"),
        ({"images": {"v": x}, "dataformats": "NCWH"}, ValueError, "dataformats must be one of"),
        ({"images": {"v": x}, "dataformats": "CHW"}, ValueError, "names 3 axes"),
        ({"images": {"v": x}, "dataformats": {"w": "NCHW"}}, ValueError, "not an images key"),
        ({"images": {"v": x}, "dataformats": 4}, TypeError, "dataformats must be a str"),
        ({"dataformats": "NCHW"}, ValueError, "dataformats is given without images"),
        ({"images": {"v": []}}, ValueError, "empty list"),
        ({"images": {"v": [x[0], x[0, :3]]}}, ValueError, "different shapes"),
        ({"images": {"v": [x[0], "y"]}}, TypeError, "holds a str"),
        ({"images": {"v": [x[0]]}, "dataformats": "NCHW"}, ValueError, "one image's layout"),
        ({"terms": [1.0]}, TypeError, "terms must be a dict"),
        ({"terms": {"v": torch.ones(2, 2)}}, ValueError, r"terms\['v'\] must be a scalar"),
        ({"weights": {"v": torch.ones(3)}}, ValueError, r"weights\['v'\] must be a scalar \(0-d\)"),
        ({"scalars": {3: 1.0}}, TypeError, "scalars keys must be str"),
        ({"scalars": {"x": "high"}}, TypeError, r"scalars\['x'\] must be"),
        ({"sample_ids": np.array([0.5, 1.5])}, TypeError, "sample_ids must hold integers"),
        ({"sample_ids": np.zeros((2, 2), int)}, ValueError, "sample_ids must be a non-empty 1-D"),
        ({"sample_ids": np.arange(4), "timesteps": np.arange(3)}, ValueError, "disagree"),
        ({"loss": torch.ones(3), "sample_ids": np.arange(4)}, ValueError, "disagree"),
        ({"checkpoint": "yes"}, TypeError, "checkpoint must be a bool"),
    ]


def test_bad_input_raises_and_records_nothing(path: Path) -> None:
    good = np.zeros((2, 4, 8, 8), np.float32)
    with Recorder(path) as rec:
        rec.record(0, 1.0, latents=good)
        for call, error, match in _bad_calls():
            kwargs: dict[str, Any] = {
                "step": 1,
                "loss": 2.0,
                "latents": good,
                "scalars": {"fresh": 1.0},
            } | call
            with pytest.raises(error, match=match):
                rec.record(**kwargs)
        rec.flush()
        assert rec.stats.recorded == 1
    run = open_run(path)
    assert run.committed() == {SCALARS: 1, "latents": 2}
    assert run.scalar_names() == ["loss"]  # 'fresh' was never registered


def test_escaped_keeps_accepted_names_and_maps_what_users_log() -> None:
    for name in ("train/loss", "lr-AdamW", "lr/unet", "val.acc", "a_b/c-d.e"):
        assert escaped(name, "scalars") == name
    assert escaped("lr/d*lr/unet", "scalars") == "lr/d_lr/unet"  # kohya-ss
    assert escaped("val acc", "scalars") == "val_acc"
    assert escaped("/a//b/", "scalars") == "a/b" and escaped("", "scalars") == "_"
    assert escaped(".hidden/__x/-y", "scalars") == "_.hidden/_x/_-y"
    assert escaped("zarr.json/x.partial", "scalars") == "zarr_json/x_partial"
    assert escaped("loss/current", "scalars") == "loss_/current"
    assert escaped("warn", "scalars") == "warn_"  # a column texwatchd derives
    assert escaped("term/v", "scalars") == "term_/v" and escaped("term", "terms") == "term"
    assert escaped("pred", "images") == "pred_" and escaped("pred", "scalars") == "pred"
    long = escaped("x" * 300, "scalars")
    assert len(long) == MAX_NAME and long != escaped("x" * 301, "scalars")
    assert len(escaped("x" * 300, "terms")) == MAX_NAME - len(given_nan("term/"))


def test_escaped_names_are_taken_by_the_store_for_any_key() -> None:
    rng = random.Random(0)
    alphabet = "ab_.-/ *:é\t0" + "zarr.json" + ".partial"
    for _ in range(20000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        for kind in ("scalars", "terms", "images"):
            stored = escaped(key, kind)  # type: ignore[arg-type]
            check_name(stored, "name")
            assert stored.split("/")[0] not in RESERVED[kind]  # type: ignore[index]


def test_keys_users_log_are_stored_escaped_apart_and_kept_by_their_original_name(
    path: Path,
) -> None:
    image = np.zeros((3, 2, 2))
    logged = {"lr/d*lr/unet": 1.0, "loss/current": 2.0, "val acc": 3.0, "d?lr": 4.0, "lr": 5.0}
    with Recorder(path) as rec:
        rec.record(0, scalars=logged, terms={"mse loss": 0.5}, images={"val": image})
        # a taken name, or one inside a taken name, gets a name of its own
        rec.record(1, scalars={"d_lr": 6.0, "lr/warm": 7.0}, images={"val/0": image})
        # a term and its weight share one name
        rec.record(2, weights={"mse loss": 2.0}, images={"latents": image})
        renamed = rec.renamed
    # "lr" would hold lr/d_lr/unet
    hashed = {k: v for k, v in renamed["scalars"].items() if k in ("d_lr", "lr")}
    assert renamed == {
        "scalars": {
            "lr/d*lr/unet": "lr/d_lr/unet",
            "loss/current": "loss_/current",
            "val acc": "val_acc",
            "d?lr": "d_lr",
            **hashed,
        },
        "terms": {"mse loss": "mse_loss"},
        "images": {"val/0": renamed["images"]["val/0"], "latents": "latents_"},
    }
    assert re.fullmatch(r"d_lr-[0-9a-f]{8}", hashed["d_lr"])
    assert re.fullmatch(r"lr-[0-9a-f]{8}", hashed["lr"])
    assert re.fullmatch(r"val_0-[0-9a-f]{8}", renamed["images"]["val/0"])
    run = open_run(path)
    cols = run.scalars()
    for key, value in {**logged, "d_lr": 6.0, "lr/warm": 7.0}.items():
        column = renamed["scalars"].get(key, key)
        assert np.nanmax(cols[column]) == value
        assert logged_name(run.names(), column) == key
    assert cols["weight/mse_loss"][2] == 2.0 and cols["term/mse_loss"][0] == 0.5
    assert logged_name(run.names(), "weight/mse_loss") == "weight/mse loss"
    assert logged_name(run.names(), "latents_", stream=True) == "latents"
    assert sorted(run.stream_names()) == sorted(["val", renamed["images"]["val/0"], "latents_"])
    # a resumed recorder stores every key under the name it had, and names new ones apart
    with Recorder(path) as rec:
        rec.record(3, scalars={"d_lr": 8.0, "d*lr": 9.0}, images={"val/0": image})
        assert rec.renamed["scalars"]["d_lr"] == hashed["d_lr"]
        assert rec.renamed["scalars"]["d*lr"] not in (hashed["d_lr"], "d_lr")
    assert open_run(path).scalars()[hashed["d_lr"]][3] == 8.0
    assert open_run(path).committed()[renamed["images"]["val/0"]] == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": {"pred": 0}}, ValueError, r"every\['pred'\] must be >= 1"),
        ({"every": 5}, TypeError, "every must be a dict"),
        ({"every": {"pred": 1.5}}, TypeError, r"every\['pred'\] must be an int"),
        ({"max_items": 0}, ValueError, "max_items must be >= 1"),
        ({"max_items": {3: 1}}, TypeError, "max_items keys must be str"),
        ({"flush_interval": 0}, ValueError, "flush_interval must be finite and > 0"),
        ({"flush_interval": "1"}, TypeError, "flush_interval must be a number"),
        ({"max_wait": -1.0}, ValueError, "max_wait must be finite and >= 0"),
        ({"queue_size": 0}, ValueError, "queue_size must be >= 1"),
        ({"all_ranks": "yes"}, TypeError, "all_ranks must be a bool"),
        ({"run": ""}, TypeError, "run must be a non-empty str"),
        ({"config": {"x": object()}}, TypeError, "config must be JSON"),
    ],
)
def test_bad_init_arguments(path: Path, kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Recorder(path, **kwargs)
    assert not path.exists()


def test_options_are_one_declaration_shared_by_recorder_and_init(path: Path) -> None:
    with pytest.raises(
        TypeError, match=r"Recorder\(\): unknown option 'flush'; expected one of run"
    ):
        Recorder(path, flush=1.0)
    with pytest.raises(TypeError, match=r"init\(\): unknown option 'durabel'"):
        tw.init(path, durabel=True)
    with pytest.raises(TypeError, match="options must be a RecorderOptions, got dict"):
        Recorder(path, options={"run": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"every\['pred'\] must be >= 1"):
        RecorderOptions(every={"pred": 0})
    assert not path.exists()
    shared = RecorderOptions(run="base", every={"latents": 2})
    with Recorder(path, options=shared, run="mine") as rec:  # keywords override the object
        for step in range(4):
            rec.record(step, 1.0, latents=np.ones((1, 4, 2, 2), np.float32))
    run = open_run(path)
    assert run.name == "mine" and run.stream("latents")[0].tolist() == [0, 2]
    assert shared.run == "base"


def test_bad_store_paths(path: Path) -> None:
    with pytest.raises(ValueError, match="TEXWATCH_STORE is not set"):
        Recorder()
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        Recorder(3)  # type: ignore[arg-type]
    path.parent.mkdir(parents=True)
    path.write_text("x")
    with pytest.raises(StoreFormatError, match="is a file"):
        Recorder(path)
    assert path.read_text() == "x"
    other = path.parent / "v2.zarr"
    zarr.open_group(other, mode="w", attributes={"schema_version": 2})
    with pytest.raises(ValueError, match="schema_version 2"):
        tw.init(other)


def test_nonfinite_values_are_recorded_faithfully_and_counted(path: Path) -> None:
    latents = np.zeros((3, 2, 2, 2), np.float32)
    latents[1, 0, 0, 0] = np.nan
    latents[2, 1, 1, 1] = np.inf
    with Recorder(path) as rec:
        rec.record(0, float("nan"), terms={"v": float("inf")}, latents=latents)
        rec.record(1, torch.tensor(float("-inf")), terms={"v": 1.0})
        rec.record(2, torch.tensor([1.0, float("nan")]))
    run = open_run(path)
    loss = run.scalars()["loss"]
    assert np.isnan(loss[0]) and loss[1] == -np.inf and np.isnan(loss[2])
    assert run.scalars()["term/v"][0] == np.inf
    data = run.stream("latents")[1]
    assert np.isnan(data[1, 0, 0, 0]) and data[2, 1, 1, 1] == np.inf
    assert run.nonfinite() == {"loss": 3, "term/v": 1, "latents": 2}
    assert np.isnan(run.items()["loss"][1])
    # A given NaN loss is marked, so readers can tell it from a row recorded without a loss.
    with Recorder(path) as rec:
        rec.record(3, scalars={"lr": 0.1})
    np.testing.assert_array_equal(run.scalars()[LOSS_NAN], [1.0, np.nan, 1.0, np.nan])


def test_a_nan_term_is_marked_apart_from_an_absent_one(path: Path) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0, terms={"v": 0.5, "edge": math.nan})
        rec.record(1, 1.0, terms={"v": 0.4})  # edge not computed this step
    scalars = open_run(path).scalars()
    assert np.isnan(scalars["term/edge"]).all()
    np.testing.assert_array_equal(scalars[given_nan("term/edge")], [1.0, np.nan])
    assert given_nan("term/v") not in scalars


def test_memory_budget_drops_images_but_keeps_scalars(path: Path) -> None:
    with (
        pytest.warns(RuntimeWarning, match="max_pending_bytes") as warned,
        Recorder(path, max_pending_bytes=0) as rec,
    ):
        for step in range(3):
            rec.record(step, 1.0, latents=np.ones((2, 4, 8, 8), np.float32))
    assert len([w for w in warned if "texwatch" in str(w.message)]) == 1
    run = open_run(path)
    assert run.committed() == {SCALARS: 3}
    assert run.drops() == {"latents": 6} and rec.stats.drops == {"latents": 6}


@pytest.fixture()
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Hold the writer thread inside its first ``RunWriter.append`` until ``gate`` opens."""
    entered, gate = threading.Event(), threading.Event()
    original = RunWriter.append

    def held(self: RunWriter, table: str, columns: Any) -> None:
        entered.set()
        gate.wait(10.0)
        original(self, table, columns)

    monkeypatch.setattr(RunWriter, "append", held)
    yield entered, gate
    gate.set()


def test_full_queue_drops_images_first_then_scalars(
    path: Path, gate: tuple[threading.Event, threading.Event]
) -> None:
    entered, release = gate
    rec = Recorder(path, queue_size=2, max_wait=0.0, flush_interval=0.01)
    rec.record(0, 1.0)
    assert entered.wait(5.0)  # the writer is stuck writing row 0
    with pytest.warns(RuntimeWarning, match="queue is full") as warned:
        for step in range(1, 6):
            rec.record(
                step,
                1.0,
                latents=np.ones((2, 4, 8, 8), np.float32),
                sample_ids=[2 * step, 2 * step + 1],
            )
    assert len([w for w in warned if "texwatch" in str(w.message)]) == 1
    with pytest.raises(TimeoutError, match="flush"):
        rec.flush(timeout=0.05)
    release.set()
    rec.close()
    run = open_run(path)
    assert run.scalars()["step"].tolist() == [0, 1, 2]
    assert run.stream("latents")[0].tolist() == [1, 1, 2, 2]
    assert run.drops() == {"latents": 6, SCALARS: 3, ITEMS: 6}


def test_writer_error_is_counted_warned_once_and_raised_by_flush_and_close(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RunWriter.append

    def no_space_for_images(self: RunWriter, table: str, columns: Any) -> None:
        if table == "latents":
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, table, columns)

    monkeypatch.setattr(RunWriter, "append", no_space_for_images)
    rec = Recorder(path)
    latents = np.ones((2, 4, 8, 8), np.float32)
    rec.record(0, 1.0, latents=latents)
    with pytest.raises(WriterError, match="1 write") as raised:
        rec.flush()
    assert isinstance(raised.value.__cause__, OSError)
    assert raised.value.__cause__.errno == errno.ENOSPC
    rec.flush()  # nothing new: no error
    with pytest.warns(RuntimeWarning, match="failed; training continues") as warned:
        rec.record(1, 2.0, latents=latents)
        rec.record(2, 3.0, latents=latents)
    assert len([w for w in warned if "texwatch" in str(w.message)]) == 1
    with pytest.raises(WriterError, match="close"):
        rec.close()
    rec.close()  # a second close neither raises nor hangs
    run = open_run(path)
    assert run.scalars()["step"].tolist() == [0, 1, 2]  # scalars survived without the images
    assert run.drops() == {"latents": 6} and run.errors() == 2
    assert "latents" not in run.committed()


def test_total_write_failure_never_reaches_the_training_thread(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(path)
    for step in range(10):
        rec.record(step, float(step))
    rec.flush()

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunWriter, "append", full)
    monkeypatch.setattr(RunWriter, "commit", full)
    for step in range(10, 20):
        rec.record(step, float(step))
    with pytest.raises(WriterError):
        rec.flush()
    with pytest.warns(RuntimeWarning, match="failed"):
        rec.record(20, 1.0)
    with pytest.raises(WriterError):
        rec.close()
    assert rec.stats.errors >= 1 and rec.stats.drops[SCALARS] >= 10
    run = open_run(path)
    np.testing.assert_array_equal(run.scalars()["loss"], np.arange(10.0))


def test_resume_continues_the_run_and_its_counters(path: Path) -> None:
    small = np.zeros((1, 2, 4, 4), np.float32)
    with Recorder(path, run="r") as rec:
        for step in range(100):
            rec.record(step, float(step), latents=small)
        rec.record(100, float("nan"))
    with Recorder(path, run="r") as rec:
        for step in range(50, 150):
            rec.record(step, -float(step))
        rec.record(150, float("inf"))
        with pytest.raises(ValueError, match="created with"):
            rec.record(151, latents=np.zeros((1, 2, 8, 8)))
    with pytest.raises(ValueError, match="holds run 'r'"):
        Recorder(path, run="other")
    run = open_run(path)
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(151))
    np.testing.assert_array_equal(cols["loss"][:50], np.arange(50.0))
    np.testing.assert_array_equal(cols["loss"][50:150], -np.arange(50.0, 150.0))
    assert run.nonfinite() == {"loss": 2} and run.committed()["latents"] == 100


def test_two_threads_record_into_one_recorder(path: Path) -> None:
    with Recorder(path, queue_size=100_000) as rec:

        def work(parity: int) -> None:
            for step in range(parity, 2000, 2):
                rec.record(
                    step,
                    float(step),
                    scalars={"thread": float(parity)},
                    latents=np.full((1, 2, 4, 4), step, np.float32),
                )

        threads = [threading.Thread(target=work, args=(p,)) for p in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    run = open_run(path)
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(2000))
    np.testing.assert_array_equal(cols["loss"], np.arange(2000.0))
    np.testing.assert_array_equal(cols["thread"], np.arange(2000) % 2)
    steps, data = run.stream("latents")
    np.testing.assert_array_equal(data[:, 0, 0, 0], steps)
    assert sorted(steps.tolist()) == list(range(2000)) and run.drops() == {}


def test_rows_become_visible_within_the_flush_interval(path: Path) -> None:
    with Recorder(path, flush_interval=0.05) as rec:
        for step in range(50):
            rec.record(step, 1.0)
        deadline = time.monotonic() + 10.0
        while open_run(path).committed().get(SCALARS, 0) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert open_run(path).committed()[SCALARS] == 50
        for step in range(50, 1000):
            rec.record(step, 1.0)
        rec.flush()
        assert open_run(path).committed()[SCALARS] == 1000
        assert rec.stats.committed[SCALARS] == 1000


def test_module_api_lazy_init_and_close(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="before init"):
        tw.record(0, 1.0)
    monkeypatch.setenv("TEXWATCH_STORE", str(path))
    tw.record(0, 1.0)
    recorder = tw.get_recorder()
    assert recorder is not None and recorder.path == path
    tw.flush()
    assert open_run(path).committed() == {SCALARS: 1}
    second = path.parent / "second.zarr"
    replaced = tw.init(second, run="second", config={"k": 1})
    assert recorder.closed and tw.get_recorder() is replaced
    image = np.zeros((8, 8, 3), np.uint8)
    tw.record(0, 2.0, images={"val img": image}, dataformats="HWC")
    tw.close()
    tw.close()
    assert tw.get_recorder() is None and open_run(second).name == "second"
    assert open_run(second).stream_spec("val_img").shape == (3, 8, 8)
    tw.flush()  # nothing to flush: no error
    # the module's record() takes what Recorder.record() takes, in the same order
    method = list(inspect.signature(Recorder.record).parameters.values())[1:]
    assert list(inspect.signature(tw.record).parameters.values()) == method


def test_close_is_idempotent_and_record_after_close_fails(path: Path) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0)
    assert rec.closed and rec.stats.committed == {SCALARS: 1}
    rec.close()
    rec.flush()
    with pytest.raises(RuntimeError, match="closed"):
        rec.record(1, 1.0)
    assert "closed" in repr(rec)


def test_only_rank_zero_records_unless_all_ranks(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    assert detect_rank() == 1
    with Recorder(path) as rec:
        assert not rec.active
        rec.record(0, 1.0)
        rec.flush()
    assert not path.exists()
    with Recorder(path, all_ranks=True) as rec:
        rec.record(0, 1.0)
    assert run_paths(path) == [path / "rank1"] and open_run(path / "rank1").rank == 1
    monkeypatch.setenv("RANK", "0")
    other = path.parent / "zero.zarr"
    with Recorder(other) as rec:
        rec.record(0, 1.0)
    assert open_run(other).rank == 0
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK must be an int"):
        Recorder(other)
    with Recorder(other, rank=0) as rec:
        assert rec.active


def test_stats_snapshot(path: Path) -> None:
    with Recorder(path) as rec:
        rec.record(0, 1.0, latents=np.zeros((1, 1, 2, 2)))
        rec.flush()
        stats = rec.stats
    assert stats.recorded == 1 and stats.committed == {SCALARS: 1, "latents": 1}
    assert stats.errors == 0 and stats.drops == {} and stats.pending_bytes == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "Recorder(" in repr(rec)


# --- issue #16: validation once per call signature ----------------------------------------------


def _signature_changes() -> list[tuple[dict[str, Any], dict[str, Any], type[Exception], str]]:
    """(a call whose signature gets cached, the same call with one thing changed, error)."""
    t = torch.tensor(0.5)
    x = torch.zeros(2, 4, 8, 8)
    return [
        ({"terms": {"v": t}}, {"terms": {"v": t, ("a", "b"): t}}, TypeError, "keys must be str"),
        ({"images": {"u": x}}, {"images": {"u": x}, "dataformats": "NHWC"}, ValueError, "created"),
        ({"images": {"u": x}}, {"images": {"u": x}, "dataformats": {"u": "N"}}, ValueError, "of"),
        ({"latents": x}, {"latents": torch.zeros(2, 4, 4, 4)}, ValueError, "created with"),
        ({"loss": t}, {"loss": torch.ones(2, 2)}, ValueError, "scalar or a 1-D"),
        ({"loss": t}, {"loss": torch.ones(1, dtype=torch.complex64)}, TypeError, "real numbers"),
        ({"latents": x}, {"latents": x.bool()}, TypeError, "float or integer"),
        ({"loss": 1.0}, {"loss": torch.ones(2, 2)}, ValueError, "scalar or a 1-D"),
        ({"scalars": {"lr": 1.0}}, {"scalars": {"lr": torch.ones(3)}}, ValueError, r"\(0-d\)"),
        ({"scalars": {"lr": 1.0}}, {"scalars": {"lr": "high"}}, TypeError, r"scalars\['lr'\]"),
        ({"loss": t}, {"loss": torch.empty((), device="meta")}, ValueError, "meta tensor"),
        ({"loss": t}, {"loss": torch.ones(2).to_sparse()}, TypeError, "dense tensor"),
        (
            {"loss": torch.ones(4), "sample_ids": torch.arange(4)},
            {"loss": torch.ones(4), "sample_ids": torch.arange(3)},
            ValueError,
            "disagree",
        ),
        ({"checkpoint": True}, {"checkpoint": "yes"}, TypeError, "checkpoint must be a bool"),
        ({"images": {"u": x}}, {"images": {"u": x, "v": x[:, :3, :, :3]}}, ValueError, "or last"),
        ({"timesteps": np.arange(2)}, {"timesteps": np.zeros((2, 2))}, ValueError, "1-D"),
    ]


@pytest.mark.parametrize(("good", "bad", "error", "match"), _signature_changes())
def test_a_changed_signature_is_validated_again_and_refused_with_nothing_recorded(
    path: Path, good: dict[str, Any], bad: dict[str, Any], error: type[Exception], match: str
) -> None:
    with Recorder(path) as rec:
        rec.record(0, **good)
        rec.record(1, **good)  # the signature is cached now
        rec.flush()
        before = (open_run(path).committed(), open_run(path).scalar_names())
        with pytest.raises(error, match=match):
            rec.record(2, **bad)
        rec.flush()
        assert rec.stats.recorded == 2 and rec.stats.drops == {}
        assert (open_run(path).committed(), open_run(path).scalar_names()) == before
        rec.record(2, **good)
    run = open_run(path)
    assert run.scalars()["step"].tolist() == [0, 1, 2] and run.errors() == 0


def test_values_stay_checked_on_every_call_of_a_cached_signature(path: Path) -> None:
    loss = torch.tensor(1.0)
    with Recorder(path) as rec:
        for step, value in enumerate([1.0, math.nan, 2.0, math.inf, -math.inf, 3.0]):
            loss.fill_(value)  # the same tensor, changed in place: one signature
            rec.record(step, loss, terms={"v": loss})
        with pytest.raises(ValueError, match="step must fit int64"):
            rec.record(2**63, loss, terms={"v": loss})
        with pytest.raises(ValueError, match="step must be >= 0"):
            rec.record(-1, loss, terms={"v": loss})
        rec.record(6, 5)
        with pytest.raises(ValueError, match=r"loss is an int of 3322 bits, too large"):
            rec.record(7, 10**1000)  # an int: same signature, a value a float64 cannot hold
        with pytest.raises(ValueError, match=r"scalars\['n'\] is .* too large"):
            rec.record(7, 5, scalars={"n": 10**400})
        assert rec.stats.recorded == 7
    run = open_run(path)
    cols = run.scalars()
    np.testing.assert_array_equal(cols["step"], np.arange(7))
    np.testing.assert_array_equal(cols["loss"], [1, math.nan, 2, math.inf, -math.inf, 3, 5])
    assert run.nonfinite() == {"loss": 3, "term/v": 3}
    np.testing.assert_array_equal(
        cols[LOSS_NAN], [np.nan, 1, np.nan, np.nan, np.nan, np.nan, np.nan]
    )


def test_a_name_past_the_cap_is_counted_on_every_call_of_its_signature(path: Path) -> None:
    with Recorder(path) as rec:
        for i in range(MAX_TERMS):
            rec.record(i, 1.0, terms={f"t{i}": 1.0})
        with pytest.warns(RuntimeWarning, match="loss terms"):
            for step in range(MAX_TERMS, MAX_TERMS + 5):
                rec.record(step, 1.0, terms={"late": 1.0, "t0": 0.5})
    run = open_run(path)
    assert run.drops() == {OVER_CAP: 5} and run.committed() == {SCALARS: MAX_TERMS + 5}
    assert "term/late" not in run.scalar_names()
    np.testing.assert_array_equal(run.scalars()["term/t0"][-5:], 0.5)


def test_a_lazily_negated_tensor_is_recorded_with_its_sign(path: Path) -> None:
    negated = torch.tensor(1 + 2j).conj().imag  # -2.0, kept as +2.0 and a negative bit
    assert negated.is_neg()
    plain = torch.tensor(2.0)
    given = [plain, negated, negated, plain, negated]  # each order of the two signatures
    with Recorder(path) as rec:
        for step, loss in enumerate(given):
            rec.record(step, loss)
        for step, term in enumerate(given, start=len(given)):
            rec.record(step, 1.0, terms={"v": term})
    cols = open_run(path).scalars()
    np.testing.assert_array_equal(cols["loss"][:5], [2.0, -2.0, -2.0, 2.0, -2.0])
    np.testing.assert_array_equal(cols["term/v"][5:], [2.0, -2.0, -2.0, 2.0, -2.0])


def test_images_laid_out_in_any_order_are_copied_exactly(path: Path) -> None:
    rng = np.random.default_rng(0)
    last = torch.rand(3, 3, 16, 16).to(memory_format=torch.channels_last)
    swapped = rng.random((3, 3, 16, 1024), dtype=np.float32).swapaxes(2, 3)  # 192 KiB: pooled
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    with Recorder(path, every={"pred": 1}) as rec:
        for step in range(3):
            rec.record(step, pred=last, images={"s": swapped})
            seen.append((last.numpy().copy(), swapped.copy()))
            last.add_(1.0)  # in place, after the call: never reaches the store
            swapped += 1.0
    run = open_run(path)
    np.testing.assert_array_equal(run.stream("pred")[1], np.concatenate([p for p, _ in seen]))
    np.testing.assert_array_equal(run.stream("s")[1], np.concatenate([s for _, s in seen]))


def test_images_in_every_layout_users_pass_are_stored_channels_first(path: Path) -> None:
    """NHWC/HWC arrays (diffusers' output_type="np"), PIL images and lists, grey, uint8."""
    from PIL import Image

    rng = np.random.default_rng(0)
    nhwc = rng.random((5, 64, 48, 3), dtype=np.float32)  # 184 KiB a row: copied from its bytes
    rgb = rng.integers(0, 256, (2, 16, 12, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (16, 12), dtype=np.uint16)  # a 16-bit grey PNG
    grey = rng.random((2, 16, 12), dtype=np.float32)
    chw = torch.rand(16, 16, 12, generator=torch.Generator().manual_seed(0))  # 16 channels
    nhwc_half = torch.from_numpy(nhwc).to(torch.bfloat16)  # numpy cannot view it: captured
    given: dict[str, Any] = {
        "nhwc": nhwc,
        "nhwc-tensor": torch.from_numpy(nhwc),
        "nhwc-bf16": nhwc_half,
        "hwc": nhwc[0],
        "uint8": rgb,
        "pil": Image.fromarray(rgb[0]),
        "pil-list": [Image.fromarray(a) for a in rgb],
        "pil-grey": Image.fromarray(rgb[0, :, :, 0]),
        "pil-16bit": Image.fromarray(deep),
        "pil-palette": Image.fromarray(rgb[0]).convert("P"),
        "hw": grey[0],
        "nhw": grey,
        "chw": chw,
        "list/chw": [chw, chw + 1],
    }
    want = {
        "nhwc": nhwc[:4].transpose(0, 3, 1, 2),  # max_items=4 cuts the batch
        "nhwc-tensor": nhwc[:4].transpose(0, 3, 1, 2),
        "nhwc-bf16": nhwc_half[:4].float().numpy().transpose(0, 3, 1, 2),
        "hwc": nhwc[:1].transpose(0, 3, 1, 2),
        "uint8": rgb.transpose(0, 3, 1, 2) / np.float32(255),
        "pil": rgb[:1].transpose(0, 3, 1, 2) / np.float32(255),
        "pil-list": rgb.transpose(0, 3, 1, 2) / np.float32(255),
        "pil-grey": rgb[:1, None, :, :, 0] / np.float32(255),
        "pil-16bit": deep[None, None] / np.float32(65535),
        "pil-palette": np.asarray(Image.fromarray(rgb[0]).convert("P").convert("RGB"))[
            None
        ].transpose(0, 3, 1, 2)
        / np.float32(255),
        "hw": grey[:1, None],
        "nhw": grey[:, None],
        "chw": chw[None].numpy(),
        "list/chw": torch.stack([chw, chw + 1]).numpy(),
    }
    tiny = rng.random((2, 4, 4, 4), dtype=np.float32)  # channels first or last: first
    with Recorder(path, every={"pred": 1}) as rec:
        rec.record(0, images=given, dataformats={"nhw": "NHW"}, pred=nhwc[:2], latents=tiny)
        for step in (1, 2):  # the cached signature of the arrays and tensors copies alike
            rec.record(step, images={k: given[k] for k in ("nhwc", "nhwc-tensor", "nhwc-bf16")})
    run = open_run(path)
    # a model tensor whose shape can only be channels-last is taken as such
    np.testing.assert_array_equal(run.stream("pred")[1], nhwc[:2].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(run.stream("latents")[1], tiny)
    assert sorted(run.stream_names()) == sorted([*want, "pred", "latents"])
    for name, data in want.items():
        steps, got = run.stream(name)
        assert run.stream_spec(name).shape == data.shape[1:], name
        if name.startswith("nhwc"):
            data = np.concatenate([data] * 3)
            np.testing.assert_array_equal(steps, np.repeat([0, 1, 2], 4), err_msg=name)
        else:
            np.testing.assert_array_equal(steps, [0] * len(data), err_msg=name)
        np.testing.assert_allclose(got, data, rtol=1e-6, atol=1e-7, err_msg=name)
        assert got.dtype == np.float32


def _pooled_latents(seed: int) -> torch.Tensor:
    """(6, 4, 64, 64) float32 latents: the 4 items kept take 256 KiB, copied into pooled buffers."""
    return torch.randn(6, 4, 64, 64, generator=torch.Generator().manual_seed(seed))


def test_large_cpu_tensors_are_copied_exactly_whatever_their_layout(path: Path) -> None:
    """Tensors of one signature in turns contiguous or not, offset, negated, bfloat16, (C, H, W)."""
    base = torch.randn(7, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    given: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("latents", lambda: base[1:]),  # contiguous, at an offset into its storage
        ("latents", lambda: base[1:].transpose(2, 3)),  # the same signature, not contiguous
        ("latents", lambda: base[1:].contiguous(memory_format=torch.channels_last)),
        ("latents", lambda: base[1:] * 1),  # contiguous again, a new tensor
        ("latents", lambda: torch.rand(6, 4, 64, 64, requires_grad=True) * 1),
        ("latents", lambda: torch._neg_view(base[1:])),  # contiguous, negative bit set
        ("latents", lambda: base[1:]),
        ("pred", lambda: base[:6, :3].repeat(1, 1, 8, 8).bfloat16()),  # numpy has no bfloat16
        ("target", lambda: base[0].repeat(1, 4, 4)),  # (C, H, W): 1 MiB
        ("target", lambda: base[1].repeat(1, 4, 4).half()),  # float16 (the stream stays float32)
    ]
    expected: dict[str, list[np.ndarray]] = {"latents": [], "pred": [], "target": []}
    with Recorder(path, every={"pred": 1, "target": 1}) as rec:
        for step, (name, make) in enumerate(given):
            value = make()
            rec.record(step, 1.0, **{name: value})
            kept = (value[None] if value.ndim == 3 else value[:4]).detach().float()
            expected[name].append(kept.numpy(force=True).copy())
            with torch.no_grad():
                value.add_(1.0)  # in place, after the call: never reaches the store
                base.mul_(-1.0)  # nor does a change to the storage it views
        from_bytes = [s.name for plan in rec._plans.values() for s in plan.streams if s.key]
        assert sorted(from_bytes) == ["latents", "target", "target"]  # the copy under test ran
    run = open_run(path)
    for name, arrays in expected.items():
        stored = run.stream(name)[1]
        assert stored.dtype == np.float32
        np.testing.assert_array_equal(stored, np.concatenate(arrays))


def test_pooled_copies_all_go_back_to_the_pool(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every buffer a copy takes comes back once its row is written, and only once."""
    taken: set[int] = set()
    take = BufferPool.take

    def counting(pool: BufferPool, key: tuple[Any, ...], nbytes: int) -> Any:
        captured = take(pool, key, nbytes)
        taken.add(captured.address)
        return captured

    monkeypatch.setattr(BufferPool, "take", counting)
    latents = _pooled_latents(0)
    with Recorder(path, every={"pred": 3}) as rec:
        for step in range(30):
            rec.record(step, 1.0, latents=latents, pred=latents.repeat(1, 1, 2, 2)[:, :3])
        rec.flush()
        free = [address for buffers in rec._pool._free.values() for _, address in buffers]
        assert rec.stats.pending_bytes == 0 and rec.stats.drops == {}
    assert len(free) == len(set(free)) and set(free) == taken


def test_the_copy_of_a_contiguous_cpu_tensor_holds_the_gil(path: Path) -> None:
    """No other thread runs while a stream is copied (see texwatch/client/_capture.py).

    A call's signature reads ``is_neg()``, a torch op that lets the GIL go; the copy must not.
    """
    latents = _pooled_latents(1)
    ran = [0]
    stop = threading.Event()

    def spin() -> None:  # runs only where another thread gives the GIL up
        while not stop.is_set():
            ran[0] += 1
            time.sleep(0)  # gives it back at once

    interval = sys.getswitchinterval()
    spinner = threading.Thread(target=spin)
    with Recorder(path) as rec:
        rec.record(0, 1.0, latents=latents)
        rec.flush()  # the writer is idle: it holds no lock the copy takes
        (stream,) = next(iter(rec._plans.values())).streams
        assert stream.key is not None  # copied from the tensor's bytes
        spinner.start()
        sys.setswitchinterval(1000.0)  # no thread is made to give the GIL up
        try:
            time.sleep(0.01)  # every waiting thread now waits under the long interval
            before = ran[0]
            for _ in range(50):
                stream.copy(latents, rec._pool, None).release()
            after = ran[0]
        finally:
            stop.set()
            sys.setswitchinterval(interval)
            spinner.join()
    assert before > 0 and after == before


def _record_until_closed(
    rec: Recorder, accepted: list[int], refused: list[BaseException], started: threading.Event
) -> None:
    loss = torch.tensor(1.0)
    step = 0
    while True:
        try:
            rec.record(step, loss, latents=np.ones((1, 1, 2, 2), np.float32))
        except RuntimeError as err:
            refused.append(err)
            return
        accepted.append(step)
        step += 1
        if step == 100:
            started.set()


def test_a_record_racing_close_is_committed_or_refused(path: Path) -> None:
    """record() takes no lock against close(): every call's row is committed, or it raises."""
    for attempt in range(5):
        store = path.parent / f"race{attempt}.zarr"
        rec = Recorder(store)
        accepted: list[int] = []
        refused: list[BaseException] = []
        started = threading.Event()
        thread = threading.Thread(
            target=_record_until_closed, args=(rec, accepted, refused, started)
        )
        thread.start()
        assert started.wait(10.0)
        rec.close()
        thread.join(10.0)
        assert refused and "closed" in str(refused[0])
        run = open_run(store)
        assert run.scalars()["step"].tolist() == accepted
        assert run.committed()["latents"] == len(accepted) and run.drops() == {}
        assert rec.stats.recorded == len(accepted)


def test_recorded_is_exact_across_threads(path: Path) -> None:
    with Recorder(path, queue_size=100_000) as rec:

        def work(first: int) -> None:
            loss = torch.tensor(0.5)
            for step in range(first, first + 2000):
                rec.record(step, loss)

        threads = [threading.Thread(target=work, args=(2000 * k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        rec.flush()
        assert rec.stats.recorded == 8000 and rec.stats.committed[SCALARS] == 8000


def test_the_signature_cache_is_bounded(path: Path) -> None:
    from texwatch.client._recorder import _MAX_PLANS

    with Recorder(path) as rec:
        for b in range(1, _MAX_PLANS + 50):  # a new shape of per-item loss each call
            rec.record(b, torch.ones(b))
        assert len(rec._plans) <= _MAX_PLANS
    assert open_run(path).committed()[SCALARS] == _MAX_PLANS + 49


def test_close_marks_the_run_finished_and_a_crash_or_a_resume_does_not(tmp_path: Path) -> None:
    clean, crashed, kept = tmp_path / "clean.zarr", tmp_path / "crashed.zarr", tmp_path / "k.zarr"
    with Recorder(clean) as rec:
        rec.record(0, 1.0)
    finished = open_run(clean).finished()
    assert finished is not None and finished.endswith("+00:00")
    with pytest.raises(KeyError), Recorder(crashed) as rec:
        rec.record(0, 1.0)
        raise KeyError("a bug in the training loop")
    assert open_run(crashed).finished() is None
    assert open_run(crashed).scalars()["step"].tolist() == [0]  # its rows are committed
    rec = Recorder(kept)
    rec.record(0, 1.0)
    rec.close(finished=False)  # a preempted job that will resume
    assert open_run(kept).finished() is None
    with Recorder(tmp_path / "x.zarr") as rec, pytest.raises(TypeError, match="must be a bool"):
        rec.close(finished="yes")  # type: ignore[arg-type]
    resumed = Recorder(clean)
    assert open_run(clean).finished() is None  # resuming makes the run live again
    resumed.close()
    assert open_run(clean).finished() is not None


@pytest.mark.parametrize("crash", [False, True])
def test_the_close_at_exit_marks_finished_unless_the_program_died_of_an_exception(
    tmp_path: Path, crash: bool
) -> None:
    store = tmp_path / "exit.zarr"
    script = (
        "import sys\n"
        "from texwatch.client import Recorder\n"
        f"rec = Recorder({str(store)!r})\n"
        "rec.record(0, 1.0)\n" + ("raise SystemError('crash')\n" if crash else "")
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == (1 if crash else 0), done.stderr
    run = open_run(store)
    assert run.scalars()["step"].tolist() == [0]
    assert (run.finished() is None) is crash
