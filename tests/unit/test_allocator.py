"""Returning freed memory to the system: glibc's malloc_trim, once a second."""

from __future__ import annotations

import ctypes
import platform
from typing import Any

from officerouter.allocator import malloc_trimmer


class FakeLibc:
    """A C library whose malloc_trim records its calls."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        outer = self

        class MallocTrim:
            argtypes: Any = None
            restype: Any = None

            def __call__(self, pad: int) -> int:
                outer.calls.append(pad)
                return 1

        self.malloc_trim = MallocTrim()


def test_trims_everything_above_the_heap_top():
    libc = FakeLibc()
    trim = malloc_trimmer(lambda: libc)
    assert trim is not None
    assert libc.calls == []
    trim()
    trim()
    assert libc.calls == [0, 0]
    assert libc.malloc_trim.argtypes == [ctypes.c_size_t]


def test_a_libc_without_malloc_trim_gets_nothing():
    class NotGlibc:
        pass

    assert malloc_trimmer(NotGlibc) is None


def test_the_real_c_library():
    """glibc has it (and it runs); another C library is left alone."""
    trim = malloc_trimmer()
    assert (trim is not None) is (platform.libc_ver()[0] == "glibc")
    if trim is not None:
        trim()
