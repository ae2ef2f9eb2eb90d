"""The repository password: from ``BCDR_PASSWORD``, or from the file ``BCDR_PASSWORD_FILE``
names. (Standard library only: the CLI reads it before loading a command's modules.)"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from bcdr.errors import UsageError

PASSWORD_ENV = "BCDR_PASSWORD"
PASSWORD_FILE_ENV = "BCDR_PASSWORD_FILE"


def read_password(env: Mapping[str, str] | None = None) -> bytes | None:
    """The password from BCDR_PASSWORD, else from the file BCDR_PASSWORD_FILE names, else None.

    Raises UsageError when the password file cannot be read (naming the file, never content).
    """
    env = os.environ if env is None else env
    if env.get(PASSWORD_ENV):
        return env[PASSWORD_ENV].encode()
    path = env.get(PASSWORD_FILE_ENV)
    if path:
        try:
            text = Path(path).read_bytes()
            _warn_if_readable_by_others(path)
        except OSError as exc:
            raise UsageError(
                f"cannot read the password file: {exc.strerror}",
                where=f"{PASSWORD_FILE_ENV}={path}",
                hint="point BCDR_PASSWORD_FILE at a readable file holding the password",
            ) from None
        password = text.rstrip(b"\r\n")
        if not password:
            raise UsageError("the password file is empty", where=f"{PASSWORD_FILE_ENV}={path}")
        return password
    return None


_WARNED: set[str] = set()


def _warn_if_readable_by_others(path: str) -> None:
    """A password file others can read is a password others can read: say so, once (as ssh
    and restic do; the file is still used)."""
    mode = os.stat(path).st_mode
    if mode & 0o077 and path not in _WARNED:
        _WARNED.add(path)
        sys.stderr.write(
            f"warning: the password file {path} can be read by its group or others "
            f"(mode {mode & 0o777:04o}); make it private: chmod 600 {path}\n"
        )
