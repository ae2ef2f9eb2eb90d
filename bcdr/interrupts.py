"""Holding SIGINT and SIGTERM over a step that must not be cut in two.

A backup's commit (snapshot, then its evidence record) is short; an interrupt that arrives
in the middle of it is held until the step is done, so that a committed snapshot always gets
its record and the message after the interrupt can say truthfully what was committed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held_interrupts() -> Iterator[list[int]]:
    """Inside: SIGINT and SIGTERM are recorded (in the yielded list), not acted on. The caller
    decides after the block what to do about them. Outside the main thread (where handlers
    cannot be set) nothing is held."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def hold(signum: int, _frame: FrameType | None) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD}
    try:
        yield caught
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_RECEIVED: list[int] = []


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


def terminate_as_interrupt() -> None:
    """SIGTERM (systemd stopping a unit, a scheduler's timeout, ``kill``) stops a command as
    Ctrl-C does: it unwinds, releases its locks and says what was committed. Both are
    remembered (:func:`was_interrupted`): an interrupt that lands inside an import can
    surface as an ImportError of the half-loaded module, which is then an interrupt too.

    A KeyboardInterrupt raised while Python runs a callback it cannot raise from (a weakref
    callback, ``__del__``, an at-fork hook) is "ignored": Python prints it as a traceback
    and carries on, so the interrupt would be lost. :func:`_unraisable` sends the signal
    again instead, to be acted on at the next point that can raise, and prints nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        sys.unraisablehook = _unraisable


def _unraisable(info: Any) -> None:
    if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt) and _RECEIVED:
        # again, from another thread: acted on once this hook has returned, where the
        # command can be stopped (raised here, it would be "ignored" in this hook too)
        again = threading.Timer(0.02, os.kill, (os.getpid(), _RECEIVED[-1]))
        again.daemon = True
        again.start()
        return
    sys.__unraisablehook__(info)


def deliver(signum: int) -> None:
    """Act now on a signal :func:`held_interrupts` held: raise KeyboardInterrupt, as the
    handler :func:`terminate_as_interrupt` sets would have, and remember it."""
    _interrupt(signum, None)


def was_interrupted() -> bool:
    return bool(_RECEIVED)


def interrupts_received() -> int:
    """How many SIGINT/SIGTERM this process has turned into KeyboardInterrupt so far."""
    return len(_RECEIVED)
