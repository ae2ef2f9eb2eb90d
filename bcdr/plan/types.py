"""Scalar types of the plan language. Each parses a YAML value or raises ``ValueError`` whose
first argument is the message and second (optional) the hint; ``DOC`` describes the syntax for
the generated reference."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
SHORTHANDS = ("hourly", "daily", "weekly", "monthly")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
DISK_RE = re.compile(
    r"^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[-\w.()]{1,90}"
    r"/providers/Microsoft\.Compute/disks/[-\w.]{1,80}$"
)


def _text(raw: object, what: str) -> str:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise ValueError(f"expected {what}, got {type_name(raw)}")
    return str(raw)


def type_name(raw: object) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, bool):
        return f"a boolean ({'true' if raw else 'false'})"
    return {
        str: "a string",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "a mapping",
    }.get(type(raw), type(raw).__name__)


@dataclass(frozen=True)
class Duration:
    """``90s``, ``30m``, ``26h``, ``8d``, ``2w``."""

    DOC: ClassVar[str] = "a duration: a number and a unit, `90s`, `30m`, `26h`, `8d` or `2w`"
    seconds: int
    text: str

    @classmethod
    def parse(cls, raw: object) -> Duration:
        text = _text(raw, "a duration like 26h").strip()
        m = re.fullmatch(r"(\d{1,6})\s*([smhdw])", text)
        if not m:
            raise ValueError(
                f"{text!r} is not a duration", "write a number and a unit: 90s, 30m, 26h, 8d, 2w"
            )
        seconds = int(m.group(1)) * UNITS[m.group(2)]
        if seconds == 0:
            raise ValueError("a duration must be longer than zero")
        return cls(seconds, text)

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return self.text


def _fires(cron: str) -> bool:
    """Does a valid cron expression match any time at all? (One that matches only 29 February
    fires in every leap year.)"""
    from croniter import CroniterBadDateError, croniter

    try:
        croniter(cron, datetime(2001, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


@dataclass(frozen=True)
class Schedule:
    """A shorthand or a 5-field cron expression."""

    DOC: ClassVar[str] = (
        "`hourly`, `daily`, `weekly`, `monthly`, or a 5-field cron expression "
        "(`30 2 * * 1-5`), in the plan's timezone"
    )
    spec: str

    @classmethod
    def parse(cls, raw: object) -> Schedule:
        text = " ".join(_text(raw, "a schedule").split())
        if text.lower() in SHORTHANDS:
            return cls(text.lower())
        if len(text.split()) != 5:
            raise ValueError(
                f"{text!r} is neither a shorthand nor a 5-field cron expression",
                "use hourly, daily, weekly, monthly, or minute hour day month weekday",
            )
        from croniter import croniter  # 40 ms to import: only plans with cron specs pay

        if not croniter.is_valid(text):
            raise ValueError(
                f"{text!r} is not a valid cron expression",
                "fields: minute hour day-of-month month day-of-week",
            )
        if not _fires(text):
            raise ValueError(
                f"{text!r} never fires: no date matches its day and month fields "
                "(February 30th never comes)",
                "check the day-of-month and month fields",
            )
        return cls(text)

    @property
    def is_shorthand(self) -> bool:
        return self.spec in SHORTHANDS

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class TimeOfDay:
    DOC: ClassVar[str] = 'a time of day, `"02:30"` (quote it)'
    hour: int
    minute: int

    @classmethod
    def parse(cls, raw: object) -> TimeOfDay:
        if isinstance(raw, int) and not isinstance(raw, bool):  # YAML 1.1 reads 02:30 as 150
            raise ValueError("write the time in quotes", 'at: "02:30"')
        text = _text(raw, 'a time like "02:30"').strip()
        m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", text)
        if not m:
            raise ValueError(f"{text!r} is not a time of day", 'use 24-hour HH:MM, e.g. "02:30"')
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.hour:02d}:{self.minute:02d}"


@dataclass(frozen=True)
class Weekday:
    DOC: ClassVar[str] = "a day of the week, `monday` ... `sunday`"
    index: int  # 0 = monday

    @classmethod
    def parse(cls, raw: object) -> Weekday:
        text = _text(raw, "a weekday").strip().lower()
        for i, day in enumerate(WEEKDAYS):
            if text in (day, day[:3]):
                return cls(i)
        raise ValueError(f"{text!r} is not a day of the week", "monday ... sunday")

    def __str__(self) -> str:
        return WEEKDAYS[self.index]


@dataclass(frozen=True)
class Percent:
    DOC: ClassVar[str] = "a percentage, `100%` or `5%`"
    value: float

    @classmethod
    def parse(cls, raw: object) -> Percent:
        text = _text(raw, "a percentage like 10%").strip()
        m = re.fullmatch(r"(\d{1,3}(?:\.\d+)?)\s*%", text)
        if not m or not 0 <= float(m.group(1)) <= 100:
            raise ValueError(f"{text!r} is not a percentage between 0% and 100%", "e.g. 100% or 5%")
        return cls(float(m.group(1)))

    def __str__(self) -> str:
        return f"{self.value:g}%"


@dataclass(frozen=True)
class Timezone:
    DOC: ClassVar[str] = "an IANA time zone, `UTC` or `Europe/Amsterdam`"
    name: str

    @classmethod
    def parse(cls, raw: object) -> Timezone:
        text = _text(raw, "a time zone").strip()
        try:
            if "/" in text or text.upper() == "UTC" or text in available_timezones():
                ZoneInfo(text)
                return cls(text)
        except (ZoneInfoNotFoundError, ValueError):
            pass
        raise ValueError(
            f"{text!r} is not a known time zone",
            "use an IANA name such as UTC, Europe/Amsterdam, America/New_York",
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.name)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class EnvName:
    DOC: ClassVar[str] = "the name of an environment variable, `AZURE_STORAGE_KEY`"
    name: str

    @classmethod
    def parse(cls, raw: object) -> EnvName:
        text = _text(raw, "an environment variable name")
        if not ENV_RE.fullmatch(text):
            raise ValueError(
                "this is not an environment variable name",
                "name the variable that holds the secret (letters, digits, _), never the secret",
            )
        return cls(text)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class DiskId:
    DOC: ClassVar[str] = (
        "an Azure managed-disk resource id, `/subscriptions/<uuid>/resourceGroups/<rg>/"
        "providers/Microsoft.Compute/disks/<name>`"
    )
    id: str

    @classmethod
    def parse(cls, raw: object) -> DiskId:
        text = _text(raw, "a disk resource id").strip()
        if not DISK_RE.fullmatch(text):
            raise ValueError(
                "this is not a managed-disk resource id", "copy it from `az disk show --query id`"
            )
        return cls(text)

    def __str__(self) -> str:
        return self.id


@dataclass(frozen=True)
class SubscriptionId:
    DOC: ClassVar[str] = "an Azure subscription id, a GUID `00000000-0000-0000-0000-000000000000`"
    id: str

    @classmethod
    def parse(cls, raw: object) -> SubscriptionId:
        text = _text(raw, "a subscription id").strip()
        if not GUID_RE.fullmatch(text):
            raise ValueError(
                "this is not a subscription id (a GUID)",
                "copy it from `az account show --query id`",
            )
        return cls(text.lower())

    def __str__(self) -> str:
        return self.id
