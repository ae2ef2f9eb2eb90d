"""Retention: which recovery points of one job to keep, and why. Pure: no I/O, no clock.

The same engine decides for file snapshots (``bcdr forget``, a plan's ``retention:``) and for
managed-disk snapshots. Rules, newest point first (restic's semantics, which users know):

- ``last N``: the N newest points.
- ``hourly/daily/weekly/monthly/yearly N``: the newest point of each of the N most recent
  periods *that have a point* (a period without a backup does not use up a slot). Periods are
  taken in the given time zone; weeks are ISO weeks (2027-01-01 is in week 2026-W53).
- ``within D``: every point at most D older than the newest point. Measured from the newest
  point, not from now, so a job that stopped running does not age out its whole history.
- The newest point is always kept, and a point dated after ``now`` (a clock ahead) is kept.

A policy that keeps nothing is refused (:class:`EmptyPolicy`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

Period = tuple[str, Callable[[datetime], str]]

PERIODS: tuple[Period, ...] = (
    # The UTC offset keeps the two real hours of a DST fall-back (02:00 twice) apart.
    ("hourly", lambda t: t.strftime("%Y-%m-%d %H:00%z")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
)


class EmptyPolicy(ValueError):
    """A policy with no rule that keeps anything."""


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None
    within_text: str = ""  # how the user wrote ``within`` ("30d"), for reasons

    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in PERIODS}

    def keeps_something(self) -> bool:
        return bool(self.last or any(self.counts().values()) or self.within)

    def describe(self) -> str:
        parts = [f"last {self.last}"] if self.last else []
        parts += [f"{name} {n}" for name, n in self.counts().items() if n]
        if self.within:
            parts.append(f"within {self.within_text or self.within}")
        return ", ".join(parts) or "nothing"

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"last": self.last, **self.counts()}
        out["within"] = self.within_text or (str(self.within) if self.within else None)
        return out


@dataclass(frozen=True)
class Point:
    """A recovery point: a snapshot id and when it was taken (timezone-aware)."""

    id: str
    time: datetime


@dataclass(frozen=True)
class Decision:
    point: Point
    reasons: tuple[str, ...]  # empty: remove

    @property
    def keep(self) -> bool:
        return bool(self.reasons)

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.point.id,
            "time": self.point.time.isoformat(),
            "keep": self.keep,
            "reasons": list(self.reasons),
        }


def decide(policy: Policy, points: Iterable[Point], now: datetime, tz: tzinfo) -> list[Decision]:
    """One decision per point, newest first. Raises EmptyPolicy for a policy keeping nothing."""
    if not policy.keeps_something():
        raise EmptyPolicy("the retention policy keeps nothing")
    ordered = sorted(points, key=lambda p: (p.time, p.id), reverse=True)
    left = {name: n for name, n in policy.counts().items()}
    seen: dict[str, str] = {}
    kept_last = 0
    out = []
    for i, point in enumerate(ordered):
        reasons = []
        if i == 0:
            reasons.append("newest")
        if point.time > now:
            reasons.append("dated in the future (clock ahead?)")
        if kept_last < policy.last:
            kept_last += 1
            reasons.append(f"last #{kept_last}")
        local = point.time.astimezone(tz)
        for name, period in PERIODS:
            if left[name] <= 0:
                continue
            label = period(local)
            if seen.get(name) != label:
                seen[name] = label
                left[name] -= 1
                reasons.append(f"{name} #{getattr(policy, name) - left[name]} ({label})")
        if policy.within is not None and point.time >= ordered[0].time - policy.within:
            reasons.append(f"within {policy.within_text or policy.within} of the newest")
        out.append(Decision(point, tuple(reasons)))
    return out
