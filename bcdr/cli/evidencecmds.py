"""``bcdr evidence verify|list``: the repository's hash-chained evidence records."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import common as common
    from bcdr.compliance import anchors as anchors
    from bcdr.compliance import evidence as evidence
else:
    common = lazy("bcdr.actions.common")
    anchors = lazy("bcdr.compliance.anchors")
    evidence = lazy("bcdr.compliance.evidence")


def cmd_evidence(args: argparse.Namespace) -> int:
    repo = common.open_repo(storage_spec(args))
    try:
        if args.action == "list":
            records = evidence.list_records(repo, args.kind)
            if args.json:
                render.emit_json([evidence.as_document(r) for r in records])
            else:
                render.evidence_list_text(records)
            return EXIT_OK
        given = [anchors.parse_head(h) for h in args.head or []]
        for path in args.previous_report or []:
            heads = anchors.heads_in_report(Path(path))
            mine = [a for _, a in heads if a.repository_id == repo.config.id]
            if not mine:
                raise UsageError(
                    f"the report names no head of this repository (id {repo.config.id[:12]})",
                    where=path,
                    hint="it covers repositories "
                    + ", ".join(f"{n} (id {(a.repository_id or '?')[:12]})" for n, a in heads)
                    + "; give a report of a plan that uses this repository",
                )
            given += mine
        report = evidence.verify_chain(repo, given)
    finally:
        repo.close()
    if args.json:
        render.emit_json(report.to_dict())
    else:
        render.evidence_verify_text(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def add_evidence_commands(command: Command) -> None:
    p = command(
        "evidence",
        cmd_evidence,
        "`verify`: check the repository's evidence chain (each record carries the hash of the "
        "one before): name every deleted, altered, forged or reordered record, and records cut "
        "from the end (against the newest head this host has seen, and --head or "
        "--previous-report); exit 1 if any. `list`: the records, oldest first.",
        epilog="examples:\n  bcdr evidence verify --repo /srv/bcdr/repo\n"
        "  bcdr evidence verify --repo /srv/bcdr/repo --previous-report 2026-11-audit.html\n"
        "  bcdr evidence verify --repo /srv/bcdr/repo --head 17:3f2a9c0d1e2b\n"
        "  bcdr evidence list --repo /srv/bcdr/repo --kind drill",
    )
    p.add_argument("action", choices=("verify", "list"), help="verify the chain, or list it")
    p.add_argument(
        "--head",
        metavar="SEQ:ID",
        action="append",
        help="verify: a head printed by an earlier verify or report, kept outside the "
        "repository; fail if the chain is shorter or holds another record there (cut or "
        "rebuilt). Repeatable",
    )
    p.add_argument(
        "--previous-report",
        metavar="FILE",
        action="append",
        help="verify: check against the heads a previous `bcdr report` printed (any format). "
        "Repeatable",
    )
    p.add_argument(
        "--kind",
        metavar="KIND",
        help="list: only records of this kind (backup, check, drill, disk-snapshot, forget, prune)",
    )


Command = Callable[..., argparse.ArgumentParser]
