"""The repository password: from ``BCDR_PASSWORD``, or from the file ``BCDR_PASSWORD_FILE``
names. (Standard library only: the CLI reads it before loading a command's modules.)"""

from __future__ import annotations

import os
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
