"""``bcdr key list|add|remove|passwd``: parse, call the action, render."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_OK, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import keys as key_action
else:
    key_action = lazy("bcdr.actions.keys")

Command = Callable[..., argparse.ArgumentParser]


def cmd_key(args: argparse.Namespace) -> int:
    spec = storage_spec(args)
    if args.action == "list":
        keys = key_action.list_keys(spec)
        if args.json:
            render.emit_json([k.to_dict() for k in keys])
        for k in keys if not args.json else ():
            mark = "*" if k.current else " "
            render.out(
                f"{mark} {k.id[:12]}  {(k.created or '-')[:19]}  "
                f"{k.username or '-'}@{k.hostname or '-'}"
            )
        return EXIT_OK
    if args.action == "add":
        name = key_action.add_key(spec)
        _said(args, {"added": name}, f"added key {name[:12]}: the new password opens it too")
    elif args.action == "remove":
        if not args.id:
            raise UsageError("name the key to remove", hint="`bcdr key list` shows their ids")
        name = key_action.remove_key(spec, args.id)
        _said(args, {"removed": name}, f"removed key {name[:12]}")
    else:
        old, new = key_action.change_password(spec)
        _said(
            args,
            {"removed": old, "added": new},
            f"password changed: key {old[:12]} replaced by {new[:12]}; no data was rewritten",
        )
    return EXIT_OK


def _said(args: argparse.Namespace, doc: dict[str, str], text: str) -> None:
    if args.json:
        render.emit_json(doc)
    else:
        render.out(text)


def add_key_commands(command: Command) -> None:
    p = command(
        "key",
        cmd_key,
        "Passwords of an encrypted repository: each opens its own key file, which wraps the "
        "same master key, so adding, removing or changing one rewrites no data. The new "
        "password comes from BCDR_NEW_PASSWORD or BCDR_NEW_PASSWORD_FILE. `list` marks with "
        "* the key the current password opens; `remove` never removes that one.",
        epilog="examples:\n"
        "  BCDR_NEW_PASSWORD_FILE=/etc/bcdr/pw-ops bcdr key add --repo /backups/main\n"
        "  bcdr key list --repo /backups/main\n"
        "  bcdr key remove --repo /backups/main 3fa9c2d1\n"
        "  BCDR_NEW_PASSWORD_FILE=/etc/bcdr/pw-2027 bcdr key passwd --repo /backups/main",
    )
    p.add_argument("action", choices=("list", "add", "remove", "passwd"), help="what to do")
    p.add_argument("id", nargs="?", help="remove: the key's id (or a prefix)")
