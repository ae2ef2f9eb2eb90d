"""Writing restored bytes to a file: whole writes at an offset, runs of zeros left as holes,
and ``O_DIRECT`` writes of larger files through a reused page-aligned buffer (the reasons and
costs of ``O_DIRECT`` are in docs/decisions.md). Used by ``filerestore.py``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from typing import Any

from bcdr.errors import env_seconds

HOLE_BLOCK = 64 * 1024
#: Files of at least this many bytes are written with O_DIRECT (unless ``direct=False``) ...
DIRECT_MIN = 8 * 1024 * 1024
#: ... through a page-aligned buffer of this size per file being written (reused) ...
DIRECT_BUFFER = 2 * 1024 * 1024
#: ... at offsets and lengths that are multiples of this (a page, and every disk's sector) ...
DIRECT_ALIGN = 4096
#: ... by this many writer threads, so that the workers decode while the disk writes.
DIRECT_WRITERS = 2
O_DIRECT = getattr(os, "O_DIRECT", 0)
#: Filesystems on a local block device: a target on one of them gets O_DIRECT writes.
DIRECT_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "bcachefs"})
#: While a restore writes onto a local disk, its filesystem's dirty pages are handed to the
#: disk every this many seconds (``BCDR_FLUSH_EVERY``; 0: only once, at the end).
FLUSH_EVERY_S = 0.5
FLUSH_ENV = "BCDR_FLUSH_EVERY"


def is_zero(data: bytes | memoryview) -> bool:
    return data[:1] == b"\0" and data[-1:] == b"\0" and bytes(data).count(0) == len(data)


def pwrite_all(fd: int, data: bytes | memoryview, pos: int) -> None:
    """Write all of ``data`` at ``pos``: ``pwrite`` may write less than it was given (a
    signal, a file size limit, a full disk), and then the rest is written, or the error is
    raised."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        if n <= 0:  # the kernel gives an error rather than 0 for a regular file
            raise OSError(errno.EIO, "the disk accepted no bytes")
        view, pos = view[n:], pos + n


def write_sparse(fd: int, data: bytes | memoryview, pos: int) -> bool:
    """Write ``data`` at ``pos``, leaving whole 64 KiB blocks of zeros as holes.

    Returns whether anything was written."""
    if len(data) <= HOLE_BLOCK:
        if is_zero(data):
            return False
        pwrite_all(fd, data, pos)
        return True
    view = memoryview(data)
    wrote = False
    start = None  # start of the pending non-zero run
    for off in range(0, len(data), HOLE_BLOCK):
        if is_zero(view[off : off + HOLE_BLOCK]):
            if start is not None:
                pwrite_all(fd, view[start:off], pos + start)
                wrote, start = True, None
        elif start is None:
            start = off
    if start is not None:
        pwrite_all(fd, view[start:], pos + start)
        wrote = True
    return wrote


def filesystem_of(path: str | bytes, mountinfo: str | None = None) -> str | None:
    """The type of the filesystem ``path`` is (or would be) on: that of the mount with the
    longest mount point above its real path, the last listed of equals (mounted over the
    others), from ``mountinfo`` (/proc/self/mountinfo's text). None if unknown."""
    real = os.path.realpath(os.fsdecode(path))
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
                mountinfo = f.read()
        except OSError:
            return None
    longest, found = -1, None
    for line in mountinfo.splitlines():
        fields, sep, rest = line.partition(" - ")
        parts = fields.split(" ")
        if not sep or len(parts) < 5 or not rest:
            continue
        # spaces, tabs, newlines and backslashes in a mount point are octal escapes
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= longest:
            longest, found = len(point), rest.split(" ", 1)[0]
    return found


def direct_suits(folder: str | bytes, fstype: str | None = None) -> bool:
    """Whether files restored into ``folder`` are written with ``O_DIRECT``: it is on a
    local disk. ``fstype``: its filesystem's type when the caller looked it up already."""
    return bool(O_DIRECT) and (fstype or filesystem_of(folder)) in DIRECT_FILESYSTEMS


def write_direct(fd: int, data: memoryview, pos: int) -> None:
    """Write aligned ``data`` at aligned ``pos`` (holes stay holes). A filesystem that took
    ``O_DIRECT`` at ``open`` but refuses a write with it (EINVAL: an alignment it needs that
    is larger than DIRECT_ALIGN) gets this write, and the file's next ones, buffered.

    Another writer thread of the same file may have been refused too and turned ``O_DIRECT``
    off after this write was issued: the write is made again all the same (once; an EINVAL
    from the buffered write is raised)."""
    try:
        write_sparse(fd, data, pos)
    except OSError as exc:
        if exc.errno != errno.EINVAL or not O_DIRECT:
            raise
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if flags & O_DIRECT:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~O_DIRECT)
        write_sparse(fd, data, pos)


def set_direct(fd: int) -> bool:
    """Turn ``O_DIRECT`` on for ``fd``; whether the filesystem took it (tmpfs before Linux
    6.6, some FUSE and network filesystems refuse it: their files are written buffered).
    Set after ``open``, not at it: an ``open`` refused for ``O_DIRECT`` may have created the
    file all the same."""
    if not O_DIRECT:
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | O_DIRECT)
    except OSError:
        return False
    return True


class DirectOut:
    """(in its file's turn) A larger file's bytes, gathered in file order into page-aligned
    buffers of DIRECT_BUFFER bytes, each written with ``O_DIRECT`` when full; at the end the
    rest is padded to DIRECT_ALIGN and written (the file is cut to its size when it is
    finalised, as one that ends in a hole is: ``_Job.end`` stays 0). The buffers' offsets in
    the file are aligned, so runs of 64 KiB of zeros still stay holes. The file's digest is
    computed over each buffer as it is handed out, gathering included.

    A full buffer is written by ``submit`` (a writer thread): the worker goes on decoding
    while the disk takes it, and the file may have several buffers in flight at once (the
    file was given its size first, so these writes do not extend it and ext4 lets them run
    side by side). ``take`` gives a buffer, waiting while too many are in flight; ``give``
    takes one back when its write is done. The first failed write is raised at the next
    ``add`` or at ``end``, which waits for every write of the file."""

    def __init__(
        self,
        take: Callable[[], memoryview],
        give: Callable[[memoryview], None],
        submit: Callable[..., Future[None]],
        hasher: Any,
    ) -> None:
        self.take = take
        self.give = give
        self.submit = submit
        self.buffer: memoryview | None = None
        self.hasher = hasher
        self.fill = 0  # bytes gathered in the buffer
        self.pos = 0  # where in the file the buffer's first byte goes
        self.pending: list[Future[None]] = []

    def _write(self, fd: int, buffer: memoryview, length: int) -> None:
        """Hand the buffer's ``length`` bytes (``fill``, padded at the end) to a writer."""
        self.hasher.update(buffer[: self.fill])
        done = self.submit(write_direct, fd, buffer[:length], self.pos)
        done.add_done_callback(lambda _: self.give(buffer))
        self.pending.append(done)
        self.buffer = None
        self.pos += self.fill
        self.fill = 0

    def _check(self) -> None:
        """Raise the first failed write; forget the ones done."""
        still = []
        for done in self.pending:
            if not done.done():
                still.append(done)
            elif done.exception() is not None:
                raise done.exception()  # type: ignore[misc]
        self.pending = still

    def add(self, fd: int, data: bytes | memoryview) -> None:
        import numpy as np  # loaded with the repository's index already

        self._check()
        src = np.frombuffer(data, np.uint8)
        while len(src):
            buffer = self.buffer
            if buffer is None:
                buffer = self.buffer = self.take()
            n = min(len(src), len(buffer) - self.fill)
            # copied by numpy, which lets go of the GIL meanwhile (a memoryview holds it)
            np.frombuffer(buffer, np.uint8)[self.fill : self.fill + n] = src[:n]
            self.fill += n
            src = src[n:]
            if self.fill == len(buffer):
                self._write(fd, buffer, self.fill)

    def end(self, fd: int) -> None:
        """Write the rest, then wait for every write of the file; raise the first failure."""
        try:
            if self.fill and self.buffer is not None:
                padded = -(-self.fill // DIRECT_ALIGN) * DIRECT_ALIGN
                self.buffer[self.fill : padded] = bytes(padded - self.fill)
                self._write(fd, self.buffer, padded)
        finally:
            self.close()
        self._check()

    def close(self) -> None:
        """Wait for the writes in flight, and give back a buffer still being filled (a file
        that failed)."""
        wait(self.pending)
        if self.buffer is not None:
            self.give(self.buffer)
            self.buffer = None


def flush_every() -> float:
    """Seconds between a restore's flushes while it writes: ``BCDR_FLUSH_EVERY``, default
    FLUSH_EVERY_S; 0 flushes only at the end."""
    return env_seconds(FLUSH_ENV, FLUSH_EVERY_S, 3600)


_libc_syncfs: Callable[[int], int] | None = None


def syncfs(fd: int) -> None:
    """syncfs(2): write out the dirty data and metadata of the filesystem ``fd`` is on and
    wait for the disk. Raises OSError: EIO when a write to that filesystem failed since
    ``fd`` was opened (the kernel tells each failure once per open file)."""
    global _libc_syncfs
    if _libc_syncfs is None:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        _libc_syncfs = fn
    if _libc_syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Flusher:
    """Makes what a restore wrote durable. :meth:`finish` writes out everything the target's
    filesystem holds in memory and waits for the disk (``syncfs``), and raises a write the
    disk failed: without it, a small file is in the page cache when the restore says it is
    restored, and a write that fails later is seen by nobody.

    ``every`` (seconds, 0: never): a thread also writes out what is dirty meanwhile, so the
    disk writes while the workers decode instead of after them, and the final wait is short
    (on a local disk; docs/decisions.md). A failure it meets is kept for :meth:`finish`."""

    def __init__(self, folder: bytes, every: float):
        try:
            self._fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:  # not readable (the restore command refuses such a target up front;
            self._fd = -1  # this guards one changed since): sync(2) at the end
        self._error: OSError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if every > 0 and self._fd >= 0:
            self._thread = threading.Thread(
                target=self._run, args=(every,), name="bcdr-flush", daemon=True
            )
            self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                syncfs(self._fd)
            except OSError as exc:
                self._error = self._error or exc
                return  # told at the end

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def flush(self) -> None:
        """Write out everything now and wait (before files are read back from the disk); a
        write the disk failed is kept for :meth:`finish`."""
        try:
            if self._fd >= 0:
                syncfs(self._fd)
            else:
                os.sync()
        except OSError as exc:
            self._error = self._error or exc

    def finish(self) -> float:
        """Stop the thread, write out everything and wait; the seconds that took. Raises
        OSError for the first write the disk failed meanwhile."""
        self._stop_thread()
        started = time.monotonic()
        try:
            self.flush()  # without a descriptor: sync(2), every filesystem, no failure told
        finally:
            self.close()
        if self._error is not None:
            raise self._error
        return time.monotonic() - started

    def close(self) -> None:
        """Stop without the final flush (a restore that failed on its own)."""
        self._stop_thread()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
