"""``bcdr repair index|snapshots``: parse, call the action, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_OK

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import repair as repair_action
else:
    repair_action = lazy("bcdr.actions.repair")

Command = Callable[..., argparse.ArgumentParser]


def cmd_repair(args: argparse.Namespace) -> int:
    if args.what == "index":
        index, evidence = repair_action.repair_index_action(
            storage_spec(args), dry_run=args.dry_run
        )
        if args.json:
            render.emit_json({**index.to_dict(), "evidence": evidence})
        else:
            render.repair_index_text(index)
        return EXIT_OK
    snaps, evidence = repair_action.repair_snapshots_action(
        storage_spec(args), forget=args.forget, dry_run=args.dry_run
    )
    if args.json:
        render.emit_json({**snaps.to_dict(), "evidence": evidence})
    else:
        render.repair_snapshots_text(snaps)
    return EXIT_OK


def add_repair_commands(command: Command) -> None:
    p = command(
        "repair",
        cmd_repair,
        "Repair a damaged repository. `index`: rebuild the index from the packs that exist "
        "(drop entries of missing packs, index packs no index lists from their headers). "
        "`snapshots`: rewrite snapshots whose trees or chunks are lost, leaving out what is "
        "lost and recording it in the new snapshot (tag `repaired`); the originals are kept "
        "unless --forget. Run `index` first, then `snapshots`. See docs/repair.md.",
    )
    p.add_argument("what", choices=("index", "snapshots"), help="what to repair")
    p.add_argument(
        "--dry-run", "-n", action="store_true", help="say what would be done; write nothing"
    )
    p.add_argument(
        "--forget",
        action="store_true",
        help="snapshots: remove each damaged original (and unreadable snapshot manifests) "
        "once its repaired copy is written",
    )
