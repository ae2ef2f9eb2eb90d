"""``bcdr disk-snapshots PLAN``: what a plan's disk snapshot jobs hold in Azure."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.errors import EXIT_OK, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import disks as disks_action
    from bcdr.actions import run as run_action
    from bcdr.plan import loader as loader
else:
    disks_action = lazy("bcdr.actions.disks")
    run_action = lazy("bcdr.actions.run")
    loader = lazy("bcdr.plan.loader")


def cmd_disk_snapshots(args: argparse.Namespace) -> int:
    plan = loader.load_plan(args.plan)
    if not plan.snapshots:
        raise UsageError(
            "the plan has no disk snapshot jobs",
            where=str(plan.file),
            hint="add a `snapshots:` job (docs/disk-snapshots.md)",
        )
    names = run_action.select_jobs(plan, args.job)
    wrong = [n for n in names if n not in plan.snapshots]
    if args.job and wrong:
        raise UsageError(
            f"{', '.join(wrong)} {'is' if len(wrong) == 1 else 'are'} not a disk snapshot job",
            where=str(plan.file),
            hint=f"disk snapshot jobs: {', '.join(plan.snapshots)}",
        )
    rows = disks_action.list_recovery_points(plan, [n for n in names if n in plan.snapshots])
    if args.json:
        render.emit_json({"plan": plan.name, "recovery_points": [r.to_dict() for r in rows]})
    else:
        render.disk_points_text(rows)
    return EXIT_OK


def add_disk_commands(command: Command) -> None:
    p = command(
        "disk-snapshots",
        cmd_disk_snapshots,
        "List the recovery points a plan's disk snapshot jobs hold in Azure: snapshots, "
        "their copies in other regions (with copy progress) and restore points, with age.",
        repo=False,
    )
    p.add_argument("plan", metavar="PLAN", help="plan file")
    p.add_argument(
        "--job", "-j", action="append", default=[], metavar="NAME", help="only this job; repeatable"
    )


Command = Callable[..., argparse.ArgumentParser]
