"""``bcdr completion bash|zsh|fish``: a shell completion script, made from the parser itself
(shtab), so it never drifts from the commands and options."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bcdr.cli import render
from bcdr.errors import EXIT_OK

Command = Callable[..., argparse.ArgumentParser]
SHELLS = ("bash", "zsh", "fish")


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from bcdr.cli.main import build_parser

    parser = build_parser()[0]
    parser.prog = "bcdr"
    render.out(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


def add_completion_commands(command: Command) -> None:
    p = command(
        "completion",
        cmd_completion,
        "Print a completion script for bash, zsh or fish: commands, options and their choices.",
        repo=False,
        epilog="examples:\n"
        "  bcdr completion bash > ~/.local/share/bash-completion/completions/bcdr\n"
        '  bcdr completion zsh > "${fpath[1]}/_bcdr"\n'
        "  bcdr completion fish > ~/.config/fish/completions/bcdr.fish",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell")
