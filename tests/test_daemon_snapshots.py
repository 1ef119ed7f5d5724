"""Snapshot files: written atomically with a normal file mode, and a resumed run drawn per step."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from texwatch import plots
from texwatch.daemon import main
from texwatch.daemon._snapshots import write_atomic
from texwatch.store import ITEMS, SCALARS, RunWriter


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
