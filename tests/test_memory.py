"""Process-wide malloc tuning of the bcdr command."""

from __future__ import annotations

import platform
import sys

import pytest

from bcdr.memory import big_buffers_ahead, lean_heap, tune_malloc


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_malloc_is_tuned_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    for env in names:
        monkeypatch.delenv(env, raising=False)
    assert tune_malloc() == names[:1]
    assert big_buffers_ahead() == []  # the command did not ask
    assert tune_malloc(keep=2**24) == names[:1]
    assert big_buffers_ahead() == names[1:]  # glibc accepted every one
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "8")
    assert tune_malloc(keep=2**24) == []  # the user's settings win
    assert big_buffers_ahead() == names[1:2]
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    assert lean_heap() == names[1:]  # a forked worker gives buffers back at once
