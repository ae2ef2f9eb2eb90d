"""``bcdr hold add|remove|list``: parse, call the action, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_OK, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import hold as hold_action
else:
    hold_action = lazy("bcdr.actions.hold")

Command = Callable[..., argparse.ArgumentParser]


def cmd_hold(args: argparse.Namespace) -> int:
    if args.action == "list":
        held = hold_action.list_holds(storage_spec(args))
        if args.json:
            render.emit_json([h.to_dict() for h in held])
        elif not held:
            render.out("no snapshot is under a legal hold")
        for h in held if not args.json else ():
            state = "complete" if not h.missing else f"{len(h.missing)} object(s) not held"
            render.out(
                f"{h.snapshot.short_id}  {h.snapshot.time}  {h.snapshot.job or '-'}  "
                f"{h.objects} object(s), {state}"
            )
        return EXIT_OK
    if not args.snapshot:
        raise UsageError(
            f"name the snapshot to {'hold' if args.action == 'add' else 'release'}",
            hint="give its id (or a prefix), or `latest` (with --job: that job's newest)",
        )
    result = hold_action.set_hold(
        storage_spec(args), args.snapshot, on=args.action == "add", job=args.job
    )
    if args.json:
        render.emit_json(result.to_dict())
    elif result.on:
        render.out(
            f"legal hold on snapshot {result.snapshot[:8]}: {result.objects} object(s), with "
            f"{len(result.evidence_records)} evidence record(s) naming it"
        )
    else:
        render.out(
            f"legal hold lifted from snapshot {result.snapshot[:8]}: {result.objects} "
            f"object(s)" + (f"; {result.kept} stay held for other snapshots" if result.kept else "")
        )
    return EXIT_OK


def add_hold_commands(command: Command) -> None:
    p = command(
        "hold",
        cmd_hold,
        "Legal holds (Azure version-level immutability): `add` keeps every object a snapshot "
        "needs, and the evidence that names it, from deletion or overwriting until `remove`; "
        "prune and forget leave held data. `list` shows the held snapshots. See "
        "docs/immutability.md.",
        epilog="examples:\n"
        "  bcdr hold add --repo azure://acct/backups latest --job ckpt\n"
        "  bcdr hold list --repo azure://acct/backups\n"
        "  bcdr hold remove --repo azure://acct/backups 1c48b7aa",
    )
    p.add_argument("action", choices=("add", "remove", "list"), help="what to do")
    p.add_argument("snapshot", nargs="?", help="snapshot id, prefix, or `latest` (add, remove)")
    p.add_argument("--job", help="with `latest`: that job's newest snapshot")
