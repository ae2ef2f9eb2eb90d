"""``bcdr tick``, ``bcdr schedule run|install|remove|rebuild``, ``bcdr status`` and
``bcdr metrics``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bcdr import statedir
from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.clock import SystemClock
from bcdr.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_TARGET_MISSED,
    EXIT_USAGE,
    BcdrError,
    UsageError,
)
from bcdr.scheduler import STATE_ENV

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import run as run_action
    from bcdr.actions import tick as tick
    from bcdr.plan import loader as loader
    from bcdr.plan.model import Plan
    from bcdr.scheduler import history as run_history
    from bcdr.scheduler import install as install
    from bcdr.scheduler import metrics as metrics
    from bcdr.scheduler import status as status
    from bcdr.scheduler.history import History
else:
    run_action = lazy("bcdr.actions.run")
    tick = lazy("bcdr.actions.tick")
    loader = lazy("bcdr.plan.loader")
    status = lazy("bcdr.scheduler.status")
    install = lazy("bcdr.scheduler.install")
    metrics = lazy("bcdr.scheduler.metrics")
    run_history = lazy("bcdr.scheduler.history")


def _state(args: argparse.Namespace) -> History:
    return run_history.History(statedir.use_state_dir(args.state_dir))


def _exit_code(outcomes: list[tick.Outcome], bad_plans: int) -> int:
    statuses = {o.status for o in outcomes}
    if run_action.FAILED in statuses:
        return EXIT_FAILED
    if bad_plans:
        return EXIT_USAGE
    return EXIT_PARTIAL if run_action.PARTIAL in statuses else EXIT_OK


def cmd_tick(args: argparse.Namespace) -> int:
    # SIGTERM (systemd stopping the service, a timeout) stops a job as Ctrl-C does: cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    clock = SystemClock()
    log = _event_log(args, clock)
    history = _state(args)
    plans, bad = tick.load_plans(args.plans, log)
    sched = tick.Scheduler(history, clock, log=log, source="tick")
    outcomes: list[tick.Outcome] = []
    summary = args.summary or sys.stdout.isatty()

    def said(o: tick.Outcome) -> None:  # each job's result as it ends
        if args.json or not summary:
            return
        attempts = f" after {o.attempts} attempts" if o.attempts > 1 else ""
        line = f"{o.kind} {o.plan}/{o.job}: {o.status}{attempts} — {o.message}"
        for text in [line, *(f"  note: {note}" for note in o.notes)]:
            if o.status != "ok" and args.quiet:  # with --quiet, only what did not go well
                render.problem(text)
            else:
                render.out(text)
        sys.stdout.flush()

    paths = {p.name: tick.metrics_path(p, getattr(args, "metrics_textfile", None)) for p in plans}
    tick.watch_metrics(sched, plans, paths)
    for plan in plans:
        outcomes += sched.tick(plan, paths[plan.name], on_done=said)
    if args.json:
        render.emit_json({"outcomes": [o.to_dict() for o in outcomes]})
    elif not outcomes and not bad and summary:
        render.out("nothing due")
    return _exit_code(outcomes, bad)


def _event_log(args: argparse.Namespace, clock: SystemClock) -> tick.EventLog:
    """The scheduler's events on stderr (JSON lines or logfmt); bcdr's own log records go
    through it too, so the stream stays one format."""
    from bcdr.scheduler.eventlog import route_bcdr_logging

    log = tick.EventLog(fmt=args.log_format, clock=clock, quiet=args.quiet)
    route_bcdr_logging(log)
    return log


def cmd_schedule(args: argparse.Namespace) -> int:
    return {
        "run": _schedule_run,
        "install": _schedule_install,
        "remove": _schedule_remove,
        "rebuild": _schedule_rebuild,
    }[args.action](args)


def _schedule_run(args: argparse.Namespace) -> int:
    """The daemon (actions/tick.py ``run_daemon``); SIGTERM stops it cleanly."""
    clock = SystemClock()
    log = _event_log(args, clock)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM -> KeyboardInterrupt
    tick.run_daemon(args.plans, _state(args), clock, log, getattr(args, "metrics_textfile", None))
    return EXIT_OK


def _plans_and_command(args: argparse.Namespace) -> tuple[list[Plan], install.TickCommand, str]:
    plans = [loader.load_plan(f) for f in args.plans]  # refuse to schedule a plan that is not valid
    cmd = install.TickCommand(
        plans=tuple(Path(f).resolve() for f in args.plans),
        every_minutes=args.every,
        state_dir=Path(args.state_dir).resolve() if args.state_dir else None,
        metrics_textfile=Path(args.metrics_textfile).resolve() if args.metrics_textfile else None,
    )
    return plans, cmd, install.unit_name(args.name, [p.name for p in plans])


def _schedule_install(args: argparse.Namespace) -> int:
    _, cmd, name = _plans_and_command(args)
    if args.cron:
        lines = install.install_cron(
            name,
            cmd,
            Path(args.log_file).resolve() if args.log_file else None,
            print_only=args.print,
        )
    else:
        lines = install.install_systemd(
            name,
            cmd,
            user=args.user,
            env_file=Path(args.env_file).resolve() if args.env_file else None,
            folder=Path(args.unit_dir) if args.unit_dir else None,
            print_only=args.print,
            enable=not args.no_enable,
        )
    for line in lines:
        render.out(line)
    return EXIT_OK


def _schedule_remove(args: argparse.Namespace) -> int:
    plans = [loader.load_plan(f) for f in args.plans]
    name = install.unit_name(args.name, [p.name for p in plans])
    if args.cron:
        render.out(install.remove_cron(name))
    else:
        render.out(
            install.remove_systemd(
                name,
                user=args.user,
                folder=Path(args.unit_dir) if args.unit_dir else None,
                disable=not args.no_enable,
            )
        )
    return EXIT_OK


def _read_evidence(plan: Plan, history: History, *, quiet: bool) -> None:
    """``status`` on a host with no history of the plan (a new or rebuilt host, a laptop):
    its runs are read from the repositories' evidence first, as ``schedule rebuild`` does."""
    try:
        added = sum(tick.rebuild(plan, history).values())
    except BcdrError as exc:
        if not quiet:
            sys.stderr.write(
                f"note: no history of plan {plan.name} on this host, and its repositories "
                f"could not be read ({exc}); what follows knows no run\n"
            )
        return
    if not quiet:
        sys.stderr.write(
            f"note: no history of plan {plan.name} on this host: {added} run(s) read from "
            "its repositories' evidence\n"
        )


def _schedule_rebuild(args: argparse.Namespace) -> int:
    history = _state(args)
    total = 0
    for f in args.plans:
        plan = loader.load_plan(f)
        for job, added in tick.rebuild(plan, history).items():
            total += added
            render.out(f"{plan.name}/{job}: {added} run(s) added from the repository")
    render.out(f"{total} run(s) added to {history.state_dir / 'history.db'}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    history = _state(args)
    now = SystemClock().now()
    rows = []
    for f in args.plans:
        plan = loader.load_plan(f)
        if not history.runs(plan.name, limit=1):
            _read_evidence(plan, history, quiet=args.quiet)
        rows += status.job_statuses(plan, history, now)
    missed = any(r.rpo_status in (status.RPO_MISSED, status.RPO_NONE) for r in rows)
    copies_behind = any(c["status"] == status.COPY_BEHIND for r in rows for c in r.copies.values())
    if args.json:
        render.emit_json(
            {
                "jobs": [r.to_dict() for r in rows],
                "rpo_missed": missed,
                "copies_behind": copies_behind,
            }
        )
    else:
        render.status_text(rows)
    return EXIT_TARGET_MISSED if missed or copies_behind else EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    """The plans' Prometheus metrics now, from this host's history (read from the
    repositories' evidence first on a host without any): printed, or written atomically."""
    history = _state(args)
    plans = [loader.load_plan(f) for f in args.plans]
    for plan in plans:
        if not history.runs(plan.name, limit=1):
            _read_evidence(plan, history, quiet=args.quiet)
    now = SystemClock().now()
    if args.write:
        files: dict[Path, list[Plan]] = {}
        for plan in plans:
            path = tick.metrics_path(plan, args.output)
            if path is None:
                raise UsageError(
                    f"plan {plan.name} names no metrics_textfile",
                    where=str(plan.file),
                    hint="give --output PATH, or set metrics_textfile in the plan",
                )
            files.setdefault(path, []).append(plan)
        for path, group in files.items():
            metrics.write_metrics(path, metrics.render_metrics(group, history, now))
            render.out(f"wrote {path} ({', '.join(p.name for p in group)})")
    elif args.output:
        metrics.write_metrics(Path(args.output), metrics.render_metrics(plans, history, now))
        render.out(f"wrote {args.output}")
    else:
        sys.stdout.write(metrics.render_metrics(plans, history, now))
    return EXIT_OK


def add_schedule_commands(command: Command) -> None:
    def state_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir",
            metavar="DIR",
            help=f"run history and locks (default: ${STATE_ENV}, else $XDG_STATE_HOME/bcdr, "
            "~/.local/state/bcdr, or /var/lib/bcdr for root)",
        )

    def log_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--log-format",
            choices=("text", "json"),
            default="text",
            help="events on stderr as logfmt text or JSON lines, each with time (UTC, ms), "
            "level, event, message, plan, job, host and pid (default text)",
        )
        p.add_argument(
            "--metrics-textfile",
            metavar="PATH",
            help="write Prometheus textfile metrics here (overrides the plan's metrics_textfile)",
        )

    p = command(
        "tick",
        cmd_tick,
        "Run every job of the plans that became due since its last run, then exit. Call it "
        "every few minutes from cron or a systemd timer (`bcdr schedule install`).",
        repo=False,
    )
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files")
    p.add_argument(
        "--summary",
        action="store_true",
        help="print each job's result (and 'nothing due') on stdout even when it is not a "
        "terminal; on a terminal they always are. The events on stderr say the same for "
        "machines",
    )
    state_opts(p)
    log_opts(p)

    p = command(
        "status",
        cmd_status,
        "Per job: last run, result, duration, next run, and RPO status, and for a backup "
        "job's copy_to repositories the newest recovery point each holds. Exit 4 when a job "
        "with an RPO has no recovery point, or its newest (or a copy's) is older than the RPO.",
        repo=False,
    )
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files")
    state_opts(p)

    p = command(
        "metrics",
        cmd_metrics,
        "Print the plans' Prometheus metrics (node_exporter textfile format) from this host's "
        "run history, or write them atomically with --output or --write. `tick` and the daemon "
        "write them on their own; this is for a first look, a one-off refresh, or a host that "
        "only runs `bcdr run`. docs/monitoring.md lists every metric.",
        repo=False,
    )
    p.add_argument("plans", nargs="+", metavar="PLAN", help="plan files")
    p.add_argument("--output", "-o", metavar="PATH", help="write all the plans' metrics here")
    p.add_argument(
        "--write",
        action="store_true",
        help="write each plan's metrics to its metrics_textfile (or --output)",
    )
    state_opts(p)

    p = command(
        "schedule",
        cmd_schedule,
        "Run plans unattended: `run` (a daemon), `install`/`remove` (a systemd timer or "
        "crontab entry calling `bcdr tick`), `rebuild` (history from the repositories).",
        repo=False,
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser(
        "run",
        help="tick, sleep until the next job is due, repeat; SIGTERM stops cleanly",
        description="A long-running scheduler. On SIGTERM a running job is stopped without "
        "committing anything half-written, then the process exits.",
    )
    r.add_argument("plans", nargs="+", metavar="PLAN")
    state_opts(r)
    log_opts(r)
    for action, text in (
        ("install", "write (or --print) a systemd service+timer or a crontab line"),
        ("remove", "remove what `install` wrote"),
    ):
        i = sub.add_parser(action, help=text, description=text)
        i.add_argument("plans", nargs="+", metavar="PLAN")
        how = i.add_mutually_exclusive_group(required=True)
        how.add_argument("--systemd", action="store_true", help="a systemd service and timer")
        how.add_argument("--cron", action="store_true", help="a line in your crontab")
        i.add_argument("--user", action="store_true", help="systemd: a user unit (no root)")
        i.add_argument("--name", metavar="NAME", help="unit / entry name (default bcdr-PLAN)")
        i.add_argument("--unit-dir", metavar="DIR", help="systemd: write units here instead")
        i.add_argument(
            "--no-enable",
            action="store_true",
            help="systemd: only write (or remove) the files; do not call systemctl",
        )
        if action == "install":
            i.add_argument("--print", action="store_true", help="print instead of installing")
            i.add_argument(
                "--every",
                type=int,
                default=5,
                metavar="MINUTES",
                help="how often bcdr tick runs (default 5)",
            )
            i.add_argument(
                "--env-file",
                metavar="FILE",
                help="systemd: EnvironmentFile with the variables the plan names (secrets)",
            )
            i.add_argument("--log-file", metavar="FILE", help="cron: append tick output here")
            i.add_argument("--metrics-textfile", metavar="PATH", help="passed to bcdr tick")
            state_opts(i)
    b = sub.add_parser(
        "rebuild",
        help="refill the run history from the plans' repositories (new host)",
        description="Read each backup job's snapshots from its repository into the run history,"
        " so a new host taking over a plan knows what already ran.",
    )
    b.add_argument("plans", nargs="+", metavar="PLAN")
    state_opts(b)
    for sp in (r, b, *[sub.choices[a] for a in ("install", "remove")]):
        sp.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
        sp.add_argument("--quiet", "-q", action="store_true", help=argparse.SUPPRESS)


Command = Callable[..., argparse.ArgumentParser]
