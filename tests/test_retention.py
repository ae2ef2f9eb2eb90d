"""Retention policy: golden files for calendar edges, and the rules that protect data.

Golden files live in tests/golden/retention/<case>.txt; after an intended change, regenerate
them with BCDR_UPDATE_GOLDEN=1 and review the diff line by line.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bcdr.retention import Decision, EmptyPolicy, Point, Policy, decide

GOLDEN = Path(__file__).parent / "golden" / "retention"


def _t(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _daily(first: str, last: str, at: str = "02:00") -> list[str]:
    day, end = _t(first + "T" + at + "+00:00"), _t(last + "T" + at + "+00:00")
    out = []
    while day <= end:
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


CASES: dict[str, tuple[Policy, str, str, list[str]]] = {
    # ISO weeks across a new year: 2026-12-28..2027-01-03 is all week 2026-W53.
    "iso-weeks-new-year": (
        Policy(weekly=3),
        "UTC",
        "2027-01-10T12:00:00+00:00",
        _daily("2026-12-20", "2027-01-10"),
    ),
    # Month ends of 31, 28 and 31 days, and 2028's 29 February.
    "months-of-different-length": (
        Policy(monthly=5, daily=2),
        "UTC",
        "2028-03-02T00:00:00+00:00",
        [
            "2027-12-30T12:00:00+00:00",
            "2027-12-31T12:00:00+00:00",
            "2028-01-01T12:00:00+00:00",
            "2028-01-31T12:00:00+00:00",
            "2028-02-01T12:00:00+00:00",
            "2028-02-28T12:00:00+00:00",
            "2028-02-29T12:00:00+00:00",
            "2028-03-01T12:00:00+00:00",
        ],
    ),
    # The same instants fall on different days in Berlin and in UTC.
    "time-zone-utc": (
        Policy(daily=2),
        "UTC",
        "2026-11-22T12:00:00+00:00",
        [
            "2026-11-20T22:30:00+00:00",
            "2026-11-20T23:30:00+00:00",
            "2026-11-21T00:30:00+00:00",
            "2026-11-21T22:30:00+00:00",
            "2026-11-21T23:30:00+00:00",
        ],
    ),
    "time-zone-berlin": (
        Policy(daily=2),
        "Europe/Berlin",
        "2026-11-22T12:00:00+00:00",
        [
            "2026-11-20T22:30:00+00:00",
            "2026-11-20T23:30:00+00:00",
            "2026-11-21T00:30:00+00:00",
            "2026-11-21T22:30:00+00:00",
            "2026-11-21T23:30:00+00:00",
        ],
    ),
    # Berlin's clocks go back at 03:00 on 2026-10-25: 02:xx happens twice, two real hours.
    "hourly-across-dst-fall-back": (
        Policy(hourly=3),
        "Europe/Berlin",
        "2026-10-25T03:00:00+00:00",
        [
            "2026-10-24T23:10:00+00:00",
            "2026-10-24T23:40:00+00:00",
            "2026-10-25T00:10:00+00:00",
            "2026-10-25T00:40:00+00:00",
            "2026-10-25T01:10:00+00:00",
            "2026-10-25T01:40:00+00:00",
        ],
    ),
    # Several points in one period: only the newest of the day counts for `daily`.
    "several-in-one-day": (
        Policy(last=2, daily=2),
        "UTC",
        "2026-11-22T23:59:00+00:00",
        [
            "2026-11-21T06:00:00+00:00",
            "2026-11-21T18:00:00+00:00",
            "2026-11-22T01:00:00+00:00",
            "2026-11-22T07:00:00+00:00",
            "2026-11-22T13:00:00+00:00",
            "2026-11-22T19:00:00+00:00",
        ],
    ),
    # Weeks without a backup do not use up a weekly slot.
    "weekly-with-gaps": (
        Policy(weekly=3),
        "UTC",
        "2026-11-22T12:00:00+00:00",
        [
            "2026-09-01T02:00:00+00:00",
            "2026-09-15T02:00:00+00:00",
            "2026-10-20T02:00:00+00:00",
            "2026-11-03T02:00:00+00:00",
            "2026-11-04T02:00:00+00:00",
        ],
    ),
    # `within` counts back from the newest point; yearly keeps the newest of each year.
    "within-and-yearly": (
        Policy(within=timedelta(days=10), within_text="10d", yearly=3),
        "UTC",
        "2027-03-01T00:00:00+00:00",
        [
            "2025-06-01T02:00:00+00:00",
            "2025-12-31T23:00:00+00:00",
            "2026-01-01T01:00:00+00:00",
            "2026-12-20T02:00:00+00:00",
            "2026-12-31T02:00:00+00:00",
            "2027-01-05T02:00:00+00:00",
        ],
    ),
    # A clock ahead: the point dated after now is kept, whatever the policy says.
    "clock-ahead": (
        Policy(last=1),
        "UTC",
        "2026-11-22T12:00:00+00:00",
        [
            "2026-11-20T02:00:00+00:00",
            "2026-11-21T02:00:00+00:00",
            "2026-11-23T02:00:00+00:00",
        ],
    ),
}


def render(policy: Policy, tz: str, now: str, decisions: list[Decision]) -> str:
    lines = [f"# policy: {policy.describe()}; time zone: {tz}; now: {now}"]
    for d in decisions:
        verdict = "keep  " if d.keep else "remove"
        lines.append(f"{d.point.time.isoformat()}  {verdict}  {', '.join(d.reasons)}".rstrip())
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    policy, tz, now, times = CASES[case]
    points = [Point(f"s{i:02d}", _t(t)) for i, t in enumerate(times)]
    text = render(policy, tz, now, decide(policy, points, _t(now), ZoneInfo(tz)))
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("BCDR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{case}: decisions differ from {path}"


def test_newest_is_always_kept_and_says_so() -> None:
    points = [Point(str(i), datetime(2026, 1, 1, 0, i, tzinfo=UTC)) for i in range(5)]
    decisions = decide(Policy(daily=1), points, datetime(2026, 1, 2, tzinfo=UTC), UTC)
    assert decisions[0].point.id == "4" and "newest" in decisions[0].reasons
    assert [d.keep for d in decisions] == [True, False, False, False, False]


def test_policy_keeping_nothing_is_refused() -> None:
    with pytest.raises(EmptyPolicy):
        decide(Policy(daily=0), [], datetime(2026, 1, 1, tzinfo=UTC), UTC)


def test_every_point_gets_one_decision_and_order_is_newest_first() -> None:
    points = [Point(str(i), datetime(2026, 1, 1 + i % 20, i % 24, tzinfo=UTC)) for i in range(60)]
    decisions = decide(Policy(daily=5, weekly=2), points, datetime(2026, 2, 1, tzinfo=UTC), UTC)
    assert sorted(d.point.id for d in decisions) == sorted(p.id for p in points)
    times = [d.point.time for d in decisions]
    assert times == sorted(times, reverse=True)
    # days 20..16; weekly #1 is day 20 (week 2026-W04), weekly #2 day 18 (W03), already kept
    assert sum(d.keep for d in decisions) == 5
