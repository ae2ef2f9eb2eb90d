"""Repository locks: ``locks/<name>`` objects with a kind, an owner and an expiry.

Kinds, and what excludes what (nothing ever blocks a backup):

- ``backup``: backup and forget. Coexists with everything.
- ``read``: check, restore, ls. Excluded only by ``sweep``.
- ``prune``: a prune run. Excludes another prune.
- ``sweep``: the short step of a prune that deletes packs. Excludes readers (which could have
  loaded an index that names a pack about to go) and other sweeps.

A prune never needs to stop backups: see docs/repository-format.md ("Prune") for why the
packs it deletes cannot be referenced by a backup that is running.

A lock is *stale* when its expiry has passed (its holder stopped refreshing it), or when it
provably belongs to a process that no longer exists: the lock records the holder's hostname,
the kernel's boot id, its pid namespace and its start time, and only a lock that names this
host, this boot *and* this pid namespace is looked up by pid. Containers share hostnames (host
UTS namespace, ``hostNetwork`` pods, cloned VM images) but not pid namespaces, so a live
holder in another container is never judged dead by its pid: its lock stays live until it
stops refreshing it. A pid that exists but started at another time is a reused pid: stale.
Stale locks never block anyone and are reported with the command that removes them.
A holder refreshes its lock (writes a new object, deletes the old) well before expiry; the
``session`` id stays the same across refreshes, so prune can tell whether a backup it saw is
still running. Lock objects are named ``locks/<session>.<sequence>``: the newest of a session
is its lock, older ones are superseded. A holder that could not refresh for longer than the
expiry must assume its lock was taken for stale and must not commit
(:meth:`RepoLock.ensure_valid`). Taking a lock is: check for conflicts, write ours, check again
(another writer may have raced us), and back off if a conflict appeared.

A holder whose credential may not delete (append-only: docs/immutability.md) still works: a
refresh leaves the superseded object, and a release writes ``locks/end-<session>``, which ends
every lock of that session. Such leftovers block no one; ``unlock`` and ``prune``, which must
be able to delete, remove them. Whoever may write may also end another's session (hiding a
lock); whoever may write can do worse, and a lock guards against accidents, not attackers.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import random
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from bcdr.clock import Clock, parse_aware
from bcdr.errors import (
    LockConflict,
    LockLost,
    ObjectNotFound,
    StoragePermission,
    env_seconds,
)
from bcdr.storage.base import Storage

log = logging.getLogger("bcdr.locks")

PREFIX = "locks/"
END = PREFIX + "end-"  # locks/end-<session>: the session let its lock go without deleting it
TTL = timedelta(minutes=30)
REFRESH_SECONDS = 300.0
BACKUP, READ, PRUNE, SWEEP = "backup", "read", "prune", "sweep"
EVIDENCE = "evidence"  # appending to the evidence chain: one at a time, blocks nothing else
KINDS = (BACKUP, READ, PRUNE, SWEEP, EVIDENCE)
LOCK_WAIT_ENV = "BCDR_LOCK_WAIT"
CONFLICTS = {(PRUNE, PRUNE), (SWEEP, READ), (READ, SWEEP), (SWEEP, SWEEP), (EVIDENCE, EVIDENCE)}


@dataclass(frozen=True)
class LockInfo:
    key: str
    kind: str
    hostname: str
    pid: int
    username: str
    created: str
    expires: str
    session: str = ""
    boot_id: str = ""  # the kernel's boot id of the holder's machine ("" in older locks)
    pid_ns: str = ""  # its pid namespace, e.g. "pid:[4026531836]" ("" in older locks)
    started: int = 0  # its start time in clock ticks since boot (0: unknown)

    def describe(self) -> str:
        return (
            f"{self.kind} lock {self.key.removeprefix(PREFIX)[:12]} by pid {self.pid} "
            f"on {self.hostname} ({self.username}) since {self.created}"
        )


def read_wait() -> float:
    """Seconds a reader waits out a prune's sweep: BCDR_LOCK_WAIT, default 300."""
    return env_seconds(LOCK_WAIT_ENV, 300, 86400)


def conflicts_with(mine: str, theirs: str) -> bool:
    return (mine, theirs) in CONFLICTS


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This kernel's boot id ("" where there is none): shared by every container on it."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def pid_namespace() -> str:
    """This process's pid namespace, e.g. ``pid:[4026531836]`` ("" where unknown)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat); 0 when
    it does not exist or cannot be read. The command name may hold spaces and parentheses,
    so fields are counted after its closing one."""
    stat_line = _read_text(f"/proc/{pid}/stat")
    _, _, rest = stat_line.rpartition(")")
    fields = rest.split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0


def _pid_alive(pid: int, started: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started:
        now_started = process_start(pid)
        return now_started == 0 or now_started == started  # another start: a reused pid
    return True


def same_process_space(lock: LockInfo) -> bool:
    """Is the lock's holder in this host, this boot and this pid namespace, where its pid
    means what it says? Unknown fields (older locks, no /proc) never count as the same."""
    return (
        lock.hostname == socket.gethostname()
        and bool(lock.boot_id)
        and lock.boot_id == boot_id()
        and bool(lock.pid_ns)
        and lock.pid_ns == pid_namespace()
    )


def is_stale(lock: LockInfo, now: datetime) -> bool:
    """Stale: expired (not refreshed in time), or provably of a process that is gone."""
    if datetime.fromisoformat(lock.expires) < now:
        return True
    return same_process_space(lock) and not _pid_alive(lock.pid, lock.started)


def list_locks(storage: Storage) -> list[LockInfo]:
    """Every lock held: the newest object of each session that has not ended (stale ones
    included). One that cannot be read as a lock (not JSON, a field missing or of the wrong
    kind, an expiry that is not ISO 8601 with an offset) is listed as an expired sweep lock: it
    blocks no one and is reported as stale, with the command that removes it."""
    out = []
    for key in _scan(storage)[0]:
        try:
            out.append(_lock_info(key, json.loads(storage.get(key))))
        except ObjectNotFound:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError):
            out.append(LockInfo(key, SWEEP, "?", 0, "?", "?", "1970-01-01T00:00:00+00:00"))
    return out


def leftover_locks(storage: Storage) -> list[str]:
    """Lock objects nobody holds, left by holders that could not delete: superseded ones and
    those of ended sessions, then the end markers (removed last: a marker outlives the locks
    it ends)."""
    return _scan(storage)[1]


def _scan(storage: Storage) -> tuple[list[str], list[str]]:
    """(the newest lock object of every session not ended, the leftovers), from the names."""
    keys = [info.key for info in storage.list(PREFIX)]
    ended = {k.removeprefix(END) for k in keys if k.startswith(END)}
    newest: dict[str, tuple[int, str]] = {}
    held, leftovers = [], []
    for key in keys:
        if key.startswith(END):
            continue
        session, dot, seq = key.removeprefix(PREFIX).partition(".")
        if not (dot and seq.isdigit()):
            held.append(key)  # named by its hash (bcdr before 2026-12): read as it is
        elif session in ended:
            leftovers.append(key)
        elif session not in newest or int(seq) > newest[session][0]:
            if session in newest:
                leftovers.append(newest[session][1])
            newest[session] = (int(seq), key)
        else:
            leftovers.append(key)
    held += [key for _, key in newest.values()]
    return held, leftovers + sorted(k for k in keys if k.startswith(END))


def _lock_info(key: str, doc: object) -> LockInfo:
    """A lock object's document, checked (raises ValueError, KeyError or TypeError): each
    field is later compared, parsed or passed to ``kill`` as it is."""
    if not isinstance(doc, dict):
        raise TypeError("not a JSON object")
    kind = doc.get("kind") or (SWEEP if doc["exclusive"] else BACKUP)
    hostname, pid, username, created, expires = (
        doc[k] for k in ("hostname", "pid", "username", "created", "expires")
    )
    texts = (hostname, username, created, expires)
    if not all(isinstance(v, str) for v in texts) or type(pid) is not int or pid <= 0:
        raise TypeError("a field of the wrong kind")
    parse_aware(expires)
    extra = (doc.get("boot_id", ""), doc.get("pid_ns", ""))
    started = doc.get("started", 0)
    if not all(isinstance(v, str) for v in extra) or type(started) is not int:
        raise TypeError("a field of the wrong kind")
    return LockInfo(
        key=key,
        kind=kind if kind in KINDS else SWEEP,  # unknown: the most careful reading
        session=str(doc.get("session", key)),
        hostname=hostname,
        pid=pid,
        username=username,
        created=created,
        expires=expires,
        boot_id=extra[0],
        pid_ns=extra[1],
        started=started,
    )


class RepoLock:
    """A held lock; use as a context manager. Refreshes itself in a daemon thread."""

    def __init__(self, storage: Storage, clock: Clock, *, kind: str, url: str, wait: float = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown lock kind {kind!r}")
        self._storage = storage
        self._clock = clock
        self.kind = kind
        self.session = secrets.token_hex(16)
        self._seq = 0  # of the next lock object this session writes
        self.append_only = False  # set when the storage refused a delete: see _let_go
        self._url = url
        self._wait = wait
        self._key: str | None = None
        self._refreshed = clock.now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self.stale_seen: list[LockInfo] = []
        pid = os.getpid()
        self._holder = {
            "hostname": socket.gethostname(),
            "pid": pid,
            "boot_id": boot_id(),
            "pid_ns": pid_namespace(),
            "started": process_start(pid),
            "username": getpass.getuser(),
        }

    def _write(self) -> str:
        now = self._clock.now()
        doc = {
            "kind": self.kind,
            "session": self.session,
            "exclusive": self.kind == SWEEP,
            **self._holder,
            "created": now.isoformat(),
            "expires": (now + TTL).isoformat(),
            "nonce": secrets.token_hex(8),
        }
        data = json.dumps(doc, sort_keys=True).encode()
        key = f"{PREFIX}{self.session}.{self._seq:08d}"
        self._seq += 1
        self._storage.put(key, data)
        self._refreshed = now
        return key

    def _let_go(self, key: str) -> None:
        """Remove our lock object; when the storage may not delete, end the session instead
        (``locks/end-<session>``), which ends all of its objects."""
        try:
            self._storage.delete(key)
        except StoragePermission:
            self.append_only = True
            doc = {"session": self.session, "ended": self._clock.now().isoformat()}
            self._storage.put(END + self.session, json.dumps(doc).encode())

    def _conflicts(self) -> list[LockInfo]:
        now = self._clock.now()
        found = []
        self.stale_seen = []
        for lock in list_locks(self._storage):
            if lock.key == self._key:
                continue
            if is_stale(lock, now):
                self.stale_seen.append(lock)
            elif conflicts_with(self.kind, lock.kind):
                found.append(lock)
        return found

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
        """Take the lock; with ``wait``, retry for that many seconds while it conflicts (a
        reader waits out a prune's short sweep)."""
        deadline = self._clock.now() + timedelta(seconds=self._wait)
        while True:
            found = self._conflicts()
            if not found:
                self._key = self._write()
                found = self._conflicts()
                if not found:
                    break
                self._let_go(self._key)
                self._key = None
                self.session, self._seq = secrets.token_hex(16), 0  # that one may have ended
            if self._clock.now() >= deadline:
                self._raise_conflict(found)
            # jittered: two takers that saw each other and stepped back do not meet again
            self._clock.sleep(min(2.0, self._wait) * random.uniform(0.2, 1.0))
        self._thread = threading.Thread(target=self._refresh_loop, name="bcdr-lock", daemon=True)
        self._thread.start()
        for lock in self.stale_seen:  # they block no one, but they should not pile up unseen
            log.warning(
                "note: ignored the stale %s; `bcdr unlock --repo %s` removes it",
                lock.describe(),
                self._url,
            )
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            with self._mutex:
                if self._key is None:
                    return
                old = self._key
                try:
                    self._key = self._write()
                    with contextlib.suppress(StoragePermission):  # superseded: left for unlock
                        self._storage.delete(old)
                except Exception:  # noqa: BLE001 - retried next round; ensure_valid reports it
                    continue

    def ensure_valid(self) -> None:
        """Raise LockLost when the lock went unrefreshed for longer than its expiry (a process
        suspended, storage unreachable): others may have taken it for stale, so the holder
        must not commit what it wrote under it."""
        age = self._clock.now() - self._refreshed
        if age >= TTL:
            raise LockLost(
                f"the repository lock was not refreshed for {int(age.total_seconds())} s "
                f"(expiry {int(TTL.total_seconds())} s); what this run wrote was not committed",
                where=self._url,
                hint="run it again; its uploaded data is reused or collected by prune",
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        with self._mutex:
            if self._key:
                self._let_go(self._key)
                self._key = None

    def __enter__(self) -> RepoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def remove_locks(storage: Storage, clock: Clock, *, remove_all: bool) -> list[LockInfo]:
    """Remove stale locks (or every lock with ``remove_all``), and the leftovers of holders
    that could not delete; return the locks removed."""
    now = clock.now()
    removed = []
    for lock in list_locks(storage):
        if remove_all or is_stale(lock, now):
            storage.delete(lock.key)
            removed.append(lock)
    for key in leftover_locks(storage):
        storage.delete(key)
    return removed
