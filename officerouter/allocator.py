"""Hand large freed buffers back to the operating system (glibc only).

A presence snapshot is one byte string per newcomer, up to several hundred KB in a
big org, and a slow client's queued frames are joined into one write.  glibc's
malloc serves such buffers from its heap once its dynamic mmap threshold has
grown past them (after the first large free), and a heap fragmented by them
does not shrink: after a connection storm of 10 000 clients to one org the
daemon kept 33 KB of RSS per idle connection (docs/benchmarks.md, S3).  With a
fixed threshold, every buffer above it is its own mapping and is unmapped when
freed.  Small objects (everything per message and per connection) are below it
and unaffected.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

#: mallopt's parameter number for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD: Final = -3
#: Buffers at least this large get their own mapping (bytes).
DEFAULT_MMAP_THRESHOLD: Final = 32 * 1024


def _own_libc() -> Any:
    """The C library this process already uses (no new library is loaded)."""
    return ctypes.CDLL(None)


def set_mmap_threshold(
    threshold: int,
    *,
    environ: Mapping[str, str] = os.environ,
    libc: Callable[[], Any] = _own_libc,
) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes.

    Nothing is done when ``threshold`` is 0, when the operator already tuned
    malloc through the environment (``MALLOC_MMAP_THRESHOLD_`` or
    ``GLIBC_TUNABLES``), or when the C library has no ``mallopt`` (not glibc).

    :returns: whether the threshold was set.
    """
    if threshold <= 0:
        return False
    if "MALLOC_MMAP_THRESHOLD_" in environ or "glibc.malloc" in environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    try:
        mallopt = libc().mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
