"""Resolving paths under a restore target so that nothing outside it is ever reached.

A restore opens each folder it writes into with ``openat2(2)`` relative to the target and
``RESOLVE_BENEATH``: the kernel refuses, at the moment of the call, any resolution that would
leave the target, through ``..``, an absolute link, or a link swapped in by a process racing
the restore. Relative links that stay inside the target are followed (a kept
``lib -> usr/lib``); absolute links and ``/proc`` magic links never are. A restore into ``/``
itself resolves paths as usual (nothing is outside it). Files are then created, renamed,
linked and removed by their single name relative to that folder's descriptor, so no path is
ever resolved twice.

Where the kernel has no ``openat2`` (Linux before 5.6, or a seccomp filter that refuses it),
folders are opened by path: the restore's own checks
(bcdr/archive/restore.py) still refuse links out of the target as it finds them, but a process
racing the restore could win. ``BENEATH_SUPPORTED`` says which holds.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from bcdr.errors import BcdrError

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on x86_64 and aarch64
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
    how = _OpenHow(flags, 0, resolve)
    fd = int(_libc.syscall(_SYS_OPENAT2, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _probe() -> bool:
    root = os.open(b"/", _DIR_FLAGS)
    try:
        os.close(_openat2(root, b".", _DIR_FLAGS, RESOLVE_BENEATH))
        return True
    except OSError:
        return False
    finally:
        os.close(root)


BENEATH_SUPPORTED = _probe()


def split_path(path: bytes) -> tuple[bytes, bytes]:
    """(folder, last name) of a normalised path, as ``os.path.dirname`` and ``basename``
    give them, in one step (a restore splits every file's path)."""
    cut = path.rfind(b"/")
    if cut < 0:
        return b"", path
    return path[:cut] or b"/", path[cut + 1 :]


@contextmanager
def parent_of(beneath: Beneath, path: bytes) -> Iterator[tuple[int, bytes]]:
    """(a descriptor of ``path``'s folder opened beneath the root, ``path``'s last name)."""
    folder, name = split_path(path)
    fd = beneath.folder(folder)
    try:
        yield fd, name
    finally:
        os.close(fd)


class Beneath:
    """Opens folders under ``root`` (an absolute path that exists) for one restore; usable
    from threads and from forked worker processes (each opens ``root`` once for itself)."""

    def __init__(self, root: bytes):
        self.root = root.rstrip(b"/") or b"/"
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _root_fd(self) -> int:
        pid = os.getpid()
        with self._lock:
            fd = self._fds.get(pid)
            if fd is None:
                fd = self._fds[pid] = os.open(self.root, _DIR_FLAGS)
            return fd

    def folder(self, path: bytes, *, readable: bool = False) -> int:
        """A descriptor of the folder ``path``, at or under the root (``O_PATH``, or one
        that can list it with ``readable``); the caller closes it. Raises BcdrError when
        resolving it would leave the root, OSError as the kernel says otherwise (ENOENT,
        ENOTDIR...)."""
        flags = (os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if readable else _DIR_FLAGS
        rel = os.path.relpath(path, self.root)
        if rel == b".." or rel.startswith(b"../"):
            raise _outside(path)
        if not BENEATH_SUPPORTED or self.root == b"/":  # see the module's docstring
            return os.open(path, flags)
        resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
        try:
            return _openat2(self._root_fd(), rel, flags, resolve)
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # the kernel refused a way out of the root
                raise _outside(path) from None
            raise

    def close(self) -> None:
        with self._lock:
            fd = self._fds.pop(os.getpid(), None)
        if fd is not None:
            os.close(fd)


def _outside(path: bytes) -> BcdrError:
    return BcdrError(
        f"{os.fsdecode(path)} leads out of the restore target (through a link, or an absolute "
        "one); not followed"
    )


class FolderCache:
    """Descriptors of folders under the root, shared by the threads of one process: a folder
    is opened once while files in it are being restored, and the last few idle ones stay
    open (files of one folder come together), so a file costs no ``openat2`` of its own."""

    IDLE = 32

    def __init__(self, beneath: Beneath):
        self._beneath = beneath
        self._lock = threading.Lock()
        self._open: dict[bytes, list[int]] = {}  # folder -> [descriptor, users]
        self._idle: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def acquire(self, path: bytes) -> int:
        """A descriptor of the folder ``path`` (see :meth:`Beneath.folder`); give it back
        with :meth:`release`."""
        with self._lock:
            entry = self._open.get(path)
            if entry is not None:
                entry[1] += 1
                self._idle.pop(path, None)
                return entry[0]
        fd = self._beneath.folder(path)
        with self._lock:
            entry = self._open.get(path)
            if entry is not None:  # another thread opened it meanwhile
                os.close(fd)
                entry[1] += 1
                self._idle.pop(path, None)
                return entry[0]
            self._open[path] = [fd, 1]
            return fd

    def release(self, path: bytes) -> None:
        with self._lock:
            entry = self._open[path]
            entry[1] -= 1
            if entry[1]:
                return
            self._idle[path] = None
            while len(self._idle) > self.IDLE:
                old, _ = self._idle.popitem(last=False)
                os.close(self._open.pop(old)[0])

    def close(self) -> None:
        with self._lock:
            for fd, _ in self._open.values():
                os.close(fd)
            self._open.clear()
            self._idle.clear()
