"""``bcdr forget`` and ``bcdr prune``: parse, call the action, render."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_OK, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import forget as forget_action
    from bcdr.actions import prune as prune_action
    from bcdr.plan import types as plan_types
    from bcdr.plan.types import Duration
else:
    forget_action = lazy("bcdr.actions.forget")
    prune_action = lazy("bcdr.actions.prune")
    plan_types = lazy("bcdr.plan.types")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def _duration(text: str) -> Duration:
    try:
        return plan_types.Duration.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def _grace(text: str) -> timedelta:
    if text.strip() == "0":
        return timedelta(0)
    return _duration(text).delta


def _zone(name: str | None) -> tzinfo:
    if not name:
        local = datetime.now().astimezone().tzinfo
        assert local is not None
        return local
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(
            f"unknown time zone {name!r}", hint="use an IANA name such as UTC or Europe/Berlin"
        ) from None


def cmd_forget(args: argparse.Namespace) -> int:
    within = args.keep_within
    from bcdr.retention import Policy

    policy = Policy(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
        within=within.delta if within else None,
        within_text=within.text if within else "",
    )
    result = forget_action.forget(
        storage_spec(args), policy, _zone(args.timezone), job=args.job, dry_run=args.dry_run
    )
    report = None
    if args.prune and not args.dry_run:
        report = prune_action.prune(storage_spec(args), log=_log(args))
    if args.json:
        doc = result.to_dict()
        if report is not None:
            doc["prune"] = report.to_dict()
        render.emit_json(doc)
    else:
        render.forget_text(result)
        if report is not None:
            render.prune_text(report)
    return EXIT_OK


def _log(args: argparse.Namespace) -> Callable[[str], None] | None:
    if args.json or args.quiet:
        return None

    def log(msg: str) -> None:
        sys.stderr.write(f"{msg}\n")

    return log


def cmd_prune(args: argparse.Namespace) -> int:
    report = prune_action.prune(
        storage_spec(args),
        max_unused=args.max_unused,
        grace=args.grace,
        dry_run=args.dry_run,
        log=_log(args),
    )
    if args.json:
        render.emit_json(report.to_dict())
    else:
        render.prune_text(report)
    return EXIT_OK


def add_retention_commands(command: Command) -> None:
    p = command(
        "forget",
        cmd_forget,
        "Remove snapshots a retention policy does not keep (per job; the newest is always "
        "kept). Their data is freed by `bcdr prune`.",
    )
    p.add_argument("--job", metavar="NAME", help="only this job's snapshots (default: every job)")
    for period, what in (
        ("last", "the N newest snapshots"),
        ("hourly", "the newest snapshot of each of the last N hours that have one"),
        ("daily", "the newest snapshot of each of the last N days that have one"),
        ("weekly", "the newest snapshot of each of the last N ISO weeks that have one"),
        ("monthly", "the newest snapshot of each of the last N months that have one"),
        ("yearly", "the newest snapshot of each of the last N years that have one"),
    ):
        p.add_argument(f"--keep-{period}", type=_count, default=0, metavar="N", help=f"keep {what}")
    p.add_argument(
        "--keep-within",
        type=_duration,
        metavar="DURATION",
        help="keep every snapshot at most this much older than the job's newest (30d, 8w)",
    )
    p.add_argument(
        "--timezone",
        metavar="ZONE",
        help="time zone of days, weeks, months (default: this machine's)",
    )
    p.add_argument(
        "--dry-run", "-n", action="store_true", help="show what would be kept and removed, and why"
    )
    p.add_argument("--prune", action="store_true", help="run `bcdr prune` afterwards")

    p = command(
        "prune",
        cmd_prune,
        "Delete data no snapshot needs: marks it now, deletes it after a grace period "
        "(a later prune). Backups may run meanwhile. Also removes stale locks and, in a local "
        "repository, temporary files in tmp/ that nothing has written to for a day.",
    )
    p.add_argument(
        "--max-unused",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="repack partly used packs until at most this share is unused (default 10)",
    )
    p.add_argument(
        "--grace",
        type=_grace,
        default=timedelta(hours=1),
        metavar="DURATION",
        help="how long marked data waits before deletion (default 1h; 0 deletes in this run "
        "once no backup that started before the mark is still running)",
    )
    p.add_argument(
        "--dry-run", "-n", action="store_true", help="show what would be marked and deleted"
    )


Command = Callable[..., argparse.ArgumentParser]
