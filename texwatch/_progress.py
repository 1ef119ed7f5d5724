"""The progress bar of the post-hoc commands (report, diagnose, dataset): tqdm on stderr."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["progress"]


class _Bar(tqdm):
    """tqdm without its monitor thread: the commands refresh often enough, and no thread leaks."""

    monitor_interval = 0


def progress(total: int, desc: str, *, quiet: bool) -> tqdm:
    """A progress bar of ``total`` units on stderr; silent (and free) when ``quiet`` or when
    stderr is not a terminal (logs and pipes get the result lines only, not ``\r`` updates)."""
    stream = sys.stderr
    shown = not quiet and stream is not None and stream.isatty()
    return _Bar(total=total, desc=desc, disable=not shown, file=stream, unit="step", leave=False)
