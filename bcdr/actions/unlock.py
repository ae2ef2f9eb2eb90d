"""``bcdr unlock``: remove stale locks (or all of them)."""

from __future__ import annotations

from collections.abc import Mapping

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.repository.locks import LockInfo, remove_locks
from bcdr.storage.url import StorageSpec


def unlock(
    where: StorageSpec | str,
    *,
    remove_all: bool = False,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> list[LockInfo]:
    repo = open_repo(where, clock=clock, env=env)
    repo.require_delete("unlock")
    return remove_locks(repo.storage, repo.clock, remove_all=remove_all)
