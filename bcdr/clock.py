"""Injected time: everything that asks "what time is it" takes a Clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware datetime."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait (a fake clock just moves on)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware datetime")
        self._now = start
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        self._now = when

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self._now += timedelta(seconds=seconds)


def parse_aware(text: object) -> datetime:
    """A stored time: ISO 8601 with a UTC offset, as everything bcdr writes. Raises ValueError
    for anything else; a time without an offset cannot be compared with the others."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a time")
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"time {text[:40]!r} has no UTC offset")
    return when
