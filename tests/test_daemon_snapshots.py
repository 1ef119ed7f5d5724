"""Snapshot files: written atomically with a normal file mode, and a resumed run drawn per step."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_daemon import _daemon, _value, write_run
from test_daemon_faults import DEADLINE

from texwatch import plots
from texwatch.daemon import main, snapshot_folder_name
from texwatch.daemon._snapshots import write_atomic
from texwatch.store import ITEMS, SCALARS, RunWriter, open_run


@pytest.fixture
def restore_umask() -> Iterator[None]:
    """Put the process umask back after a test that sets it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize(
    ("mask", "mode"),
    [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)],
    ids=["umask-022", "umask-027", "umask-077"],
)
@pytest.mark.usefixtures("restore_umask")
def test_write_atomic_gives_the_mode_a_normal_file_would_get(
    tmp_path: Path, mask: int, mode: int
) -> None:
    os.umask(mask)
    target = tmp_path / "snaps" / "run" / "10.png"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["10.png"]


def test_write_atomic_leaves_no_temp_file_when_the_write_fails(tmp_path: Path) -> None:
    target = tmp_path / "run" / "10.json"
    write_atomic(target, b"kept")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"kept"
    assert [p.name for p in target.parent.iterdir()] == ["10.json"]


def _loss(steps: np.ndarray, segment: int) -> np.ndarray:
    """Loss values that say which segment (first run or its resume) wrote a row."""
    return 10.0 * segment + steps / 1000.0


def _write_resumed_run(path: Path) -> None:
    """Steps 0..99, then a resume from a checkpoint at step 50 writing steps 50..149."""
    rng = np.random.default_rng(0)
    writer = RunWriter.open(path, run="resumed")
    for segment, (first, stop) in enumerate(((0, 100), (50, 150)), start=1):
        for start in range(first, stop, 25):
            block = np.arange(start, start + 25)
            writer.append(SCALARS, {"step": block, "loss": _loss(block, segment)})
            writer.append(ITEMS, {"step": block, "sample_id": block})
            images = rng.random((1, 1, 32, 32), dtype=np.float32)
            writer.append("pred", {"step": block[-1:], "data": images})
            writer.commit()


def test_a_resumed_runs_snapshot_lists_the_spikes_of_its_latest_rows_by_step(
    tmp_path: Path,
) -> None:
    store = tmp_path / "resumed.zarr"
    writer = RunWriter.open(store, run="resumed")
    # Steps 0..299, then a resume at step 150 writing 150..299 again. The first pass spikes at
    # steps 200 and 250, the resumed pass at 220 only.
    for segment, (first, spikes) in enumerate(((0, (200, 250)), (150, (220,)))):
        steps = np.arange(first, 300)
        loss = 1.0 + 0.01 * np.sin(steps) + 0.001 * segment
        loss[np.isin(steps, spikes)] = 50.0
        writer.append(SCALARS, {"step": steps, "loss": loss})
        writer.commit()
    snaps = tmp_path / "snaps"
    code = main(["--store", str(store), "--once", "--snapshot-dir", str(snaps), "--device", "cpu"])
    assert code == 0
    (summary_file,) = snaps.rglob("299.json")
    summary = json.loads(summary_file.read_text())
    # 200 and 250 of the first pass were recorded again without a spike: the latest rows win.
    assert [s["step"] for s in summary["loss"]["spikes"]] == [220]
    assert summary["spike_counts"]["hard_max"] == 3  # every flagged row, counted when derived


def test_a_resumed_runs_loss_panel_is_drawn_once_per_step_with_the_latest_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "resumed.zarr"
    _write_resumed_run(store)
    drawn: list[dict[str, np.ndarray]] = []
    draw_loss = plots.draw_loss

    def spy(ax: Any, *args: Any, **kwargs: Any) -> None:
        draw_loss(ax, *args, **kwargs)
        drawn.append({line.get_label(): np.asarray(line.get_xydata()) for line in ax.get_lines()})

    monkeypatch.setattr(plots, "draw_loss", spy)
    snaps = tmp_path / "snaps"
    code = main(["--store", str(store), "--once", "--snapshot-dir", str(snaps), "--device", "cpu"])
    assert code == 0
    assert [p.name for p in snaps.rglob("*.png")] == ["149.png"]
    (lines,) = drawn
    steps = np.arange(150)
    expected = np.where(steps < 50, _loss(steps, 1), _loss(steps, 2))
    for label in ("loss", "EMA"):
        x = lines[label][:, 0]
        assert np.all(np.diff(x) > 0), f"{label} x data goes back"
        np.testing.assert_array_equal(x, steps)
    np.testing.assert_allclose(lines["loss"][:, 1], expected)


def _pngs(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.png"))


def test_a_backlog_writes_only_its_latest_snapshot_and_the_live_edge_one_per_interval(
    tmp_path: Path,
) -> None:
    store = tmp_path / "b.zarr"
    write_run(store, range(1000), image_every=50, commit_every=100)
    daemon = _daemon([store], CollectorRegistry(), tmp_path, snapshot_every=100)
    folder = tmp_path / "snaps" / snapshot_folder_name("b", open_run(store).run_id)
    try:
        daemon.catch_up()  # 1,000 committed steps: nine intervals crossed while catching up
        for first in (1000, 1100):  # then the live edge: one interval at a time
            write_run(store, range(first, first + 100), image_every=50, commit_every=100)
            daemon.catch_up()
    finally:
        daemon.close()  # writes the snapshots due
    # A snapshot is taken at the first batch entering an interval (batches of 64 rows here).
    assert [step // 100 for step in _pngs(folder)] == [9, 10, 11]


def test_a_slow_snapshot_never_holds_up_derivation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "s.zarr"
    write_run(store, range(150), image_every=50, commit_every=50)
    release = threading.Event()
    figure = plots.snapshot_figure

    def blocked(*args: Any, **kwargs: Any) -> bytes:
        assert release.wait(DEADLINE), "never released"
        return figure(*args, **kwargs)

    monkeypatch.setattr(plots, "snapshot_figure", blocked)
    registry = CollectorRegistry()
    daemon = _daemon([store], registry, tmp_path, snapshot_every=100)
    try:
        daemon.catch_up()  # the snapshot of step 149 is being drawn, and blocked
        write_run(store, range(150, 400), image_every=50, commit_every=50, seed=2)
        daemon.catch_up()
        assert _value(registry, "texwatch_last_step", run="s") == 399
        release.set()
    finally:
        release.set()
        daemon.close()
    folder = tmp_path / "snaps" / snapshot_folder_name("s", open_run(store).run_id)
    # Interval 1's snapshot was drawn while the run went on to interval 3; interval 2's
    # request was superseded before the renderer was free.
    assert [step // 100 for step in _pngs(folder)] == [1, 3]
