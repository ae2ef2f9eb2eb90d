"""``bcdr mount``: a repository's snapshots as a read-only filesystem (FUSE, through the
``mfusepy`` binding and the system's libfuse), to browse them and copy out what is needed.

Layout under the mount point::

    ids/<short id>/...             every snapshot, by id
    snapshots/<time>/...           by time (UTC, to the second; "-<short id>" when two share one)
    jobs/<job>/<time>/...          by job, and jobs/<job>/latest
    latest/...                     the newest snapshot

Below a snapshot, its tree as backed up (absolute paths: ``ids/1c48b7aa/data/ckpt/...``).

What it promises:

- **read-only**, mounted ``nosuid,nodev`` and without ``allow_other``: only the user who mounted
  it can look, no setuid bit or device works through it, nothing can be written;
- **verified bytes**: every chunk read is checked against its id (a keyed hash) as restore
  checks it, so a damaged or altered pack gives EIO, never wrong bytes;
- **a hostile tree cannot escape**: a tree naming ``..``, a name with ``/`` or a NUL, or a
  name twice does not parse (``decode_tree``): its folder reads as an I/O error, logged, as a
  restore refuses it; a job name that is not a safe name gets no ``jobs/`` folder;
- **the repository stays consistent**: the mount holds a read lock (refreshed) for its
  lifetime, so a prune waits; Ctrl-C or SIGTERM unmounts and releases it.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import os
import signal
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.errors import BcdrError, UsageError
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree
from bcdr.storage.url import StorageSpec

log = logging.getLogger("bcdr.mount")

#: Decoded chunks kept for reads that come back to them (the kernel reads 128 KiB at a time).
CHUNK_CACHE = 64
#: Decoded folders kept.
TREE_CACHE = 4096
_TYPE = {
    DIR: stat.S_IFDIR,
    FILE: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
}


def fuse_module() -> Any:
    """The FUSE binding, or a clear error naming what to install."""
    try:
        import mfusepy  # type: ignore[import-untyped]
    except (ImportError, OSError) as exc:  # OSError: libfuse itself is not installed
        raise UsageError(
            f"bcdr mount needs FUSE: {exc}",
            hint="install libfuse and fusermount (Debian: apt-get install fuse); "
            "to read a snapshot without FUSE use `bcdr restore` or `bcdr dump`",
        ) from None
    return mfusepy


def safe_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


@dataclass(frozen=True)
class _Virtual:
    """A folder of the layout above the snapshots: its entries, name -> root tree or folder."""

    entries: Mapping[bytes, _Virtual | Snapshot]


def layout(snaps: list[Snapshot]) -> _Virtual:
    """ids/, snapshots/, jobs/ and latest over the snapshots."""
    ordered = sorted(snaps, key=lambda s: (s.datetime, s.id))
    ids = {s.short_id.encode(): s for s in ordered}
    by_time: dict[bytes, Snapshot] = {}
    jobs: dict[bytes, dict[bytes, Snapshot]] = {}
    for snap in ordered:
        when = snap.datetime.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        name = when if when not in by_time else when + b"-" + snap.short_id.encode()
        by_time[name] = snap
        if snap.job and safe_name(snap.job.encode()):
            per_job = jobs.setdefault(snap.job.encode(), {})
            per_job[name] = snap
            per_job[b"latest"] = snap
    top: dict[bytes, _Virtual | Snapshot] = {
        b"ids": _Virtual(dict(ids)),
        b"snapshots": _Virtual(by_time),
        b"jobs": _Virtual({j: _Virtual(dict(e)) for j, e in jobs.items()}),
    }
    if ordered:
        top[b"latest"] = ordered[-1]
    return _Virtual(top)


class SnapshotFS:
    """The filesystem's operations (``mfusepy.Operations``), answering from the repository."""

    use_ns = True

    def __init__(self, repo: Repository, root: _Virtual, uid: int, gid: int):
        self.repo = repo
        self.root = root
        self.uid, self.gid = uid, gid
        self._trees: OrderedDict[bytes, dict[bytes, Node]] = OrderedDict()
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()
        self._offsets: dict[int, tuple[list[bytes], list[int]]] = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()

    # -- resolving ---------------------------------------------------------------------------

    def _children(self, tree: bytes) -> dict[bytes, Node]:
        with self._lock:
            cached = self._trees.get(tree)
            if cached is not None:
                self._trees.move_to_end(tree)
                return cached
        # decode_tree refuses a name holding "/" or NUL, "." or "..", and a name twice: such
        # a folder reads as EIO (logged), as restore refuses it
        nodes = decode_tree(self.repo.load_blob(tree), f"tree {tree.hex()[:12]}")
        out = {n.name: n for n in nodes}
        with self._lock:
            self._trees[tree] = out
            if len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)
        return out

    def _find(self, path: str) -> _Virtual | Snapshot | Node:
        item: _Virtual | Snapshot | Node = self.root
        for part in [os.fsencode(p) for p in path.split("/") if p]:
            found: _Virtual | Snapshot | Node | None
            if isinstance(item, _Virtual):
                found = item.entries.get(part)
            elif isinstance(item, Snapshot):
                found = self._children(bytes.fromhex(item.tree)).get(part)
            elif item.type == DIR and item.subtree is not None:
                found = self._children(item.subtree).get(part)
            else:
                found = None
            if found is None:
                raise _error(errno.ENOENT)
            item = found
        return item

    # -- operations --------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        item = self._guard(self._find, path)
        if not isinstance(item, Node):
            t = int(item.datetime.timestamp() * 1e9) if isinstance(item, Snapshot) else 0
            return {
                "st_mode": stat.S_IFDIR | 0o555,
                "st_nlink": 2,
                "st_uid": self.uid,
                "st_gid": self.gid,
                "st_mtime": t,
                "st_ctime": t,
                "st_atime": t,
            }
        mode = _TYPE.get(item.type, stat.S_IFREG) | stat.S_IMODE(item.mode)  # nosuid: inert
        size = item.size if item.type == FILE else 0
        if item.type == SYMLINK:
            size = len(item.target or b"")
        return {
            "st_mode": mode & ~0o222,  # read-only, whatever was stored
            "st_nlink": 2 if item.type == DIR else max(1, item.nlink),
            "st_size": size,
            "st_uid": item.uid,
            "st_gid": item.gid,
            "st_mtime": item.mtime_ns,
            "st_ctime": item.mtime_ns,
            "st_atime": item.mtime_ns,
            "st_rdev": getattr(item, "rdev", 0) or 0,
            "st_blocks": (size + 511) // 512,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        item = self._guard(self._find, path)
        if isinstance(item, _Virtual):
            names = list(item.entries)
        elif isinstance(item, Snapshot):
            names = list(self._guard(self._children, bytes.fromhex(item.tree)))
        elif item.type == DIR and item.subtree is not None:
            names = list(self._guard(self._children, item.subtree))
        elif item.type == DIR:
            names = []
        else:
            raise _error(errno.ENOTDIR)
        return [".", "..", *(os.fsdecode(n) for n in names)]

    def readlink(self, path: str) -> str:
        item = self._guard(self._find, path)
        if not isinstance(item, Node) or item.type != SYMLINK:
            raise _error(errno.EINVAL)
        return os.fsdecode(item.target or b"")

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC | os.O_CREAT):
            raise _error(errno.EROFS)
        item = self._guard(self._find, path)
        if not isinstance(item, Node) or item.type != FILE:
            raise _error(errno.EISDIR if not isinstance(item, Node) else errno.EINVAL)
        locs = self._guard(self.repo.index.lookup_many, item.content)
        if any(loc is None for loc in locs):
            raise _error(errno.EIO)  # a chunk the index does not know: `bcdr check` says more
        starts = list(itertools.accumulate((loc.raw_len for loc in locs if loc), initial=0))
        fh = next(self._handles)
        with self._lock:
            self._offsets[fh] = (list(item.content), starts)
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._lock:
            content, starts = self._offsets[fh]
        out = bytearray()
        i = max(0, bisect.bisect_right(starts, offset) - 1)
        while len(out) < size and i < len(content):
            data = self._guard(self._chunk, content[i])
            lo = max(0, offset + len(out) - starts[i])
            out += data[lo : lo + size - len(out)]
            i += 1
        return bytes(out)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._offsets.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # -- helpers -----------------------------------------------------------------------------

    def _chunk(self, cid: bytes) -> bytes:
        with self._lock:
            cached = self._chunks.get(cid)
            if cached is not None:
                self._chunks.move_to_end(cid)
                return cached
        data = self.repo.load_blob(cid)  # checked against its id: wrong bytes never leave
        with self._lock:
            self._chunks[cid] = data
            if len(self._chunks) > CHUNK_CACHE:
                self._chunks.popitem(last=False)
        return data

    def _guard(self, fn: Any, *args: Any) -> Any:
        """Call ``fn``; a repository problem becomes EIO (logged), never a crash of the mount."""
        try:
            return fn(*args)
        except BcdrError as exc:
            log.error("%s", exc)
            raise _error(errno.EIO) from None


def _error(code: int) -> OSError:
    """What an operation raises: the binding answers the kernel with ``-code``."""
    return OSError(code, os.strerror(code))


@contextmanager
def _libfuse_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP at their defaults while mounted, so libfuse installs its own
    handlers (it leaves a signal alone when someone handles it): they end its loop, which
    unmounts. Python's handlers would only run at the next filesystem call, so a Ctrl-C on an
    idle mount would wait forever."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    before = {s: signal.signal(s, signal.SIG_DFL) for s in signals}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def mount(
    where: StorageSpec | str,
    mountpoint: str,
    *,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
    on_ready: Any = None,
) -> int:
    """Mount the repository's snapshots read-only at ``mountpoint`` until Ctrl-C, SIGTERM or
    ``fusermount -u``."""
    fuse = fuse_module()
    if not os.path.isdir(mountpoint):
        raise UsageError(
            f"{mountpoint}: not a folder", hint="create an empty folder to mount on first"
        )
    if os.listdir(mountpoint):
        raise UsageError(
            f"{mountpoint}: the folder is not empty",
            hint="mount on an empty folder; FUSE would hide what is in it",
        )
    repo = open_repo(where, clock=clock, env=env)
    try:
        with repo.lock(READ, wait=read_wait()):
            snaps = repo.list_snapshots(job)
            repo.load_index(verify_packs=True)
            operations = type("BcdrOperations", (SnapshotFS, fuse.Operations), {})
            ops = operations(repo, layout(snaps), os.getuid(), os.getgid())
            if on_ready is not None:
                on_ready(len(snaps))
            with _libfuse_signals():
                fuse.FUSE(
                    ops,
                    mountpoint,
                    foreground=True,
                    ro=True,
                    nosuid=True,
                    nodev=True,
                    nothreads=False,
                    fsname="bcdr",
                    subtype="bcdr",
                    default_permissions=True,
                )
            return len(snaps)
    finally:
        repo.close()
