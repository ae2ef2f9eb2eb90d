"""How long one call to Azure (Blob Storage or Resource Manager) keeps retrying transient
failures: connection errors, timeouts, 408, 429, 5xx and throttling, with exponential backoff
and jitter, honouring Retry-After.

The budget is per call: a 2-minute outage costs each call waiting through it at most the
outage, and a call gives up only once it has tried for the whole budget. First of:

1. ``--retry-budget`` (every command that reaches a repository or Azure);
2. the plan's ``retry_budget`` (jobs of that plan);
3. ``$BCDR_RETRY_SECONDS``;
4. 10 minutes.

While a call waits, a line on stderr says what failed and how long it waits (at most one every
few seconds, however many calls wait at once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from bcdr.errors import UsageError
from bcdr.units import human_seconds

ENV = "BCDR_RETRY_SECONDS"
DEFAULT_S = 600.0
SAY_EVERY_S = 5.0  # a waiting line at most this often

log = logging.getLogger("bcdr.retry")
_lock = threading.Lock()
_flag: float | None = None
_plan: float | None = None
_said = 0.0
_cap: float | None = None


@contextmanager
def capped(seconds: float) -> Iterator[None]:
    """Calls started inside retry for at most ``seconds`` (recording a failure after an
    outage must not wait through another whole budget)."""
    global _cap
    before, _cap = _cap, seconds
    try:
        yield
    finally:
        _cap = before


def cap(seconds: float) -> float:
    """``seconds``, or less inside :func:`capped`."""
    return seconds if _cap is None else min(seconds, _cap)


def set_from_flag(seconds: float | None) -> None:
    global _flag
    _flag = seconds


def set_from_plan(seconds: float | None) -> None:
    global _plan
    _plan = seconds


def budget_seconds(env: Mapping[str, str] | None = None) -> float:
    if _flag is not None:
        return _flag
    if _plan is not None:
        return _plan
    text = (os.environ if env is None else env).get(ENV)
    if not text:
        return DEFAULT_S
    try:
        seconds = float(text)
        if seconds < 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"{ENV} must be a number of seconds >= 0, not {text!r}",
            hint="e.g. BCDR_RETRY_SECONDS=600 (or --retry-budget 10m)",
        ) from None
    return seconds


def say_waiting(
    service: str, what: str, problem: str, retry: int, delay: float, spent: float
) -> None:
    """One line about a call that waits to retry, unless another was said just now."""
    global _said
    now = time.monotonic()
    with _lock:
        if now - _said < SAY_EVERY_S:
            return
        _said = now
    budget = budget_seconds()
    log.warning(
        "waiting for %s: %s: %s; retry %d in %s (%s of the %s retry budget used)",
        service,
        what,
        problem,
        retry,
        human_seconds(delay, precision=1),
        human_seconds(spent, precision=0),
        human_seconds(budget, precision=0),
    )
