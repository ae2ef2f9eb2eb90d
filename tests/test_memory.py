"""Process-wide malloc tuning of the bcdr command."""

from __future__ import annotations

import platform
import sys

import pytest

from bcdr.memory import tune_malloc


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_malloc_is_tuned_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
    for env in names:
        monkeypatch.delenv(env, raising=False)
    assert tune_malloc() == names[:1]
    assert tune_malloc(keep=2**24) == names  # glibc accepted every one
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert tune_malloc(keep=2**24) == names[1:]  # the user's setting wins
