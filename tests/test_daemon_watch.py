"""The watcher wakes on a store's commit (rename onto zarr.json) and on new runs under --root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from texwatch.daemon._watch import Watcher


def _commit(store: Path, text: str = "{}") -> None:
    """Publish zarr.json the way zarr >= 3.1.3 does: write a *.partial file, rename it."""
    partial = store / "zarr.0123.partial"
    partial.write_text(text)
    os.replace(partial, store / "zarr.json")


def _partial_only(store: Path) -> None:
    (store / "c.0.abcd.partial").write_bytes(b"x")


@pytest.mark.parametrize("poll", [None, 0.05])
def test_wakes_on_commit_and_ignores_partials(tmp_path: Path, poll: float | None) -> None:
    store = tmp_path / "x.zarr"
    store.mkdir()
    with Watcher(poll=poll, rescan=0.5, debounce=0.0) as watcher:
        assert watcher.backend == ("native" if poll is None else "polling")
        watcher.add_store(store)
        watcher.wait(0.3)  # drain anything scheduling produced
        _partial_only(store)
        assert watcher.wait(0.4) is False
        _commit(store)
        assert watcher.wait(5.0) is True


def test_reading_a_marker_does_not_wake(tmp_path: Path) -> None:
    """texwatchd reads every store's zarr.json each turn: inotify's open/close events of those
    reads must not wake it, or an idle daemon starts round after round."""
    store = tmp_path / "x.zarr"
    store.mkdir()
    _commit(store)
    with Watcher(rescan=0.5, debounce=0.0) as watcher:
        watcher.add_store(store)
        watcher.wait(0.3)
        (store / "zarr.json").read_bytes()
        assert watcher.wait(0.4) is False
        _commit(store)
        assert watcher.wait(5.0) is True


@pytest.mark.parametrize("poll", [None, 0.05])
def test_root_picks_up_new_runs(tmp_path: Path, poll: float | None) -> None:
    with Watcher(root=tmp_path, poll=poll, rescan=0.5, debounce=0.0) as watcher:
        (tmp_path / "notes").mkdir()
        assert watcher.wait(0.4) is False
        (tmp_path / "new.zarr").mkdir()
        assert watcher.wait(5.0) is True


def test_wait_times_out_without_events_and_wake_interrupts(tmp_path: Path) -> None:
    with Watcher(rescan=0.05) as watcher:
        assert watcher.wait() is False
        watcher.wake()
        assert watcher.wait(5.0) is True


def test_a_store_deleted_while_watched_does_not_break_the_watcher(tmp_path: Path) -> None:
    gone, kept = tmp_path / "gone.zarr", tmp_path / "kept.zarr"
    gone.mkdir()
    kept.mkdir()
    with Watcher(rescan=0.5, debounce=0.0) as watcher:
        watcher.add_store(gone)
        watcher.add_store(kept)
        for f in gone.iterdir():
            f.unlink()
        gone.rmdir()
        watcher.remove_store(gone)
        watcher.wait(0.3)
        _commit(kept)
        assert watcher.wait(5.0) is True


def test_bad_poll_interval_is_rejected() -> None:
    with pytest.raises(ValueError, match="--poll"):
        Watcher(poll=0)
