"""``bcdr report PLAN``: compliance report over a window, as Markdown, HTML or JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bcdr.atomicfile import write_atomic
from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.errors import EXIT_OK, EXIT_TARGET_MISSED, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import report as report_action
    from bcdr.compliance import controls as controls
    from bcdr.compliance import render as report_render
    from bcdr.plan import loader as loader
    from bcdr.plan import types as plan_types
    from bcdr.plan.types import Duration
else:
    report_action = lazy("bcdr.actions.report")
    controls = lazy("bcdr.compliance.controls")
    report_render = lazy("bcdr.compliance.render")
    loader = lazy("bcdr.plan.loader")
    plan_types = lazy("bcdr.plan.types")


def _window(text: str) -> Duration:
    try:
        return plan_types.Duration.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc.args[0])) from None


def cmd_report(args: argparse.Namespace) -> int:
    plan = loader.load_plan(args.plan)
    fmt = args.format or _guess(args.out)
    doc = report_action.build_report(plan, args.since.delta)
    if fmt == "json":
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    elif fmt == "html":
        text = report_render.to_html(doc)
    else:
        text = report_render.to_markdown(doc)
    if args.out:
        out = Path(args.out)
        try:
            write_atomic(out, text.encode("utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot write the report: {exc.strerror}", where=str(out)) from None
        c = doc["counts"]
        render.out(
            f"report written to {out}: {doc['verdict']} ({c['PASS']} pass, {c['FAIL']} fail, "
            f"{c['NO EVIDENCE']} no evidence)"
        )
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
        "the evidence chain, each PASS, FAIL or NO EVIDENCE with the evidence ids behind it. "
        "Exit 4 when any control fails.",
        repo=False,
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


Command = Callable[..., argparse.ArgumentParser]
