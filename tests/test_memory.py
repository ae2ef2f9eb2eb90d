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


def test_a_restore_with_workers_keeps_at_most_what_it_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    """big_buffers_ahead(at_most) keeps the smaller of the command's figure and the caller's
    (a restore whose small files are in worker processes keeps KEEP_WITH_WORKERS)."""
    from bcdr import memory

    asked: list[tuple[tuple[int, int, str], ...]] = []

    def mallopt(settings: tuple[tuple[int, int, str], ...]) -> list[str]:
        asked.append(settings)
        return []

    monkeypatch.setattr(memory, "_mallopt", mallopt)
    memory.tune_malloc(keep=64 * 2**20)
    memory.big_buffers_ahead(memory.KEEP_WITH_WORKERS)
    memory.big_buffers_ahead()
    memory.big_buffers_ahead(2**30)
    trims = [v for settings in asked for p, v, _ in settings if p == memory.M_TRIM_THRESHOLD]
    assert trims == [memory.KEEP_WITH_WORKERS, 64 * 2**20, 64 * 2**20]
    memory.tune_malloc(keep=0)
