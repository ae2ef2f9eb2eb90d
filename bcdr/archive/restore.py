"""Restore a snapshot's tree into a target folder, verifying every file.

Each file is written to a temporary name beside its destination, its xxh3-128 digest and size
are compared with the tree's record, and only then is it renamed into place: a file whose data
is damaged or missing is reported and never appears with wrong bytes. Chunks of zeros are
skipped with a seek, so sparse files come back sparse where the filesystem allows. Hardlinked
files (same device and inode in the snapshot) come back as hardlinks. Owners are restored when
running as root; directory metadata is applied last, deepest first.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from bcdr.archive.patterns import PathMatcher
from bcdr.errors import BcdrError
from bcdr.repository.hashing import new_fingerprint
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes_written: int = 0
    bytes_total: int = 0
    duration_s: float = 0.0
    first_byte_s: float | None = None
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


ProgressFn = Callable[[RestoreStats, bytes], None]
_AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


HOLE_BLOCK = 64 * 1024


def _is_zero(data: bytes | memoryview) -> bool:
    return data[:1] == b"\0" and data[-1:] == b"\0" and bytes(data).count(0) == len(data)


def _write_sparse(fd: int, data: bytes, pos: int) -> bool:
    """Write ``data`` at ``pos``, leaving runs of zeros (whole 64 KiB blocks) as holes.

    Returns whether anything was written."""
    if len(data) <= HOLE_BLOCK:
        if _is_zero(data):
            return False
        os.pwrite(fd, data, pos)
        return True
    view = memoryview(data)
    wrote = False
    start = None  # start of the pending non-zero run
    for off in range(0, len(data), HOLE_BLOCK):
        block = view[off : off + HOLE_BLOCK]
        if _is_zero(block):
            if start is not None:
                os.pwrite(fd, view[start:off], pos + start)
                wrote, start = True, None
        elif start is None:
            start = off
    if start is not None:
        os.pwrite(fd, view[start:], pos + start)
        wrote = True
    return wrote


class Restorer:
    def __init__(
        self,
        repo: Repository,
        target: bytes,
        *,
        includes: PathMatcher | None = None,
        progress: ProgressFn | None = None,
    ):
        self.repo = repo
        self.target = target
        self.includes = includes if includes else None
        self.progress = progress
        self.stats = RestoreStats()
        self._links: dict[tuple[int, int], bytes] = {}
        self._dirs: list[tuple[bytes, Node]] = []
        self._started = 0.0
        self._last_progress = 0.0

    def run(self, root_tree: bytes) -> RestoreStats:
        self._started = time.monotonic()
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, 20000))
        try:
            os.makedirs(self.target, exist_ok=True)
            self._restore_tree(root_tree, b"", self.includes is None)
        finally:
            sys.setrecursionlimit(old_limit)
        for path, node in reversed(self._dirs):
            self._apply_meta(path, node)
        self.stats.duration_s = time.monotonic() - self._started
        return self.stats

    def _error(self, snap_path: bytes, reason: str) -> None:
        self.stats.errors.append({"path": os.fsdecode(snap_path), "error": reason})

    def _restore_tree(self, tree_id: bytes, rel: bytes, included: bool) -> bool:
        """Restore the nodes of a tree under ``rel``; True if anything was restored."""
        try:
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        except BcdrError as exc:
            self._error(b"/" + rel, f"cannot read directory listing: {exc}")
            return False
        restored = False
        for node in nodes:
            snap_path = rel + b"/" + node.name
            inc = included or (self.includes is not None and self.includes.matches(snap_path))
            if node.type == DIR:
                restored |= self._restore_dir(node, snap_path, inc)
            elif inc:
                restored = True
                self._restore_entry(node, snap_path)
        return restored

    def _dest(self, snap_path: bytes) -> bytes:
        return os.path.join(self.target, snap_path.lstrip(b"/"))

    def _restore_dir(self, node: Node, snap_path: bytes, included: bool) -> bool:
        dest = self._dest(snap_path)
        if included:
            try:
                os.makedirs(dest, exist_ok=True)
            except OSError as exc:
                self._error(snap_path, f"cannot create directory: {exc.strerror}")
                return False
        restored = node.subtree is not None and self._restore_tree(
            node.subtree, snap_path, included
        )
        if included or restored:
            self._dirs.append((dest, node))
            self.stats.dirs += 1
        return included or restored

    def _restore_entry(self, node: Node, snap_path: bytes) -> None:
        dest = self._dest(snap_path)
        try:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if node.type == FILE:
                self._restore_file(node, dest, snap_path)
            elif node.type == SYMLINK:
                _remove_existing(dest)
                os.symlink(node.target or b"", dest)
                self._apply_meta(dest, node)
                self.stats.symlinks += 1
        except BcdrError as exc:
            self._error(snap_path, str(exc))
        except OSError as exc:
            self._error(snap_path, f"{exc.strerror or exc}")

    def _restore_file(self, node: Node, dest: bytes, snap_path: bytes) -> None:
        link_key = (node.dev, node.inode)
        if node.nlink > 1 and link_key in self._links:
            _remove_existing(dest)
            os.link(self._links[link_key], dest)
            self.stats.hardlinks += 1
            return
        tmp = os.path.join(os.path.dirname(dest), b".bcdr-restore-" + secrets.token_hex(6).encode())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            digest = new_fingerprint()
            pos = 0
            for blob_id in node.content:
                data = self.repo.load_blob(blob_id)
                digest.update(data)
                if _write_sparse(fd, data, pos):
                    if self.stats.first_byte_s is None:
                        self.stats.first_byte_s = time.monotonic() - self._started
                pos += len(data)
                self.stats.bytes_written += len(data)
                self._tick(snap_path)
            os.ftruncate(fd, pos)
            if pos != node.size or digest.hexdigest() != node.digest:
                raise BcdrError(
                    f"verification failed: restored {pos} bytes with digest "
                    f"{digest.hexdigest()}, expected {node.size} bytes with {node.digest}"
                )
            if _AS_ROOT:
                os.fchown(fd, node.uid, node.gid)
            os.fchmod(fd, node.mode)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        if os.path.isdir(dest) and not os.path.islink(dest):
            os.unlink(tmp)
            raise BcdrError("a directory is in the way of this file")
        os.replace(tmp, dest)
        os.utime(dest, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        if node.nlink > 1:
            self._links[link_key] = dest
        self.stats.files += 1
        self.stats.bytes_total += node.size

    def _apply_meta(self, path: bytes, node: Node) -> None:
        try:
            if _AS_ROOT:
                os.chown(path, node.uid, node.gid, follow_symlinks=False)
            if node.type != SYMLINK:
                os.chmod(path, node.mode)
            os.utime(path, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
        except OSError as exc:
            self._error(path, f"cannot set metadata: {exc.strerror}")

    def _tick(self, path: bytes) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= 0.2:
            self._last_progress = now
            self.progress(self.stats, path)


def _remove_existing(path: bytes) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        raise BcdrError("a directory is in the way")
