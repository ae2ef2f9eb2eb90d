"""``bcdr report PLAN``: compliance report over a window, as Markdown, HTML or JSON."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.errors import EXIT_OK, EXIT_TARGET_MISSED, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import report as report_action
    from bcdr.compliance import anchors as anchors
    from bcdr.compliance import controls as controls
    from bcdr.plan import loader as loader
    from bcdr.plan import types as plan_types
    from bcdr.plan.model import Plan
    from bcdr.plan.types import Duration
else:
    report_action = lazy("bcdr.actions.report")
    anchors = lazy("bcdr.compliance.anchors")
    controls = lazy("bcdr.compliance.controls")
    loader = lazy("bcdr.plan.loader")
    plan_types = lazy("bcdr.plan.types")


def _window(text: str) -> Duration:
    try:
        return plan_types.Duration.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def _anchors(args: argparse.Namespace, plan: Plan) -> report_action.Anchors:
    """``--head [REPO=]SEQ:ID`` (by the plan's repository name) and ``--previous-report``."""
    given = report_action.Anchors()
    for text in args.head or []:
        name, _, head = text.rpartition("=")
        if not name:
            if len(plan.repositories) != 1:
                raise UsageError(
                    f"--head {text}: which repository?",
                    where="--head",
                    hint="the plan has several: give REPO=SEQ:ID, REPO one of "
                    + ", ".join(plan.repositories),
                )
            name = next(iter(plan.repositories))
        if name not in plan.repositories:
            raise UsageError(
                f"--head {text}: the plan has no repository {name!r}",
                where="--head",
                hint="repositories: " + ", ".join(plan.repositories),
            )
        given.by_name.setdefault(name, []).append(anchors.parse_head(head))
    for path in args.previous_report or []:
        given.previous += anchors.heads_in_report(Path(path))
    return given


def cmd_report(args: argparse.Namespace) -> int:
    plan = loader.load_plan(args.plan)
    if args.json and args.format not in (None, "json"):
        raise UsageError(
            f"--json and --format {args.format} disagree",
            where="--format",
            hint="--json prints the report as JSON; drop one of them",
        )
    fmt = args.format or ("json" if args.json and not args.out else _guess(args.out))
    doc = report_action.build_report(plan, args.since.delta, given=_anchors(args, plan))
    text = report_action.render(doc, fmt)
    if args.out:
        out = Path(args.out)
        report_action.write_report(out, text)
        c = doc["counts"]
        if args.json:
            render.emit_json(
                {
                    "written": str(out),
                    "format": fmt,
                    "verdict": doc["verdict"],
                    "counts": c,
                    "heads": [r["head"] for r in doc["repositories"] if r["head"]],
                }
            )
        else:
            render.out(
                f"report written to {out}: {doc['verdict']} ({c['PASS']} pass, {c['FAIL']} "
                f"fail, {c['NO EVIDENCE']} no evidence)"
            )
            for r in doc["repositories"]:
                if r["head"]:
                    render.out(f"  {r['head']['token']}")
    else:
        render.out(text.rstrip("\n"))
    return EXIT_TARGET_MISSED if doc["verdict"] == controls.FAIL else EXIT_OK


def _guess(out: str | None) -> str:
    if out and out.endswith((".html", ".htm")):
        return "html"
    if out and out.endswith(".json"):
        return "json"
    return "md"


def add_report_commands(command: Command) -> None:
    p = command(
        "report",
        cmd_report,
        "Compliance report of a plan from the evidence in its repositories: per job, schedule "
        "adherence, RPO, RTO and drills, retention, residency, integrity checks, encryption and "
        "the evidence chain, each PASS, FAIL or NO EVIDENCE with the evidence ids behind it "
        "and the part of the window it covers. Each chain is checked against the newest head "
        "this host has seen, --head and --previous-report; every report prints the heads it "
        "saw. Exit 4 when any control fails.",
        repo=False,
        epilog="examples:\n  bcdr report plans/quickstart.yaml\n"
        "  bcdr report plans/quickstart.yaml --since 30d --out audit-2026-12.html\n"
        "  bcdr report plans/quickstart.yaml --previous-report audit-2026-11.html --json\n"
        "  bcdr report plans/quickstart.yaml --head main=17:3f2a9c0d1e2b",
    )
    p.add_argument("plan", metavar="PLAN", help="plan file")
    p.add_argument(
        "--since",
        type=_window,
        default="90d",  # a string: converted by _window when the command runs
        metavar="DURATION",
        help="the window: this far back from now (default 90d; e.g. 2w, 30d)",
    )
    p.add_argument(
        "--format",
        choices=("md", "html", "json"),
        help="md (default; or from --out's extension), html (one self-contained file) or json "
        "(docs/report-schema.md)",
    )
    p.add_argument("--out", "-o", metavar="FILE", help="write the report here instead of stdout")
    p.add_argument(
        "--previous-report",
        metavar="FILE",
        action="append",
        help="an earlier report (any format): fail if a chain no longer holds the head it "
        "printed (records cut from the end or rewritten). Repeatable",
    )
    p.add_argument(
        "--head",
        metavar="[REPO=]SEQ:ID",
        action="append",
        help="a head kept outside the repository (REPO may be left out when the plan has one "
        "repository). Repeatable",
    )


Command = Callable[..., argparse.ArgumentParser]
