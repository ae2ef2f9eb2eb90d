"""Worker processes forked from bcdr, each working on its own copy of one object.

Backup reads small files in them and restore writes small files in them (docs/decisions.md:
"Worker processes for small files"): a forked child shares the loaded index copy-on-write,
needs no password, and has only the forking thread, so it never waits for the GIL behind the
parent's walk. What a child may touch is the owner's business: it must not use a lock another
thread of the parent may have held at the fork (an ``after_fork`` method of the object resets
what it needs), nor a network connection pool (the Azure SDK's must not cross a fork).

``BCDR_WORKER_PROCESSES=0`` turns them off (threads do the work instead).
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from bcdr.interrupts import deliver, held_interrupts, interrupts_received
from bcdr.memory import lean_heap

PR_SET_PDEATHSIG = 1  # from linux/prctl.h

#: What forked workers call into, by token: each child has the copy it was forked with.
_FORKED: dict[int, object] = {}
#: Pools not shut down yet. An interrupt may land between a pool's making and its owner
#: keeping it; at exit, multiprocessing then waits forever for workers that wait for work
#: (they ignore SIGINT). ``_reap`` kills those workers first.
_LIVE: set[ProcessPoolExecutor] = set()
_reaper_registered = False


def _reap() -> None:
    for pool in list(_LIVE):
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                proc.kill()
            except (OSError, ValueError):
                pass
    _LIVE.clear()


def _keep(pool: ProcessPoolExecutor) -> None:
    global _reaper_registered
    if not _reaper_registered:  # after multiprocessing's own exit handler: runs before it
        atexit.register(_reap)
        _reaper_registered = True
    _LIVE.add(pool)


def processes_enabled(workers: int) -> bool:
    """Fork worker processes? (Linux, more than one worker, not turned off.)"""
    return (
        workers > 1
        and sys.platform == "linux"
        and os.environ.get("BCDR_WORKER_PROCESSES", "1") != "0"
    )


def _child_init(parent: int, token: int) -> None:
    # A worker dies with bcdr: if bcdr is killed (SIGKILL, the OOM killer), no worker may
    # linger holding its pipes (Linux sends SIGKILL when the forking thread ends).
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    # A worker holds one batch at a time: it gives freed buffers back to the kernel at once
    # instead of keeping them like the parent (bcdr/memory.py): the bench backup's memory,
    # workers included, 168-178 -> 150-160 MiB.
    lean_heap()
    # Ctrl-C reaches the whole process group: the parent stops the work and shuts the pool
    # down; a child must not die of it mid-task with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # likewise (it dies with its parent)
    after_fork = getattr(_FORKED[token], "after_fork", None)
    if after_fork is not None:
        after_fork()


def _close_quietly(pool: ProcessPoolExecutor | None) -> None:
    if pool is None:
        return
    try:
        pool.shutdown(wait=True, cancel_futures=True)
    except RuntimeError:  # interrupted before its manager thread had started:
        pass  # the interrupt is what the user is told; the children see EOF
    finally:
        _LIVE.discard(pool)


def _call(token: int, method: str, *args: Any) -> Any:
    return getattr(_FORKED[token], method)(*args)


class ForkedPool:
    """``workers`` processes forked now, each holding a copy of ``target`` as it is now;
    :meth:`submit` calls one of its methods in one of them (arguments and result pickled).

    Fork before starting threads of your own or filling big buffers: the children copy every
    page the parent then writes to."""

    def __init__(self, target: object, workers: int):
        self._token = id(self)
        _FORKED[self._token] = target
        # The objects alive now go to the collector's permanent generation for the fork:
        # a child's collections then never walk them, which would write to (and so copy)
        # every page holding one (restore's workers: 17 -> 12 MiB of their own each).
        # The parent takes them back at once.
        gc.freeze()
        # Ctrl-C and SIGTERM wait until the workers are forked and the pool is whole: one
        # acted on inside os.fork's at-fork callbacks (logging's lock release) raised a
        # KeyboardInterrupt "ignored" there with a traceback, and one between the workers'
        # fork and the pool's manager thread left workers no one would stop. Blocking the
        # signal in this thread is not enough: another thread of bcdr takes it, and Python
        # runs the handler here all the same; so the handler itself holds it.
        pool: ProcessPoolExecutor | None = None
        try:
            with held_interrupts() as caught:
                try:
                    pool = ProcessPoolExecutor(
                        workers,
                        mp_context=multiprocessing.get_context("fork"),
                        initializer=_child_init,
                        initargs=(os.getpid(), self._token),
                    )
                    _keep(pool)
                    pool.submit(int).result()  # every worker forks at the first task
                except BaseException:
                    _close_quietly(pool)
                    if caught:  # what failed was the interrupt's doing: say that
                        deliver(caught[0])
                    raise
        finally:
            gc.unfreeze()
            del _FORKED[self._token]  # the children have their copies
        if caught:
            _close_quietly(pool)
            deliver(caught[0])
        self._pool = pool

    @classmethod
    def start(cls, target: object, workers: int) -> ForkedPool | None:
        """A pool, or None when the processes cannot be made (a limit on processes or
        memory): the caller then does the work in threads. A signal that arrives while the
        processes are made stops the caller, even when the executor reports it as a broken
        pool (a SIGTERM swallowed so was a daemon that never stopped)."""
        received = interrupts_received()
        try:
            return cls(target, workers)
        except (OSError, BrokenProcessPool):
            if interrupts_received() != received:
                raise KeyboardInterrupt from None
            return None

    def submit(self, method: str, *args: Any) -> Future[Any]:
        """The future of ``target.<method>(*args)`` in a worker. A pool whose worker died
        before this call gives a future failed with BrokenProcessPool (as one dying after it
        does), so callers handle a dead worker in one place: the result."""
        try:
            return self._pool.submit(_call, self._token, method, *args)
        except BrokenProcessPool as exc:
            failed: Future[Any] = Future()
            failed.set_exception(exc)
            return failed

    def shutdown(self, *, cancel: bool = True) -> None:
        """Stop the workers once their tasks are done; tasks not started yet are dropped
        with ``cancel`` (a pipeline that already has every result it needs, or stops)."""
        try:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
        finally:
            _LIVE.discard(self._pool)
