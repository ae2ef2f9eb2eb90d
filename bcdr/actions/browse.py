"""Looking into snapshots without restoring them: ``diff``, ``find``, ``dump`` and ``stats``.

Each reads under a ``read`` lock (a prune's sweep never deletes what it reads) and checks
what it reads as a restore does: every chunk against its id, every file against the
fingerprint its tree recorded.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import IO

from bcdr.actions.common import open_repo
from bcdr.actions.snapshots import walk
from bcdr.clock import Clock
from bcdr.errors import CorruptObject, UsageError
from bcdr.repository.bounds import check_snapshot_size
from bcdr.repository.hashing import fingerprint_for
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree
from bcdr.storage.url import StorageSpec

# -- diff --------------------------------------------------------------------------------------


@dataclass
class Change:
    path: str
    what: str  # "added", "removed", "changed" (content), "metadata" (mode, owner, times)
    type: str
    size: int | None = None  # in the second snapshot (the first for removed)
    fields: list[str] = field(default_factory=list)  # metadata: which fields differ

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Diff:
    first: Snapshot
    second: Snapshot
    changes: list[Change]

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("added", "removed", "changed", "metadata")}
        for c in self.changes:
            out[c.what] += 1
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "first": self.first.id,
            "second": self.second.id,
            "counts": self.counts(),
            "changes": [c.to_dict() for c in self.changes],
        }


META = ("mode", "uid", "gid", "mtime_ns", "target")


def _children(repo: Repository, tree: bytes | None) -> dict[bytes, Node]:
    if tree is None:
        return {}
    return {n.name: n for n in decode_tree(repo.load_blob(tree), f"tree {tree.hex()[:12]}")}


def diff(
    where: StorageSpec | str,
    first: str,
    second: str,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> Diff:
    """What changed from snapshot ``first`` to ``second``: folders whose tree is the same in
    both are not read (a day's incremental backup of a large tree is compared quickly)."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        with repo.lock(READ, wait=read_wait()):
            a, b = repo.resolve_snapshot(first), repo.resolve_snapshot(second)
            repo.load_index(verify_packs=True)
            for snap in (a, b):
                check_snapshot_size(repo, bytes.fromhex(snap.tree), f"snapshot {snap.short_id}")
            changes: list[Change] = []
            stack: list[tuple[bytes, bytes | None, bytes | None]] = [
                (b"", bytes.fromhex(a.tree), bytes.fromhex(b.tree))
            ]
            while stack:
                path, ta, tb = stack.pop()
                if ta == tb:
                    continue
                old, new = _children(repo, ta), _children(repo, tb)
                for name in sorted(old.keys() | new.keys(), reverse=True):
                    full = path + b"/" + name
                    stack += _compare(repo, full, old.get(name), new.get(name), changes)
            changes.sort(key=lambda c: c.path)
            return Diff(a, b, changes)
    finally:
        repo.close()


def _compare(
    repo: Repository, path: bytes, old: Node | None, new: Node | None, changes: list[Change]
) -> list[tuple[bytes, bytes | None, bytes | None]]:
    """Record what differs at ``path``; the folders to look into."""
    shown = os.fsdecode(path)
    if old is None or new is None:
        node = new or old
        assert node is not None
        what = "added" if new is not None else "removed"
        for sub, n in [(path, node), *_below(repo, path, node)]:
            changes.append(
                Change(os.fsdecode(sub), what, n.type, n.size if n.type == FILE else None)
            )
        return []
    if old.type != new.type:
        changes.append(Change(shown, "removed", old.type))
        changes.append(Change(shown, "added", new.type, new.size if new.type == FILE else None))
        return [(path, old.subtree, None)] if old.type == DIR else []
    if new.type == FILE and (old.content != new.content or old.digest != new.digest):
        changes.append(Change(shown, "changed", FILE, new.size))
    else:
        differ = [f for f in META if getattr(old, f) != getattr(new, f)]
        if differ and new.type != DIR:
            changes.append(Change(shown, "metadata", new.type, fields=differ))
        elif differ and [f for f in differ if f != "mtime_ns"]:  # a folder's time follows its files
            changes.append(Change(shown, "metadata", DIR, fields=differ))
    return [(path, old.subtree, new.subtree)] if new.type == DIR else []


def _below(repo: Repository, path: bytes, node: Node) -> list[tuple[bytes, Node]]:
    if node.type != DIR or not node.subtree:
        return []
    return list(walk(repo, node.subtree, path))


# -- find --------------------------------------------------------------------------------------


@dataclass
class Found:
    snapshot: str
    time: str
    path: str
    type: str
    size: int
    mtime_ns: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def find(
    where: StorageSpec | str,
    patterns: tuple[str, ...],
    *,
    snapshots: tuple[str, ...] = (),
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Found]:
    """Paths matching any of ``patterns`` in every snapshot (or those named), oldest first. A
    pattern with a ``/`` matches the whole path, one without matches the name (``*.pt``)."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        with repo.lock(READ, wait=read_wait()):
            snaps = (
                [repo.resolve_snapshot(ref, job) for ref in snapshots]
                if snapshots
                else repo.list_snapshots(job)
            )
            repo.load_index(verify_packs=True)
            out = []
            for snap in sorted(snaps, key=lambda s: s.time):
                check_snapshot_size(repo, bytes.fromhex(snap.tree), f"snapshot {snap.short_id}")
                for path, node in walk(repo, bytes.fromhex(snap.tree)):
                    text = os.fsdecode(path)
                    name = text.rsplit("/", 1)[-1]
                    if any(fnmatch.fnmatchcase(text if "/" in p else name, p) for p in patterns):
                        found = Found(snap.id, snap.time, text, node.type, node.size, node.mtime_ns)
                        out.append(found)
            return out
    finally:
        repo.close()


# -- dump --------------------------------------------------------------------------------------


class _Content:
    """A file's bytes from its chunks, read as they are asked for, checked against the
    fingerprint its tree recorded once all are read."""

    def __init__(self, repo: Repository, node: Node, path: str):
        self.repo, self.node, self.path = repo, node, path
        self._chunks = iter(node.content)
        self._buf = b""
        self._hasher = fingerprint_for(node.digest)
        self._size = 0

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            cid = next(self._chunks, None)
            if cid is None:
                self._finish()
                break
            data = self.repo.load_blob(cid)
            self._hasher.update(data)
            self._size += len(data)
            self._buf += data
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _finish(self) -> None:
        if self._size != self.node.size or (
            self.node.digest is not None and self._hasher.hexdigest() != self.node.digest
        ):
            raise CorruptObject(
                f"{self.path}: its content does not match the fingerprint its snapshot "
                "recorded; what was written is not the file",
                hint="run `bcdr check --read-data`",
            )


def dump(
    where: StorageSpec | str,
    ref: str,
    path: str,
    out: IO[bytes],
    *,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Write one file's bytes, or a folder as a tar stream, to ``out``; returns what it was
    (``file``, ``folder``, ``symlink``)."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        with repo.lock(READ, wait=read_wait()):
            snap = repo.resolve_snapshot(ref, job)
            repo.load_index(verify_packs=True)
            check_snapshot_size(repo, bytes.fromhex(snap.tree), f"snapshot {snap.short_id}")
            want = os.fsencode(path).rstrip(b"/")
            node = _lookup(repo, bytes.fromhex(snap.tree), want)
            if node is None:
                raise UsageError(
                    f"no path {path!r} in snapshot {snap.short_id}",
                    hint="paths in a snapshot are absolute, as backed up; see `bcdr ls`",
                )
            if node.type == FILE:
                content = _Content(repo, node, path)
                while data := content.read(1 << 20):
                    out.write(data)
                return "file"
            _tar(repo, want, node, out)
            return "folder" if node.type == DIR else node.type
    finally:
        repo.close()


def _lookup(repo: Repository, root: bytes, path: bytes) -> Node | None:
    node = Node(b"", DIR, subtree=root)
    for part in [p for p in path.split(b"/") if p]:
        if node.type != DIR:
            return None
        found = _children(repo, node.subtree).get(part)
        if found is None:
            return None
        node = found
    return node


def _tar(repo: Repository, path: bytes, node: Node, out: IO[bytes]) -> None:
    """A tar stream (POSIX pax) of ``node`` and everything below it, names relative to the
    folder above it."""
    base = os.path.dirname(path)
    entries: Iterator[tuple[bytes, Node]] = iter([(path, node)])
    if node.type == DIR and node.subtree:
        entries = iter([(path, node), *walk(repo, node.subtree, path)])
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for full, n in entries:
            info = tarfile.TarInfo(os.fsdecode(os.path.relpath(full, base or b"/")))
            info.mode = stat.S_IMODE(n.mode)
            info.uid, info.gid = n.uid, n.gid
            info.mtime = n.mtime_ns / 1e9
            if n.type == DIR:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif n.type == SYMLINK:
                info.type = tarfile.SYMTYPE
                info.linkname = os.fsdecode(n.target or b"")
                tar.addfile(info)
            elif n.type == FILE:
                info.size = n.size
                tar.addfile(info, _Content(repo, n, os.fsdecode(full)))


# -- stats -------------------------------------------------------------------------------------


@dataclass
class JobStats:
    job: str | None
    snapshots: int = 0
    newest: str | None = None
    restore_size: int = 0  # of its newest snapshot
    files: int = 0  # in its newest snapshot
    logical_bytes: int = 0  # the restore sizes of all its snapshots, added up

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class RepoStats:
    snapshots: int
    stored_bytes: int  # what the packs take in the repository
    packs: int
    logical_bytes: int  # every snapshot's restore size, added up
    jobs: list[JobStats]

    @property
    def dedup_ratio(self) -> float | None:
        return round(self.logical_bytes / self.stored_bytes, 2) if self.stored_bytes else None

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshots": self.snapshots,
            "stored_bytes": self.stored_bytes,
            "packs": self.packs,
            "logical_bytes": self.logical_bytes,
            "dedup_ratio": self.dedup_ratio,
            "jobs": [j.to_dict() for j in self.jobs],
        }


def stats(
    where: StorageSpec | str,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> RepoStats:
    """Sizes from the snapshots' own records (what each backup counted) and the packs'
    listing: nothing is read but the snapshot objects."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        snaps = repo.list_snapshots()
        packs = list(repo.storage.list("data/"))
        jobs: dict[str | None, JobStats] = {}
        for snap in sorted(snaps, key=lambda s: s.time):
            j = jobs.setdefault(snap.job, JobStats(snap.job))
            size = int(snap.stats.get("bytes_total", 0))
            j.snapshots += 1
            j.logical_bytes += size
            j.newest, j.restore_size = snap.id, size
            counts = ("files_new", "files_changed", "files_unchanged")
            j.files = sum(int(snap.stats.get(k, 0)) for k in counts)
        return RepoStats(
            snapshots=len(snaps),
            stored_bytes=sum(p.size for p in packs),
            packs=len(packs),
            logical_bytes=sum(j.logical_bytes for j in jobs.values()),
            jobs=sorted(jobs.values(), key=lambda j: j.job or ""),
        )
    finally:
        repo.close()
