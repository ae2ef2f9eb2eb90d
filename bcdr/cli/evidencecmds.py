"""``bcdr evidence verify|list``: the repository's hash-chained evidence records."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import common as common
    from bcdr.compliance import evidence as evidence
else:
    common = lazy("bcdr.actions.common")
    evidence = lazy("bcdr.compliance.evidence")


def cmd_evidence(args: argparse.Namespace) -> int:
    repo = common.open_repo(storage_spec(args))
    try:
        if args.action == "list":
            records = evidence.read_records(repo, args.kind)
            if args.json:
                render.emit_json(records)
            else:
                render.evidence_list_text(records)
            return EXIT_OK
        report = evidence.verify_chain(repo, args.head)
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
        "one before): name every deleted, altered or reordered record; exit 1 if any. "
        "`list`: the records, oldest first.",
    )
    p.add_argument("action", choices=("verify", "list"), help="verify the chain, or list it")
    p.add_argument(
        "--head",
        metavar="ID",
        help="verify: a head id printed by an earlier verify (kept outside the repository); "
        "fail if the chain no longer contains it (truncated or rebuilt)",
    )
    p.add_argument(
        "--kind",
        metavar="KIND",
        help="list: only records of this kind (backup, check, drill, disk-snapshot, forget, prune)",
    )


Command = Callable[..., argparse.ArgumentParser]
