"""When jobs fire: shorthands become cron expressions at a time spread per job, cron
expressions are evaluated in the plan's time zone. Pure functions of their inputs."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter

from bcdr.plan.types import Schedule, TimeOfDay, Weekday

NIGHT_START_HOUR = 1
NIGHT_MINUTES = 4 * 60  # shorthands fire inside 01:00-05:00


def spread(plan: str, job: str) -> int:
    """A stable number in [0, 2**32) from the plan and job names."""
    return int.from_bytes(hashlib.blake2b(f"{plan}/{job}".encode(), digest_size=4).digest(), "big")


def cron_for(
    schedule: Schedule, plan: str, job: str, at: TimeOfDay | None, on: Weekday | None
) -> str:
    """The 5-field cron expression a job runs on."""
    if not schedule.is_shorthand:
        return schedule.spec
    h = spread(plan, job)
    minutes = NIGHT_START_HOUR * 60 + h % NIGHT_MINUTES
    hour, minute = (at.hour, at.minute) if at else divmod(minutes, 60)
    if schedule.spec == "hourly":
        return f"{at.minute if at else h % 60} * * * *"
    if schedule.spec == "daily":
        return f"{minute} {hour} * * *"
    if schedule.spec == "weekly":
        day = (on.index + 1) % 7 if on else 0  # cron: 0 = sunday; default sunday
        return f"{minute} {hour} * * {day}"
    return f"{minute} {hour} 1 * *"  # monthly


def next_runs(cron: str, tz: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    it = croniter(cron, after.astimezone(tz))
    return [it.get_next(datetime) for _ in range(count)]


def longest_interval(cron: str, tz: ZoneInfo, start: datetime) -> timedelta:
    """The longest gap between consecutive runs over the year after ``start``."""
    it = croniter(cron, start.astimezone(tz))
    prev = it.get_next(datetime)
    longest = timedelta(0)
    end = prev + timedelta(days=366)
    for _ in range(20000):  # enough for an hourly schedule over two years
        nxt = it.get_next(datetime)
        longest = max(longest, nxt - prev)
        if nxt > end:
            break
        prev = nxt
    return longest
