"""A folder's entries stat'ed ahead, side by side, where each stat is a round trip to a server.

On NFS, Lustre, BeeGFS, SMB, CephFS, GPFS, GlusterFS or FUSE an ``lstat`` waits for a server
(a Lustre metadata server answers in 0.1-1 ms), so a walk that stats one entry at a time is
bound by that wait, not by its CPU: a hundred million files at 0.2 ms is 5.5 hours a walk, and
a sharded run walks twice (its plan and its commit, docs/scale-out.md). On such filesystems the
walks (a backup's, a sharded run's plan and commit, the progress line's count) take each
folder's entries' stats from a pool of THREADS threads, which keeps up to AHEAD of them in
flight (``lstat`` releases the GIL), and use them in the folder's order; in a folder whose
entries are all new (no parent snapshot holds it) their extended attributes too, which a
backup reads for every new entry. A sharded restore's finish checks each folder's restored
files the same way, a drill reads its restored files back side by side, and a restore's
workers write each batch of small files side by side (bcdr/archive/filerestore.py). On a local
filesystem a stat is a microsecond of CPU: there the entries are stat'ed one at a time in the
walking thread, when reached, as if this module did not exist.

``BCDR_STAT_AHEAD=0`` never stats ahead; ``=1`` always does (any filesystem).

A stat taken ahead is up to AHEAD entries older when the walk reaches it, and the walk goes by
what it found, as it goes by a stat taken just before: a file unchanged then keeps the parent
snapshot's node; one read is saved as read (bcdr/archive/backup.py). A walk was never one
instant.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from bcdr.archive.filewrite import filesystem_of
from bcdr.archive.xattrs import Xattrs, read_xattrs

#: Filesystem types (``/proc/self/mountinfo``) whose metadata lives behind a network or a
#: user-space server; any ``fuse.*`` too.
SLOW_METADATA = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "beegfs",
        "cifs",
        "smb3",
        "smbfs",
        "ceph",
        "gpfs",
        "glusterfs",
        "9p",
        "afs",
        "fuse",
        "fuseblk",
    }
)
THREADS = 16
#: Stats in flight per folder being walked (each level of the walk keeps its own).
AHEAD = 128

Stat = os.stat_result | OSError
T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the items a map goes over


def slow_metadata(fstype: str | None) -> bool:
    """Is a stat on a filesystem of this type a round trip to a server?"""
    return fstype is not None and (fstype in SLOW_METADATA or fstype.startswith("fuse."))


def _lstat(path: bytes) -> Stat:
    try:
        return os.lstat(path)
    except OSError as exc:
        return exc


class StatAhead:
    """The stats of a walk's entries, taken ahead in threads where the folder's filesystem
    is slow to answer (:func:`slow_metadata`), else one by one when reached. Not shared
    between threads; :meth:`close` ends its threads (a process forks only without them)."""

    def __init__(self, mode: str | None = None, *, threads: int = THREADS):
        self._mode = os.environ.get("BCDR_STAT_AHEAD", "") if mode is None else mode
        self._threads = threads
        self._slow: dict[int, bool] = {}  # device -> slow, looked up once per device met
        self._pool: ThreadPoolExecutor | None = None
        self.taken_ahead = 0  # results the threads gave (what the tests look at)

    def slow(self, folder: bytes, device: int, fstype: str | None = None) -> bool:
        """Are ``folder``'s entries (on ``device``) stat'ed ahead? ``fstype``: its
        filesystem's type when the caller looked it up already."""
        if self._mode in ("0", "1"):
            return self._mode == "1"
        found = self._slow.get(device)
        if found is None:
            found = self._slow[device] = slow_metadata(fstype or filesystem_of(folder))
        return found

    def reads_ahead(self) -> bool:
        """Are whole files read ahead in the threads (a read-back: bcdr/archive/readback.py)?
        On every filesystem, since each small file read back is a read from the device,
        unless ``BCDR_STAT_AHEAD=0``."""
        return self._mode != "0"

    def lstats(self, paths: Iterable[bytes], ahead: bool) -> Generator[Stat, None, None]:
        """``os.lstat`` of each path, in order: the result, or the OSError it raised.
        ``ahead``: taken by the threads, up to AHEAD in flight; else each when reached."""
        return self.map(_lstat, paths, ahead)

    def xattrs(self, paths: Iterable[bytes]) -> Generator[Xattrs, None, None]:
        """:func:`read_xattrs` of each path, in order, taken ahead by the threads (for a
        folder whose every entry is new: each has its attributes read anyway)."""
        return self.map(read_xattrs, paths)

    def map(
        self, fn: Callable[[I], T], items: Iterable[I], ahead: bool = True
    ) -> Generator[T, None, None]:
        """``fn(item)`` of each item, in order: run by the threads up to AHEAD ahead of the
        caller, or (not ``ahead``) by the caller as it asks. ``fn`` must not raise (it
        returns the error instead)."""
        if not ahead:
            for item in items:
                yield fn(item)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="bcdr-stat")
        pool = self._pool
        pending: deque[Future[T]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= AHEAD:
                    yield pending.popleft().result()
                    self.taken_ahead += 1
            while pending:
                yield pending.popleft().result()
                self.taken_ahead += 1
        finally:
            for fut in pending:  # the walk stopped early (an error, an interrupt)
                fut.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
