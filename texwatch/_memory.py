"""Keep freed heap memory for reuse, so repeated large temporaries do not page-fault.

glibc gives every block over its mmap threshold (128 KiB to 32 MiB, adjusted as the program
runs) its own mapping, returned to the kernel when freed, and trims the top of the heap. A batch
of metrics frees and reallocates the same megabytes many times, and each fresh page costs a
fault: on a small VM that made the same FFT take 16 ms in one process and 34 ms in the next.
texwatchd and the benchmarks therefore serve every block from the heap and keep what is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM = 1024 * 1024 * 1024  # free heap top kept before any is returned to the kernel


def retain_freed_memory() -> bool:
    """No per-block mappings, and a 1 GiB trim threshold; True when applied (glibc, Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM))
