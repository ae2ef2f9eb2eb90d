"""Names from a snapshot or a repository, made safe to print on a terminal.

A file name can hold any byte but ``/`` and NUL, and a hostile repository can put anything in
a job or host name: escape sequences that move the cursor or retitle the window, a newline
that forges an output line, bidi overrides that reverse what follows. Text output escapes
them as ``ls -b`` and restic do; ``--json`` keeps every name exactly (undecodable bytes as
the lone surrogates of Python's ``surrogateescape``).
"""

from __future__ import annotations

import os

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\x1b": "\\e"}


def printable(text: str | bytes) -> str:
    """``text`` with every character a terminal would act on escaped: backslash, control
    characters (``\\n``, ``\\t``, ``\\e``, ``\\xNN``), undecodable bytes (``\\xNN``) and
    invisible format characters such as bidi overrides (``\\u202e``)."""
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.isprintable() and "\\" not in text:
        return text  # the common case, one C-level scan
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)
