"""Worker processes forked with a copy of one object (bcdr/forked.py)."""

from __future__ import annotations

import gc
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from bcdr.forked import ForkedPool, processes_enabled


class Probe:
    def __init__(self) -> None:
        self.value = 41

    def state(self) -> tuple[int, int, int]:
        """(pid, objects frozen for the collector, the copied value + 1)."""
        return os.getpid(), gc.get_freeze_count(), self.value + 1


@pytest.mark.skipif(not processes_enabled(2), reason="worker processes fork on Linux")
def test_workers_get_a_copy_and_the_collector_leaves_inherited_objects_alone() -> None:
    """A child never walks the objects it inherited (its collections would copy every page
    holding one); the parent gets them back for its own collections at once."""
    probe = Probe()
    pool = ForkedPool.start(probe, 2)
    assert pool is not None
    try:
        probe.value = 0  # after the fork: the workers keep the copy they were forked with
        pid, frozen, value = pool.submit("state").result()
    finally:
        pool.shutdown()
    assert pid != os.getpid() and value == 42
    assert frozen > 0
    assert gc.get_freeze_count() == 0


@pytest.mark.skipif(not processes_enabled(2), reason="worker processes fork on Linux")
def test_a_task_given_after_a_worker_died_fails_in_its_result_not_at_submit() -> None:
    """A caller learns of a dead worker from the result of any task, whether the worker died
    before or after the task was given (a backup's walk that submitted just after the death
    raised from submit, past the handler that says what happened)."""
    pool = ForkedPool.start(Probe(), 2)
    assert pool is not None
    try:
        pid, *_ = pool.submit("state").result()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        futures = []
        while time.monotonic() < deadline:  # until the executor has noticed the death
            futures.append(pool.submit("state"))
            if futures[-1].done() and futures[-1].exception() is not None:
                break
            time.sleep(0.01)
        for fut in futures:
            with pytest.raises(BrokenProcessPool):
                fut.result(timeout=30)
    finally:
        pool.shutdown()


def test_ctrl_c_while_the_pool_starts_is_the_interrupt_not_a_runtime_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a SIGINT between the executor making its manager thread and starting it: shutting the
    # half-made pool down raised "cannot join thread before it is started" over the Ctrl-C
    from concurrent.futures import ProcessPoolExecutor

    from bcdr.forked import ForkedPool

    def interrupted(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    def unjoinable(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> None:
        raise RuntimeError("cannot join thread before it is started")

    monkeypatch.setattr(ProcessPoolExecutor, "submit", interrupted)
    monkeypatch.setattr(ProcessPoolExecutor, "shutdown", unjoinable)
    with pytest.raises(KeyboardInterrupt):
        ForkedPool(object(), 1)


def test_a_signal_the_executor_turns_into_a_broken_pool_still_stops_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a SIGTERM while the workers fork, reported by the executor as a broken pool: falling
    # back to threads lost the signal, and a daemon told to stop ran its job on and slept
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from bcdr import interrupts

    def signal_then_broken(self: ProcessPoolExecutor, *args: object, **kwargs: object) -> None:
        interrupts._RECEIVED.append(15)  # what the SIGTERM handler records
        raise BrokenProcessPool("a child terminated abruptly")

    monkeypatch.setattr(interrupts, "_RECEIVED", [])
    monkeypatch.setattr(ProcessPoolExecutor, "submit", signal_then_broken)
    with pytest.raises(KeyboardInterrupt):
        ForkedPool.start(object(), 1)
    # without a signal, a broken pool is only a pool that could not be made: threads then
    monkeypatch.setattr(
        ProcessPoolExecutor,
        "submit",
        lambda self, *a, **k: (_ for _ in ()).throw(BrokenProcessPool("limit")),
    )
    assert ForkedPool.start(object(), 1) is None
