"""texwatchd in-process: incremental derivation, export, snapshots, restarts and faults."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from texwatch.alarms import harmonic_lock
from texwatch.client import Recorder
from texwatch.daemon import Daemon, DaemonOptions, main
from texwatch.daemon._exporter import MetricsBoard
from texwatch.derive import Deriver, DeriveSettings, derive_all
from texwatch.store import ITEMS, LOSS_NAN, SCALARS, RunWriter, open_run

SIZE = 64
PERIOD = 8


def _grating(period: float, rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, 1, SIZE, SIZE) vertical gratings in [0, 1] with light noise."""
    x = np.arange(SIZE, dtype=np.float32)
    wave = 0.5 + 0.4 * np.sin(2 * np.pi * x / period)[None, :].repeat(SIZE, 0)
    noise = 0.02 * rng.standard_normal((rows, 1, SIZE, SIZE)).astype(np.float32)
    return (wave[None, None] + noise).astype(np.float32)


def write_run(
    path: Path,
    steps: range,
    *,
    spike_at: int | None = None,
    pred_period: float = PERIOD,
    name: str | None = None,
    image_every: int = 25,
    seed: int = 0,
    commit_every: int = 20,
) -> None:
    """Write rows the way the client's writer does: blocks of rows, then a commit."""
    rng = np.random.default_rng(seed)
    writer = RunWriter.open(path, run=name)
    for first in range(steps.start, steps.stop, commit_every):
        block = np.arange(first, min(first + commit_every, steps.stop))
        n = len(block)
        loss = 1.0 + 0.05 * rng.standard_normal(n)
        loss[block == spike_at] = 80.0
        writer.append(
            SCALARS,
            {
                "step": block,
                "time": 1.7e9 + block.astype(np.float64),
                "loss": loss,
                "lr": np.full(n, 1e-4),
                "term/v": loss,
                "weight/v": np.ones(n),
                "term/edge": np.zeros(n),
                "weight/edge": np.full(n, 0.5),
            },
        )
        writer.append(
            ITEMS,
            {"step": np.repeat(block, 2), "sample_id": np.arange(2 * first, 2 * first + 2 * n)},
        )
        kept = block[block % image_every == 0]
        if len(kept):
            k = len(kept)
            writer.append("target", {"step": kept, "data": _grating(PERIOD, k, rng)})
            writer.append("pred", {"step": kept, "data": _grating(pred_period, k, rng)})
            latents = rng.standard_normal((k, 4, 16, 16)).astype(np.float32)
            writer.append("latents", {"step": kept, "data": latents})
        writer.commit()


def _daemon(
    stores: list[Path],
    registry: CollectorRegistry,
    tmp_path: Path,
    snapshot_every: int = 1000,
    **options: Any,
) -> Daemon:
    opts = DaemonOptions(
        stores=tuple(stores),
        rescan=options.pop("rescan", 0.05),
        **options,
        batch_rows=64,
        snapshot_dir=tmp_path / "snaps",
        snapshot_every=snapshot_every,
    )
    return Daemon(opts, DeriveSettings(window=64, dead_window=20), MetricsBoard(registry))


def _catch_up(
    stores: list[Path], registry: CollectorRegistry, tmp_path: Path, **options: Any
) -> None:
    """Derive every committed row with a fresh daemon, closed afterwards."""
    daemon = _daemon(stores, registry, tmp_path, **options)
    try:
        daemon.catch_up()
    finally:
        daemon.close()


def _values(registry: CollectorRegistry, metric: str, **labels: str) -> list[float]:
    """Values of the samples of ``metric`` whose labels include ``labels`` (run_id aside)."""
    return [
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == metric and labels.items() <= s.labels.items()
    ]


def _value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    values = _values(registry, metric, **labels)
    assert len(values) == 1, f"{metric}{labels} exported {len(values)} times"
    return values[0]


def test_a_nan_term_is_exported_non_finite_not_dead(tmp_path: Path) -> None:
    from texwatch.client import Recorder

    store = tmp_path / "terms.zarr"
    with Recorder(store, run="terms") as rec:
        for step in range(150):
            terms = {"v": 1.0 / (step + 1), "nan": math.nan}
            rec.record(step, 1.0 / (step + 1), terms=terms, weights={"v": 1.0, "absent": 0.5})
    registry = CollectorRegistry()
    _catch_up([store], registry, tmp_path)
    state = {
        term: (
            _value(registry, "texwatch_loss_term_dead", run="terms", term=term),
            _value(registry, "texwatch_loss_term_nonfinite", run="terms", term=term),
        )
        for term in ("v", "nan")
    }
    assert state == {"v": (0.0, 0.0), "nan": (0.0, 1.0)}
    derived = open_run(store).derived(SCALARS)
    assert derived["term_nonfinite/nan"].sum() == 150 and derived["dead/nan"].sum() == 0


def test_derives_every_committed_row_once_and_exports(tmp_path: Path) -> None:
    store = tmp_path / "doubled.zarr"
    write_run(store, range(300), spike_at=250, pred_period=2 * PERIOD)
    registry = CollectorRegistry()
    _catch_up([store], registry, tmp_path)
    run = open_run(store)
    committed = run.committed()
    assert run.derived_cursor() == committed
    derived = run.derived_committed()
    for table in (SCALARS, "pred", "target", "latents"):
        assert derived[table] == committed[table]
    np.testing.assert_array_equal(run.derived(SCALARS)["step"], np.arange(300))
    np.testing.assert_array_equal(run.derived("pred")["step"], np.arange(0, 300, 25))

    labels = {"run": "doubled"}
    assert _value(registry, "texwatch_last_step", **labels) == 299
    assert _value(registry, "texwatch_daemon_lag_rows", **labels) == 0
    assert _value(registry, "texwatch_loss_spikes_total", run="doubled", rule="hard_max") == 1
    assert run.derived(SCALARS)["spike"].sum() == 1
    # the pred's tiles are twice the target's; the target has no reference of its own
    assert _value(registry, "texwatch_tile_scale", run="doubled", stream="pred") == pytest.approx(
        2.0, rel=0.05
    )
    assert _value(registry, "texwatch_periodic", run="doubled", stream="target") == 1
    assert math.isnan(_value(registry, "texwatch_tile_scale", run="doubled", stream="target"))
    assert _value(
        registry, "texwatch_ref_radius_bin", run="doubled", stream="pred"
    ) == pytest.approx(SIZE / PERIOD, abs=1)
    assert _value(registry, "texwatch_loss_term_dead", run="doubled", term="edge") == 1
    assert _value(registry, "texwatch_loss_term_dead", run="doubled", term="v") == 0
    assert _value(registry, "texwatch_dead_loss_terms", **labels) == 1
    assert _value(registry, "texwatch_scalar", run="doubled", name="lr") == pytest.approx(1e-4)
    assert (
        _value(
            registry, "texwatch_texture_loss", run="doubled", stream="pred", loss="spectral_period"
        )
        >= 0
    )


def test_a_faithful_pred_does_not_look_harmonic(tmp_path: Path) -> None:
    store = tmp_path / "clean.zarr"
    write_run(store, range(100))
    registry = CollectorRegistry()
    _catch_up([store], registry, tmp_path)
    scale = _value(registry, "texwatch_tile_scale", run="clean", stream="pred")
    assert scale == pytest.approx(1.0, rel=0.05)
    assert harmonic_lock(scale) is None


def test_restart_resumes_from_the_cursor_without_gap_or_duplicate(tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    write_run(store, range(150))
    _catch_up([store], CollectorRegistry(), tmp_path)
    write_run(store, range(150, 260), seed=1)
    registry = CollectorRegistry()
    # Before deriving anything new the restarted daemon exports the stored newest values.
    _catch_up([store], registry, tmp_path)
    run = open_run(store)
    np.testing.assert_array_equal(run.derived(SCALARS)["step"], np.arange(260))
    assert _value(registry, "texwatch_last_step", run="r") == 259


def test_derive_all_matches_the_daemon_and_fills_the_rest_in_memory(tmp_path: Path) -> None:
    store = tmp_path / "d.zarr"
    write_run(store, range(200), spike_at=150)
    _catch_up([store], CollectorRegistry(), tmp_path)
    stored = {t: open_run(store).derived(t) for t in (SCALARS, "pred")}
    write_run(store, range(200, 240), seed=2)
    everything = derive_all(store, DeriveSettings(window=64, dead_window=20))
    for table, cols in stored.items():
        for key, values in cols.items():
            np.testing.assert_array_equal(everything[table][key][: len(values)], values)
    assert len(everything[SCALARS]["step"]) == 240
    assert everything[SCALARS]["spike"].sum() == 1
    # Nothing was written by the report path.
    assert open_run(store).derived_committed()[SCALARS] == 200
    # One table alone (the report reads the scalars in chunks of its own): the same rows.
    streams = derive_all(store, DeriveSettings(window=64, dead_window=20), tables=["pred"])
    assert set(streams) == {"pred"}
    for key, values in everything["pred"].items():
        np.testing.assert_array_equal(streams["pred"][key], values)


def test_snapshots_are_written_per_interval_atomically(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    write_run(store, range(260), spike_at=200)
    daemon = _daemon([store], CollectorRegistry(), tmp_path, snapshot_every=100)
    try:
        daemon.catch_up()
        daemon.snapshot_all()
    finally:
        daemon.close()
    folder = tmp_path / "snaps" / f"s-{open_run(store).run_id[:8]}"
    names = sorted(p.name for p in folder.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    pngs = [n for n in names if n.endswith(".png")]
    assert len(pngs) >= 2 and "259.png" in pngs
    for png in pngs:
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "259.json").read_text())
    assert summary["run"] == "s" and summary["step"] == 259
    assert "pred" in summary["streams"] and "tile_scale" in summary["streams"]["pred"]
    every_spike = [
        s
        for f in names
        if f.endswith(".json")
        for s in json.loads((folder / f).read_text())["loss"]["spikes"]
    ]
    assert [s["step"] for s in every_spike] == [200]


def test_faults_are_counted_once_and_other_runs_keep_being_served(tmp_path: Path) -> None:
    good, corrupt, gone, alien = (
        tmp_path / f"{n}.zarr" for n in ("good", "corrupt", "gone", "alien")
    )
    for store in (good, corrupt, gone, alien):
        write_run(store, range(60))
    (corrupt / "derived").mkdir()
    (corrupt / "derived" / "zarr.json").write_bytes(b"\x00garbage" * 8)
    root_json = alien / "zarr.json"
    meta = json.loads(root_json.read_text())
    meta["attributes"]["schema_version"] = 99
    root_json.write_text(json.dumps(meta))
    registry = CollectorRegistry()
    daemon = _daemon([good, corrupt, gone, alien], registry, tmp_path)
    try:
        daemon.catch_up()
        assert _value(registry, "texwatch_last_step", run="gone") == 59
        for p in sorted(gone.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        gone.rmdir()
        write_run(good, range(60, 80), seed=3)
        daemon.catch_up()
        daemon.pass_once()
    finally:
        daemon.close()
    assert _value(registry, "texwatch_errors_total", kind="corrupt_chunk") == 1
    assert _value(registry, "texwatch_errors_total", kind="schema") == 1
    assert _value(registry, "texwatch_errors_total", kind="store_missing") == 1
    assert _values(registry, "texwatch_last_step", run="gone") == []
    assert _value(registry, "texwatch_last_step", run="good") == 79
    assert _value(registry, "texwatch_errors_total", kind="internal") == 0


def test_once_cli_derives_snapshots_and_exits(tmp_path: Path) -> None:
    store = tmp_path / "cli.zarr"
    write_run(store, range(120))
    snaps = tmp_path / "out"
    code = main(["--store", str(store), "--once", "--snapshot-dir", str(snaps), "--device", "cpu"])
    assert code == 0
    assert (snaps / f"cli-{open_run(store).run_id[:8]}" / "119.png").exists()
    assert open_run(store).derived_cursor()[SCALARS] == 120


def test_a_port_in_use_is_one_line_without_the_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "x.zarr"
    write_run(store, range(4))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["--store", str(store), "--port", str(port), "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Address already in use" in err[0], err
    assert err[0].startswith(f"texwatchd: error: cannot serve /metrics on 127.0.0.1:{port}: ")
    assert open_run(store).derived_cursor() == {}  # it stopped before deriving anything


@pytest.mark.parametrize(("extra", "threads"), [([], 1), (["--threads", "2"], 2)])
def test_derivation_runs_on_the_threads_asked_for_one_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], threads: int
) -> None:
    store = tmp_path / "t.zarr"
    write_run(store, range(20))
    seen: list[int] = []
    advance = Deriver.advance

    def spy(self: Deriver, *args: Any, **kwargs: Any) -> Any:
        seen.append(torch.get_num_threads())
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(Deriver, "advance", spy)
    before = torch.get_num_threads()
    code = main(
        [
            "--store",
            str(store),
            "--once",
            "--device",
            "cpu",
            "--snapshot-dir",
            str(tmp_path),
            *extra,
        ]
    )
    assert code == 0 and seen and set(seen) == {threads}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--store"),
        (["--store", "x.zarr", "--threads", "0"], "expected an integer >= 1 but got '0'"),
        (["--store", "x.zarr", "--poll", "0"], "--poll"),
        (["--store", "x.zarr", "--device", "nonsense"], "--device"),
        (["--root", __file__], "--root"),
        (["--store", "x.zarr", "--stall-after", "0"], "expected a number > 0 but got '0'"),
        (["--store", "x.zarr", "--batch-rows", "1.5"], "expected an integer >= 1 but got '1.5'"),
        (["--store", "x.zarr", "--spike-sigma", "-1"], "expected a number > 0 but got '-1'"),
        (["--store", "x.zarr", "--rescan", "soon"], "expected a number > 0 but got 'soon'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_nonfinite_loss_is_counted_and_flagged(tmp_path: Path) -> None:
    store = tmp_path / "nan.zarr"
    writer = RunWriter.open(store)
    losses = [1.0] * 10 + [math.nan] + [1.0] * 5
    marker = np.where(np.isnan(losses), 1.0, np.nan)
    writer.append(
        SCALARS,
        {"step": np.arange(16), "time": np.zeros(16), "loss": np.array(losses), LOSS_NAN: marker},
    )
    writer.commit(nonfinite={"loss": 1})  # as the client counts the rows it saw
    registry = CollectorRegistry()
    _catch_up([store], registry, tmp_path)
    assert _value(registry, "texwatch_nonfinite_total", run="nan", stream="loss") == 1
    assert _value(registry, "texwatch_loss_spikes_total", run="nan", rule="nonfinite") == 1


@pytest.mark.parametrize("poll", [None, 0.1])
def test_the_loop_wakes_on_commits_and_stops_on_request(tmp_path: Path, poll: float | None) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    write_run(runs / "a.zarr", range(40))
    registry = CollectorRegistry()
    # A long rescan: only the watcher (inotify or polling) can wake the loop in time.
    daemon = _daemon([], registry, tmp_path, root=runs, poll=poll, rescan=60.0)
    loop = threading.Thread(target=daemon.run)
    loop.start()
    try:

        def wait_for(run: str, step: float) -> None:
            deadline = time.monotonic() + 30
            while _values(registry, "texwatch_last_step", run=run) != [step]:
                assert time.monotonic() < deadline, f"{run} never reached step {step}"
                time.sleep(0.05)

        wait_for("a", 39)
        write_run(runs / "a.zarr", range(40, 60), seed=1)
        wait_for("a", 59)
        write_run(runs / "b.zarr", range(10))  # a new run under --root is picked up
        wait_for("b", 9)
    finally:
        daemon.stop()
        loop.join(timeout=30)
        daemon.close()
    assert not loop.is_alive()


def test_a_turn_the_round_waited_for_does_not_wake_the_loop(tmp_path: Path) -> None:
    """Only a commit, or a turn that outlived the round's wait, ends the loop's sleep: an idle
    texwatchd sleeps until its rescan instead of starting round after round."""
    store = tmp_path / "idle.zarr"
    write_run(store, range(30))
    daemon = _daemon([store], CollectorRegistry(), tmp_path, rescan=60.0)
    try:
        daemon.catch_up()
        daemon._watcher.wait(0.3)  # the commits and derived/ written before
        daemon.pass_once()
        assert daemon._watcher.wait(0.3) is False
    finally:
        daemon.close()


def test_runs_idle_for_long_drop_out_of_the_exposition(tmp_path: Path) -> None:
    store = tmp_path / "idle.zarr"
    write_run(store, range(30))
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path, forget_after=0.2)
    try:
        daemon.catch_up()
        assert _value(registry, "texwatch_last_step", run="idle") == 29
        time.sleep(0.3)
        daemon.pass_once()
        assert _values(registry, "texwatch_last_step", run="idle") == []
        write_run(store, range(30, 40), seed=1)
        daemon.catch_up()
        assert _value(registry, "texwatch_last_step", run="idle") == 39
    finally:
        daemon.close()


def test_each_pred_item_is_measured_against_its_own_target(tmp_path: Path) -> None:
    store = tmp_path / "pairs.zarr"
    rng = np.random.default_rng(5)
    writer = RunWriter.open(store)
    steps = np.array([0, 0, 10, 10])
    # Item 0 of each step has period 8, item 1 period 16; targets and preds agree item by item.
    images = np.concatenate([_grating(p, 1, rng) for p in (8, 16, 8, 16)])
    writer.append(SCALARS, {"step": np.array([0, 10]), "time": np.zeros(2), "loss": np.ones(2)})
    writer.append("target", {"step": steps, "data": images})
    writer.append("pred", {"step": steps, "data": images})
    writer.commit()
    settings = DeriveSettings(window=64, dead_window=20)
    # One row per batch: the pred rows of a step are derived in other batches than their targets.
    derived = derive_all(store, settings, batch_rows=1)
    np.testing.assert_allclose(derived["pred"]["ref_radius_bin"], [8, 4, 8, 4], atol=0.5)
    np.testing.assert_allclose(derived["pred"]["tile_scale"], 1.0, rtol=0.05)
    # After a restart past the targets (cursor at pred row 2), they are read back from the store.
    resumed = Deriver(settings, cursor={"target": 4, "pred": 2, SCALARS: 2})
    batch = resumed.advance(open_run(store), open_run(store).committed())
    assert batch is not None
    np.testing.assert_allclose(batch.tables["pred"]["ref_radius_bin"], [8, 4], atol=0.5)


def _record(rec: Recorder, steps: range) -> None:
    for step in steps:
        rec.record(step, 1.0 + 0.01 * (step % 7))


def test_a_run_is_finished_once_its_recorder_closed_and_every_row_is_derived(
    tmp_path: Path,
) -> None:
    closed, crashed = tmp_path / "closed.zarr", tmp_path / "crashed.zarr"
    registry = CollectorRegistry()
    rec = Recorder(closed)
    _record(rec, range(30))
    rec.flush()
    with pytest.raises(RuntimeError, match="out of memory"), Recorder(crashed) as dying:
        _record(dying, range(30))
        raise RuntimeError("out of memory")
    daemon = _daemon([closed, crashed], registry, tmp_path)
    try:
        daemon.catch_up()
        assert _value(registry, "texwatch_run_finished", run="closed") == 0
        _record(rec, range(30, 200))
        rec.close()
        assert open_run(closed).finished() is not None
        daemon.pass_once()  # 64 of the 170 new rows: the run ended, but its rows are not all in
        assert _value(registry, "texwatch_daemon_lag_rows", run="closed") > 0
        assert _value(registry, "texwatch_run_finished", run="closed") == 0
        daemon.catch_up()
        assert _value(registry, "texwatch_last_step", run="closed") == 199
        assert _value(registry, "texwatch_run_finished", run="closed") == 1
        assert _value(registry, "texwatch_run_finished", run="crashed") == 0
        assert open_run(crashed).finished() is None
        resumed = Recorder(closed)  # a resumed run is live again, before its first new row
        try:
            daemon.catch_up()
            assert _value(registry, "texwatch_run_finished", run="closed") == 0
        finally:
            resumed.close(finished=False)
        daemon.catch_up()
        assert _value(registry, "texwatch_run_finished", run="closed") == 0
    finally:
        daemon.close()


def test_snapshots_of_served_runs_only_are_found_and_their_step_exported(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    write_run(store, range(260))
    stranger = tmp_path / "snaps" / "stranger-00000000"
    stranger.mkdir(parents=True)
    (stranger / "5.png").write_bytes(b"\x89PNG")
    folder_name = f"s-{open_run(store).run_id[:8]}"
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path, snapshot_every=100)
    try:
        assert daemon.newest_snapshot(folder_name, ".png") is None  # not served yet
        daemon.catch_up()
        daemon.snapshot_all()
        daemon.pass_once()
        folder = tmp_path / "snaps" / folder_name
        assert daemon.newest_snapshot(folder_name, ".png") == folder / "259.png"
        assert daemon.newest_snapshot(folder_name, ".json") == folder / "259.json"
        assert daemon.newest_snapshot("stranger-00000000", ".png") is None
        assert daemon.newest_snapshot("..", ".png") is None
        assert _value(registry, "texwatch_snapshot_step", run="s", folder=folder_name) == 259
    finally:
        daemon.close()
    # A restarted texwatchd exports the newest snapshot an earlier one wrote.
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path, snapshot_every=100)
    try:
        daemon.catch_up()
        assert _value(registry, "texwatch_snapshot_step", run="s", folder=folder_name) == 259
    finally:
        daemon.close()


def test_a_graceful_stop_serves_for_its_grace_and_a_second_stop_ends_it(tmp_path: Path) -> None:
    store = tmp_path / "g.zarr"
    write_run(store, range(40))
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path)
    loop = threading.Thread(target=daemon.run)
    loop.start()

    def wait_for(step: float) -> None:
        deadline = time.monotonic() + 30
        while _values(registry, "texwatch_last_step", run="g") != [step]:
            assert time.monotonic() < deadline, f"step {step} was never derived"
            time.sleep(0.05)

    try:
        wait_for(39)
        daemon.stop(grace=600.0)
        write_run(store, range(40, 60), seed=1)  # the last rows of a run that just ended
        wait_for(59)
        assert loop.is_alive()
        daemon.stop()  # a second SIGTERM: at once
        loop.join(timeout=30)
        assert not loop.is_alive()
    finally:
        daemon.stop()
        loop.join(timeout=30)
        daemon.close()
    daemon = _daemon([store], CollectorRegistry(), tmp_path)
    loop = threading.Thread(target=daemon.run)
    loop.start()
    try:
        stopped = time.monotonic()
        daemon.stop(grace=0.5)
        loop.join(timeout=30)
        assert not loop.is_alive()
        assert time.monotonic() - stopped >= 0.5
    finally:
        daemon.stop()
        loop.join(timeout=30)
        daemon.close()
