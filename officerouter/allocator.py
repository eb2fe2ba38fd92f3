"""Give the memory freed after a burst back to the operating system (glibc only).

A presence snapshot is one byte string per newcomer, up to several hundred KB in a
big org, and a slow client's queued frames are joined into one write.  glibc's
malloc serves such buffers from its heap once its dynamic mmap threshold has
grown past them, and when they are freed the holes stay in the process: after a
storm of 10 000 clients joining one org the daemon kept 33 KB of RSS per idle
connection (docs/benchmarks.md, S3).  ``malloc_trim(0)`` hands the free pages
back; the daemon calls it once a second (about 20 µs when there is nothing to
give back).  Fixing the mmap threshold instead would give every large buffer its
own mapping, and made a 5 000-client storm 30-50 % slower.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any


def _own_libc() -> Any:
    """The C library this process already uses (no new library is loaded)."""
    return ctypes.CDLL(None)


def malloc_trimmer(libc: Callable[[], Any] = _own_libc) -> Callable[[], None] | None:
    """A call that returns free heap pages to the system, or ``None`` without glibc."""
    try:
        trim = libc().malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def trim_free_memory() -> None:
        trim(0)

    return trim_free_memory
