"""What every action needs: the password from the environment, and an opened repository."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bcdr.clock import Clock
from bcdr.errors import UsageError
from bcdr.repository.repo import Repository
from bcdr.storage.url import open_storage

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


def open_repo(
    url: str, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
) -> Repository:
    storage = open_storage(url)
    return Repository.open(storage, password=lambda: read_password(env), clock=clock)
