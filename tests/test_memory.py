"""texwatchd's allocator setting: applied where glibc is, a clean False elsewhere."""

from __future__ import annotations

import platform
import sys

from texwatch._memory import retain_freed_memory


def test_retain_freed_memory_applies_on_glibc() -> None:
    has_glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert retain_freed_memory() is has_glibc
