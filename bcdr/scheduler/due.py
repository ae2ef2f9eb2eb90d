"""Which slot of a job is due now: a pure function of the schedule, the last slot the job
finished, the time and the catch-up rule (STYLE.md: decisions as pure functions).

- A job that never ran is due at once: a job without a recovery point already misses its RPO.
- Missed slots (machine off, scheduler stopped) run **once**, as the newest missed slot.
- When clocks fall back, a slot's wall time that comes round again is not run a second time.
- With ``catch_up: false`` a slot is only run while it is fresh (within ``GRACE`` of its time);
  otherwise the job waits for its next slot.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

GRACE = timedelta(minutes=15)  # how late a tick may be and still serve a slot on time


def latest_slot(cron: str, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The newest slot at or before ``now`` (in the plan's zone), or None before the first."""
    # croniter's get_prev is strictly before its start: start one second later so a tick at
    # exactly 02:00:00 serves the 02:00 slot.
    it = croniter(cron, (now + timedelta(seconds=1)).astimezone(tz))
    try:
        prev: datetime = it.get_prev(datetime)
    except Exception:  # noqa: BLE001 - croniter raises its own errors for impossible specs
        return None
    return prev


def next_slot(cron: str, tz: ZoneInfo, after: datetime) -> datetime:
    nxt: datetime = croniter(cron, after.astimezone(tz)).get_next(datetime)
    return nxt


def due_slot(
    cron: str,
    tz: ZoneInfo,
    last: datetime | None,
    now: datetime,
    *,
    catch_up: bool = True,
    grace: timedelta = GRACE,
) -> datetime | None:
    """The slot to run now, or None when nothing is due."""
    latest = latest_slot(cron, tz, now)
    if latest is None:
        return None
    if last is not None and (latest <= last or _same_wall_time(latest, last, tz)):
        return None  # this slot is done (or is its repeat when clocks fall back)
    if last is None and catch_up:
        return latest
    if not catch_up and now - latest > grace:
        return None  # missed, and the plan says not to catch up
    return latest


def _same_wall_time(a: datetime, b: datetime, tz: ZoneInfo) -> bool:
    """When clocks fall back, 02:30 happens twice; a daily 02:30 job runs at the first only
    (as cron does). Same local wall time, at most the DST shift apart."""
    la, lb = a.astimezone(tz), b.astimezone(tz)
    return la.replace(tzinfo=None, fold=0) == lb.replace(tzinfo=None, fold=0) and abs(
        a - b
    ) <= timedelta(hours=2)
