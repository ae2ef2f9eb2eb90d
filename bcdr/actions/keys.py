"""``bcdr key list|add|remove|passwd``: several passwords for one repository, and rotation
without re-encrypting anything.

Every password opens its own key file (``keys/<name>``): the repository's master key wrapped
with a key derived from that password (scrypt). Adding a password adds a key file; removing
one deletes its key file; the data, trees and snapshots stay as they are. The new password
comes from ``BCDR_NEW_PASSWORD`` or ``BCDR_NEW_PASSWORD_FILE``, never from the command line.
Each change is recorded as a ``key`` evidence record.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import KeyFacts
from bcdr.errors import ObjectNotFound, UsageError
from bcdr.password import PASSWORD_ENV, PASSWORD_FILE_ENV, read_password
from bcdr.repository.repo import Repository
from bcdr.storage.url import StorageSpec

NEW_PASSWORD_ENV = "BCDR_NEW_PASSWORD"
NEW_PASSWORD_FILE_ENV = "BCDR_NEW_PASSWORD_FILE"


@dataclass
class KeyInfo:
    id: str
    current: bool  # the one this password opened
    created: str | None
    hostname: str | None
    username: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _encrypted(repo: Repository) -> None:
    if not repo.config.encrypted:
        raise UsageError(
            "the repository is not encrypted: it has no passwords to manage",
            where=repo.storage.url,
        )


def _list(repo: Repository) -> list[KeyInfo]:
    out = []
    for info in sorted(repo.storage.list("keys/"), key=lambda i: i.key):
        try:
            doc = json.loads(repo.storage.get(info.key))
        except (ObjectNotFound, ValueError):
            continue
        about = doc if isinstance(doc, dict) else {}
        out.append(
            KeyInfo(
                info.key.removeprefix("keys/"),
                info.key == repo.key_file,
                about.get("created"),
                about.get("hostname"),
                about.get("username"),
            )
        )
    return out


def list_keys(
    where: StorageSpec | str, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
) -> list[KeyInfo]:
    repo = open_repo(where, clock=clock, env=env)
    try:
        _encrypted(repo)
        return _list(repo)
    finally:
        repo.close()


def _new_password(env: Mapping[str, str]) -> bytes:
    mapped = {}
    if env.get(NEW_PASSWORD_ENV):
        mapped[PASSWORD_ENV] = env[NEW_PASSWORD_ENV]
    elif env.get(NEW_PASSWORD_FILE_ENV):
        mapped[PASSWORD_FILE_ENV] = env[NEW_PASSWORD_FILE_ENV]
    password = read_password(mapped)
    if password is None:
        raise UsageError(
            "no new password given",
            hint=f"set {NEW_PASSWORD_ENV}, or {NEW_PASSWORD_FILE_ENV} to a file holding it "
            "(never on the command line)",
        )
    return password


def _find(repo: Repository, ref: str) -> str:
    keys = [k for k in _list(repo) if k.id.startswith(ref)]
    if len(keys) != 1:
        raise UsageError(
            f"{'no' if not keys else 'more than one'} key file matches {ref!r}",
            where=repo.storage.url,
            hint="`bcdr key list` shows their ids",
        )
    return keys[0].id


def add_key(
    where: StorageSpec | str, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Add a password (``BCDR_NEW_PASSWORD``); returns the new key file's id."""
    environ = os.environ if env is None else env
    repo = open_repo(where, clock=clock, env=env)
    try:
        _encrypted(repo)
        new = _new_password(environ)
        about = {
            "created": repo.clock.now().isoformat(),
            "hostname": socket.gethostname(),
            "username": getpass.getuser(),
        }
        name = repo.add_key(new, about).removeprefix("keys/")
        write_record(repo, KeyFacts(action="add", key=name))
        return name
    finally:
        repo.close()


def remove_key(
    where: StorageSpec | str,
    ref: str,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Remove a key file by id (prefix): never the one this password opened, never the last."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        _encrypted(repo)
        name = _find(repo, ref)
        if f"keys/{name}" == repo.key_file:
            raise UsageError(
                f"key {name[:12]} is the one this password opens: removing it would lock you "
                "out if it is the password you keep",
                hint="open the repository with another password to remove this one, or use "
                "`bcdr key passwd` to change it",
            )
        repo.require_delete("key remove")
        write_record(repo, KeyFacts(action="remove", key=name))
        repo.storage.delete(f"keys/{name}")
        return name
    finally:
        repo.close()


def change_password(
    where: StorageSpec | str, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Replace this password's key file by one for ``BCDR_NEW_PASSWORD``: the new key file
    is stored first, the old one removed after. Returns (old id, new id)."""
    environ = os.environ if env is None else env
    repo = open_repo(where, clock=clock, env=env)
    try:
        _encrypted(repo)
        new = _new_password(environ)
        repo.require_delete("key passwd")
        about = {
            "created": repo.clock.now().isoformat(),
            "hostname": socket.gethostname(),
            "username": getpass.getuser(),
        }
        old = repo.key_file.removeprefix("keys/")
        name = repo.add_key(new, about).removeprefix("keys/")
        write_record(repo, KeyFacts(action="passwd", key=name, replaced=old))
        repo.storage.delete(f"keys/{old}")
        return old, name
    finally:
        repo.close()
