"""glibc malloc tuning at start-up: what is asked of mallopt, and when nothing is."""

from __future__ import annotations

import ctypes
import platform
from typing import Any

import pytest

from officerouter.allocator import M_MMAP_THRESHOLD, set_mmap_threshold


class FakeLibc:
    """A C library whose mallopt records its calls and answers 1 (success)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        outer = self

        class Mallopt:
            argtypes: Any = None
            restype: Any = None

            def __call__(self, param: int, value: int) -> int:
                outer.calls.append((param, value))
                return 1

        self.mallopt = Mallopt()


def test_sets_the_threshold_through_mallopt():
    libc = FakeLibc()
    assert set_mmap_threshold(32768, environ={}, libc=lambda: libc)
    assert libc.calls == [(M_MMAP_THRESHOLD, 32768)]
    assert libc.mallopt.argtypes == [ctypes.c_int, ctypes.c_int]


@pytest.mark.parametrize(
    "environ",
    [
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ],
)
def test_an_operators_own_tuning_wins(environ):
    libc = FakeLibc()
    assert not set_mmap_threshold(32768, environ=environ, libc=lambda: libc)
    assert libc.calls == []


def test_zero_leaves_malloc_alone():
    libc = FakeLibc()
    assert not set_mmap_threshold(0, environ={}, libc=lambda: libc)
    assert libc.calls == []


def test_a_libc_without_mallopt_is_left_alone():
    class NotGlibc:
        pass

    assert not set_mmap_threshold(32768, environ={}, libc=NotGlibc)


def test_the_real_c_library():
    """glibc takes the daemon's default; another C library is left as it is."""
    glibc = platform.libc_ver()[0] == "glibc"
    assert set_mmap_threshold(32768, environ={}) is glibc
