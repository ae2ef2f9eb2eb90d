"""A read-only passthrough FUSE filesystem whose every ``getattr`` waits DELAY seconds, as a
network filesystem's metadata server makes a stat wait: ``python tests/slowfs.py SOURCE
MOUNTPOINT DELAY``. Through the real libfuse and the kernel's FUSE (no attribute or entry
caching, so each ``lstat`` reaches it). It counts the ``getattr`` calls answered and the most
that were waiting at once: how a walk over it stat'ed, one at a time or side by side. A stat of
``/.slowfs-counts`` tells them (its size is ``calls * 1000 + most``; see :func:`counts`), one of
``/.slowfs-reset`` zeroes them (and fails: no such file)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from typing import Any

import mfusepy as fuse  # type: ignore[import-untyped]

ATTRS = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size")
TIMES = ("st_atime", "st_mtime", "st_ctime")
RESET = "/.slowfs-reset"
COUNTS = "/.slowfs-counts"


def counts(mountpoint: str | os.PathLike[str]) -> tuple[int, int]:
    """(getattr calls answered, the most that waited at once) since the last reset."""
    size = os.stat(os.path.join(mountpoint, COUNTS.lstrip("/"))).st_size
    return size // 1000, size % 1000


def reset(mountpoint: str | os.PathLike[str]) -> None:
    assert not os.path.exists(os.path.join(mountpoint, RESET.lstrip("/")))


class SlowFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, source: str, delay: float):
        self.source = source
        self.delay = delay
        self.counting = threading.Lock()
        self.waiting = self.most = self.calls = 0

    def _real(self, path: str) -> str:
        return os.path.join(self.source, path.lstrip("/"))

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        if path == RESET:  # a look at this name starts the counts again
            with self.counting:
                self.most = self.calls = 0
            raise fuse.FuseOSError(errno.ENOENT)
        if path == COUNTS:
            with self.counting:
                told = self.calls * 1000 + min(self.most, 999)
            return {"st_mode": 0o100444, "st_nlink": 1, "st_size": told, "st_ino": 1 << 40}
        with self.counting:
            self.waiting += 1
            self.most = max(self.most, self.waiting)
        try:
            time.sleep(self.delay)
            try:
                st = os.lstat(self._real(path))
            except OSError as exc:
                raise fuse.FuseOSError(exc.errno or errno.EIO) from None
        finally:
            with self.counting:
                self.waiting -= 1
                self.calls += 1
        out = {k: getattr(st, k) for k in ATTRS}
        out.update({k: getattr(st, k + "_ns") for k in TIMES})
        return out

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
        return os.open(self._real(path), os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def listxattr(self, path: str) -> list[str]:
        return []

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        raise fuse.FuseOSError(errno.ENODATA)


def main() -> None:
    source, mountpoint, delay = sys.argv[1:4]
    ops = SlowFS(os.path.abspath(source), float(delay))
    fuse.FUSE(
        ops,
        mountpoint,
        foreground=True,
        ro=True,
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
