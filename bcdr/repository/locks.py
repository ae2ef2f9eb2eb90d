"""Repository locks: ``locks/<name>`` objects with an owner and an expiry.

Shared locks (backup, check) coexist; an exclusive lock (prune) excludes every other lock.
A lock is *stale* when its expiry has passed, or when it was taken on this host by a process
that no longer exists; stale locks never block anyone and are reported with the command that
removes them. A holder refreshes its lock (writes a new object, deletes the old) well before
expiry. Taking a lock is: check for conflicts, write ours, check again (another writer may have
raced us), and back off if a conflict appeared.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from bcdr.clock import Clock
from bcdr.errors import LockConflict, ObjectNotFound
from bcdr.repository.hashing import object_name
from bcdr.storage.base import Storage

PREFIX = "locks/"
TTL = timedelta(minutes=30)
REFRESH_SECONDS = 300.0


@dataclass(frozen=True)
class LockInfo:
    key: str
    exclusive: bool
    hostname: str
    pid: int
    username: str
    created: str
    expires: str

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (
            f"{kind} lock {self.key.removeprefix(PREFIX)[:12]} by pid {self.pid} "
            f"on {self.hostname} ({self.username}) since {self.created}"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(lock: LockInfo, now: datetime) -> bool:
    if datetime.fromisoformat(lock.expires) < now:
        return True
    return lock.hostname == socket.gethostname() and not _pid_alive(lock.pid)


def list_locks(storage: Storage) -> list[LockInfo]:
    out = []
    for info in storage.list(PREFIX):
        try:
            doc = json.loads(storage.get(info.key))
            out.append(
                LockInfo(
                    key=info.key,
                    **{
                        k: doc[k]
                        for k in ("exclusive", "hostname", "pid", "username", "created", "expires")
                    },
                )
            )
        except ObjectNotFound:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError):
            out.append(LockInfo(info.key, True, "?", 0, "?", "?", "1970-01-01T00:00:00+00:00"))
    return out


class RepoLock:
    """A held lock; use as a context manager. Refreshes itself in a daemon thread."""

    def __init__(self, storage: Storage, clock: Clock, *, exclusive: bool, url: str):
        self._storage = storage
        self._clock = clock
        self.exclusive = exclusive
        self._url = url
        self._key: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.stale_seen: list[LockInfo] = []

    def _write(self) -> str:
        now = self._clock.now()
        doc = {
            "exclusive": self.exclusive,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "username": getpass.getuser(),
            "created": now.isoformat(),
            "expires": (now + TTL).isoformat(),
            "nonce": secrets.token_hex(8),
        }
        data = json.dumps(doc, sort_keys=True).encode()
        key = PREFIX + object_name(data)
        self._storage.put(key, data)
        return key

    def _conflicts(self) -> list[LockInfo]:
        now = self._clock.now()
        conflicts = []
        self.stale_seen = []
        for lock in list_locks(self._storage):
            if lock.key == self._key:
                continue
            if is_stale(lock, now):
                self.stale_seen.append(lock)
            elif self.exclusive or lock.exclusive:
                conflicts.append(lock)
        return conflicts

    def _raise_conflict(self, conflicts: list[LockInfo]) -> None:
        lines = "; ".join(c.describe() for c in conflicts)
        raise LockConflict(
            f"repository is locked: {lines}",
            where=self._url,
            hint=(
                "wait for that process to finish; if it is certainly gone, run "
                f"`bcdr unlock --repo {self._url} --remove-all`"
            ),
        )

    def acquire(self) -> RepoLock:
        conflicts = self._conflicts()
        if conflicts:
            self._raise_conflict(conflicts)
        self._key = self._write()
        conflicts = self._conflicts()
        if conflicts:
            self._storage.delete(self._key)
            self._key = None
            self._raise_conflict(conflicts)
        self._thread = threading.Thread(target=self._refresh_loop, name="bcdr-lock", daemon=True)
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            with self._mutex:
                if self._key is None:
                    return
                old = self._key
                self._key = self._write()
                self._storage.delete(old)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._mutex:
            if self._key:
                self._storage.delete(self._key)
                self._key = None

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(storage: Storage, clock: Clock, *, remove_all: bool) -> list[LockInfo]:
    """Remove stale locks (or every lock with ``remove_all``); return those removed."""
    now = clock.now()
    removed = []
    for lock in list_locks(storage):
        if remove_all or is_stale(lock, now):
            storage.delete(lock.key)
            removed.append(lock)
    return removed
