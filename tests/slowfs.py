"""A passthrough FUSE filesystem whose every ``getattr`` and ``listxattr`` waits DELAY
seconds, as a network filesystem's server makes a stat wait: ``python tests/slowfs.py SOURCE
MOUNTPOINT DELAY [--writable] [--rot PREFIX]`` (read-only unless told; writable: what a
restore into it needs; ``--rot``: files whose name starts with PREFIX read back with their
first byte flipped, as a disk that did not keep what was written). Through the real libfuse
and the kernel's FUSE (no attribute or entry caching, so each ``lstat`` reaches it). Per
operation it counts the calls answered and the most that were waiting at once: how a walk
over it asked, one at a time or side by side. A stat of ``/.slowfs-counts-OP`` tells them
(its size is ``calls * 1000 + most``; see :func:`counts`), one of ``/.slowfs-reset`` zeroes
them (and fails: no such file)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mfusepy as fuse  # type: ignore[import-untyped]

ATTRS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size")
TIMES = ("st_atime", "st_mtime", "st_ctime")
RESET = "/.slowfs-reset"
COUNTS = "/.slowfs-counts-"
OPS = ("getattr", "listxattr")


def counts(mountpoint: str | os.PathLike[str], op: str = "getattr") -> tuple[int, int]:
    """(``op`` calls answered, the most that waited at once) since the last reset."""
    size = os.stat(os.path.join(mountpoint, COUNTS.lstrip("/") + op)).st_size
    return size // 1000, size % 1000


def reset(mountpoint: str | os.PathLike[str]) -> None:
    assert not os.path.exists(os.path.join(mountpoint, RESET.lstrip("/")))


class SlowFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, source: str, delay: float, writable: bool = False, rot: str = ""):
        self.source = source
        self.delay = delay
        self.writable = writable
        self.rot = rot
        self.counting = threading.Lock()
        self.waiting = dict.fromkeys(OPS, 0)
        self.most = dict.fromkeys(OPS, 0)
        self.calls = dict.fromkeys(OPS, 0)

    def _real(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    @contextmanager
    def _slow(self, op: str) -> Iterator[None]:
        with self.counting:
            self.waiting[op] += 1
            self.most[op] = max(self.most[op], self.waiting[op])
        try:
            time.sleep(self.delay)
            yield
        finally:
            with self.counting:
                self.waiting[op] -= 1
                self.calls[op] += 1

    def _passed(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except OSError as exc:
            raise fuse.FuseOSError(exc.errno or errno.EIO) from None

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        if path == RESET:  # a look at this name starts the counts again
            with self.counting:
                for op in OPS:
                    self.most[op] = self.calls[op] = 0
            raise fuse.FuseOSError(errno.ENOENT)
        if path.startswith(COUNTS) and path[len(COUNTS) :] in OPS:
            op = path[len(COUNTS) :]
            with self.counting:
                told = self.calls[op] * 1000 + min(self.most[op], 999)
            return {"st_mode": 0o100444, "st_nlink": 1, "st_size": told, "st_ino": 1 << 40}
        with self._slow("getattr"):
            st = self._passed(lambda: os.lstat(self._real(path)))
        out = {k: getattr(st, k) for k in ATTRS}
        out.update({k: getattr(st, k + "_ns") for k in TIMES})
        return out

    def listxattr(self, path: str) -> list[str]:
        with self._slow("listxattr"):
            names: list[str] = self._passed(
                lambda: os.listxattr(self._real(path), follow_symlinks=False)
            )
            return names

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        value: bytes = self._passed(
            lambda: os.getxattr(self._real(path), name, follow_symlinks=False)
        )
        return value

    def readdir(self, path: str, fh: Any) -> list[tuple[str, dict[str, int], int]]:
        # each entry with its inode (``use_ino``: an entry without one reads as deleted)
        out = []
        with os.scandir(self._real(path)) as entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                out.append((e.name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
        here = os.lstat(self._real(path))
        dots = [(n, {"st_mode": here.st_mode, "st_ino": here.st_ino}, 0) for n in (".", "..")]
        return dots + out

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def open(self, path: str, flags: int) -> int:
        if not self.writable:
            flags = os.O_RDONLY
        return int(self._passed(lambda: os.open(self._real(path), flags & ~os.O_CREAT)))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        data = os.pread(fh, size, offset)
        if self.rot and offset == 0 and data and os.path.basename(path).startswith(self.rot):
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    # -- writable (``--writable``): what a restore into it does -----------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL
        return int(self._passed(lambda: os.open(self._real(path), flags, mode)))

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return int(self._passed(lambda: os.pwrite(fh, data, offset)))

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        self._passed(lambda: os.truncate(self._real(path), length))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._passed(lambda: os.fsync(fh))
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        self._passed(lambda: os.mkdir(self._real(path), mode))
        return 0

    def rmdir(self, path: str) -> int:
        self._passed(lambda: os.rmdir(self._real(path)))
        return 0

    def unlink(self, path: str) -> int:
        self._passed(lambda: os.unlink(self._real(path)))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._passed(lambda: os.rename(self._real(old), self._real(new)))
        return 0

    def link(self, target: str, source: str) -> int:  # ln SOURCE TARGET
        self._passed(lambda: os.link(self._real(source), self._real(target)))
        return 0

    def symlink(self, target: str, source: str) -> int:  # ln -s SOURCE TARGET
        self._passed(lambda: os.symlink(source, self._real(target)))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._passed(lambda: os.chmod(self._real(path), mode, follow_symlinks=False))
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._passed(lambda: os.chown(self._real(path), uid, gid, follow_symlinks=False))
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        real = self._real(path)
        now = time.time_ns()
        self._passed(lambda: os.utime(real, ns=times or (now, now), follow_symlinks=False))
        return 0

    def setxattr(self, path: str, name: str, value: bytes, options: int, position: int = 0) -> int:
        real = self._real(path)
        self._passed(lambda: os.setxattr(real, name, value, options, follow_symlinks=False))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        keys = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree")
        return {k: getattr(st, k) for k in keys} | {"f_namemax": st.f_namemax}


def main() -> None:
    source, mountpoint, delay = sys.argv[1:4]
    rest = sys.argv[4:]
    rot = rest[rest.index("--rot") + 1] if "--rot" in rest else ""
    writable = "--writable" in rest
    ops = SlowFS(os.path.abspath(source), float(delay), writable, rot)
    fuse.FUSE(
        ops,
        mountpoint,
        foreground=True,
        ro=not writable,
        nothreads=False,
        use_ino=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="slowfs",
        subtype="slowfs",
    )


if __name__ == "__main__":
    main()
