"""Keep freed heap memory for reuse, so repeated large temporaries do not page-fault.

glibc returns every block over its mmap threshold (128 KiB to 32 MiB, adjusted as the program
runs) to the kernel when it is freed, and trims the top of the heap. A batch of metrics frees
and reallocates the same few megabytes many times, and each fresh page costs a fault: on small
VMs that can make an FFT several times slower. texwatchd and the benchmarks fix both
thresholds once, at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
_TRIM = 1024 * 1024 * 1024


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds; True when applied (glibc on Linux only)."""
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
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM))
