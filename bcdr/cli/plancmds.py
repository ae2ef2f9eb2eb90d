"""Plan commands: ``validate``, ``plan`` (and ``plan init``), ``run``. Parse, call the action,
render; no logic."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bcdr import statedir
from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.clock import SystemClock
from bcdr.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, UsageError
from bcdr.scheduler import STATE_ENV

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import plans as plans_action
    from bcdr.actions import run as run_action
    from bcdr.actions import tick as tick
    from bcdr.plan import docs as plan_docs
    from bcdr.plan import loader as loader
    from bcdr.scheduler import history as run_history
else:
    plans_action = lazy("bcdr.actions.plans")
    run_action = lazy("bcdr.actions.run")
    tick = lazy("bcdr.actions.tick")
    plan_docs = lazy("bcdr.plan.docs")
    loader = lazy("bcdr.plan.loader")
    run_history = lazy("bcdr.scheduler.history")


def cmd_validate(args: argparse.Namespace) -> int:
    results = plans_action.validate(args.plans)
    if args.json:
        render.emit_json(
            [
                {
                    "file": r.file,
                    "valid": r.plan is not None,
                    "problems": [vars(p) for p in r.problems],
                }
                for r in results
            ]
        )
    else:
        for r in results:
            for p in r.problems:
                render.out(str(p))
            render.out(r.summary)
    return EXIT_USAGE if any(r.problems for r in results) else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    if args.plan == "init":
        return _plan_init(args)
    plan = loader.load_plan(args.plan)
    views = plans_action.describe(plan, datetime.now(UTC))
    if args.json:
        render.emit_json(
            {
                "plan": plan.name,
                "file": str(plan.file),
                "timezone": plan.timezone.name,
                "jobs": [v.to_dict() for v in views],
            }
        )
        return EXIT_OK
    render.out(f"plan {plan.name} ({plan.file}), times in {plan.timezone.name}")
    for v in views:
        targets = ", ".join(f"{k} {val}" for k, val in v.targets.items()) or "no targets"
        region = f" in {v.region}" if v.region else ""
        render.out(f"\n  {v.kind} {v.name}: {v.verb} {v.target}{region}; {targets}")
        render.out(f"    schedule  {v.cron}")
        render.out(f"    next      {', '.join(v.next_runs)}")
        if v.placements:
            render.out(f"    regions   {render.placements_text(v.placements)}")
    return EXIT_OK


def _plan_init(args: argparse.Namespace) -> int:
    text = plan_docs.sample_plan()
    if not args.out:
        sys.stdout.write(text)
        return EXIT_OK
    out = Path(args.out)
    try:
        with open(out, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise UsageError(
            "the file exists; bcdr does not overwrite it",
            where=str(out),
            hint="choose another name or remove the file",
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot write: {exc.strerror}", where=str(out)) from None
    render.out(f"wrote a sample plan to {out}; check it with `bcdr validate {out}`")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    plan = loader.load_plan(args.plan)
    quiet = args.quiet or args.json

    def started(name: str) -> None:
        if not quiet:
            sys.stderr.write(f"running {name}...\n")

    execute = None
    if not args.dry_run:
        sched = tick.Scheduler(
            run_history.History(statedir.use_state_dir(args.state_dir)),
            SystemClock(),
            source="run",
            log=_warn_metrics,
        )
        metrics = tick.metrics_path(plan, None)
        if metrics is not None:  # the plan's textfile follows on-demand runs too
            sched.metrics.watch(plan, metrics)
        execute = sched.run_job_now

    def done(result: run_action.JobResult) -> None:  # each job's result as it ends
        if not args.json:
            render.plan_job_text(result)
            sys.stdout.flush()

    results = run_action.run_plan(
        plan, args.job, dry_run=args.dry_run, on_start=started, execute=execute, on_done=done
    )
    if args.json:
        render.emit_json({"plan": plan.name, "jobs": [r.to_dict() for r in results]})
    statuses = {r.status for r in results}
    if statuses & {run_action.FAILED, run_action.NOT_AVAILABLE, tick.BUSY}:
        return EXIT_FAILED
    return EXIT_PARTIAL if run_action.PARTIAL in statuses else EXIT_OK


_SAID: set[str] = set()


def _warn_metrics(event: str, **facts: object) -> None:
    """``bcdr run`` logs no scheduler events, but a metrics file it could not write is said
    (once)."""
    reason = str(facts.get("reason"))
    if event == "metrics-failed" and reason not in _SAID:
        _SAID.add(reason)
        render.problem(f"warning: metrics not written: {reason}")


def add_plan_commands(command: Command) -> None:
    p = command(
        "validate",
        cmd_validate,
        "Check plan files; print every problem with "
        "file:line:column. Exit 2 if any plan has a problem.",
        repo=False,
    )
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files (YAML)")

    p = command(
        "plan",
        cmd_plan,
        "Show a plan's jobs, targets and next run times; "
        "`bcdr plan init [--out FILE]` writes a commented sample plan.",
        repo=False,
    )
    p.add_argument("plan", metavar="PLAN", help="plan file, or `init` for a sample plan")
    p.add_argument("--out", "-o", metavar="FILE", help="with init: write the sample here")

    p = command(
        "run",
        cmd_run,
        "Run a plan's jobs now (all, or those named with --job); "
        "a failed job does not stop the others.",
        repo=False,
    )
    p.add_argument("plan", metavar="PLAN", help="plan file")
    p.add_argument(
        "--job",
        "-j",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this job; repeatable",
    )
    p.add_argument(
        "--dry-run",
        "-n",
        action="store_true",
        help="check paths and secrets and show what would run; write nothing",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"run history and job locks, shared with the scheduler (default: ${STATE_ENV}, "
        "else $XDG_STATE_HOME/bcdr, ~/.local/state/bcdr, or /var/lib/bcdr for root)",
    )


Command = Callable[..., argparse.ArgumentParser]
