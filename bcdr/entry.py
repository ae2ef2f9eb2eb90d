"""The ``bcdr`` command's entry point: nothing but the import of the CLI and the call, so
that a Ctrl-C while the interpreter is still loading bcdr ends quietly too (exit 130)."""

from __future__ import annotations

import signal
import sys


def run() -> int:
    from bcdr.interrupts import terminate_as_interrupt, was_interrupted

    terminate_as_interrupt()
    try:
        from bcdr.cli.main import main
    except (KeyboardInterrupt, ImportError) as exc:
        if isinstance(exc, ImportError) and not was_interrupted():
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("bcdr: interrupted before the command started; nothing was done\n")
        return 130
    return main()
