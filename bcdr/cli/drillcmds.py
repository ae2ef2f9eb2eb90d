"""``bcdr drill PLAN``: restore, verify, measure RTO and RPO, judge against the plan."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.progress import Progress
from bcdr.errors import EXIT_FAILED, EXIT_OK, EXIT_TARGET_MISSED, BcdrError, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import drill as drill_action
    from bcdr.plan import loader as loader
else:
    drill_action = lazy("bcdr.actions.drill")
    loader = lazy("bcdr.plan.loader")


def cmd_drill(args: argparse.Namespace) -> int:
    plan = loader.load_plan(args.plan)
    names = drill_action.drills_to_run(plan, args.drill)
    if (args.snapshot or args.seed is not None) and len(names) != 1:
        raise UsageError(
            "--snapshot and --seed apply to one drill",
            hint=f"name it with --drill (drills: {', '.join(names)})",
        )
    progress = Progress(enabled=False if args.json or args.quiet else None)
    reports: list[drill_action.DrillReport] = []
    errors: list[tuple[str, BcdrError]] = []
    for name in names:
        try:
            reports.append(
                drill_action.run_drill(
                    plan,
                    name,
                    snapshot=args.snapshot,
                    seed=args.seed,
                    progress=progress.restore,
                )
            )
        except BcdrError as exc:
            errors.append((name, exc))
        finally:
            progress.done()
    if args.json:
        render.emit_json(
            {
                "plan": plan.name,
                "drills": [r.to_dict() for r in reports],
                "errors": [{"drill": n, **e.to_dict()} for n, e in errors],
            }
        )
    else:
        for r in reports:
            render.drill_text(r)
        for n, e in errors:
            render.out(f"drill {n}: could not run — {e}" + (f" (hint: {e.hint})" if e.hint else ""))
    if any(not r.passed for r in reports):
        return EXIT_TARGET_MISSED
    return EXIT_FAILED if errors else EXIT_OK


def add_drill_commands(command: Command) -> None:
    p = command(
        "drill",
        cmd_drill,
        "Restore a plan's newest backup (or disk snapshot) into scratch space, verify every "
        "byte, measure time to first byte, RTO and RPO against the plan's targets, clean up and "
        "record evidence. Exit 0 when every drill passes, 4 when a target is missed or "
        "verification fails, 1 when a drill cannot run.",
        repo=False,
    )
    p.add_argument("plan", metavar="PLAN", help="plan file")
    p.add_argument(
        "--drill",
        "-d",
        action="append",
        default=[],
        metavar="NAME",
        help="only this drill; repeatable",
    )
    p.add_argument(
        "--snapshot",
        metavar="ID",
        help="drill this snapshot (id or prefix; for disk drills a recovery point's id, name or "
        "time stamp) instead of the newest",
    )
    p.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="replay a sampled drill: the seed a previous drill recorded picks the same files",
    )


Command = Callable[..., argparse.ArgumentParser]
