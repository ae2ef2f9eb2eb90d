"""Local filesystem storage: one file per object under a root folder.

Put-if-absent is atomic: the bytes are written and fsynced to a temporary file in
``<root>/tmp/``, then ``link(2)``-ed to the final name, which fails if the name exists; the
temporary file is removed either way. A crash leaves at most a file in ``tmp/`` that no listing
of a repository prefix shows. ``stage()`` opens such a temporary file before the name is
known, and writes a pack's parts into it as the pack is filled (:class:`TempFile`).
"""

from __future__ import annotations

import builtins
import errno
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bcdr.errors import (
    ObjectNotFound,
    StorageError,
    StorageFull,
    StoragePermission,
)
from bcdr.storage.base import NativeCapabilities, ObjectInfo, check_key

TMP_DIR = "tmp"
MAX_OPEN_READERS = 32  # per thread
LOCAL_CONCURRENCY = 2  # uploads in flight: one disk gains little from more
COALESCE = 1 << 20  # parts of a staged object smaller than this are gathered into one write


def translate_os_error(exc: OSError, what: str) -> StorageError:
    """Map an OSError raised while working on ``what`` to a storage error with a hint."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFull(
            f"no space left while writing {what}",
            hint="free space or move the repository; nothing half-written was committed",
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoragePermission(
            f"permission denied: {what}",
            hint="check the owner and mode of the repository folder",
        )
    if exc.errno == errno.ENOENT:
        return ObjectNotFound(f"not found: {what}")
    if exc.errno == errno.ENOTDIR:
        return StorageError(
            f"a part of the path is a file, not a folder ({what})",
            hint="a repository on a local disk is a folder: check the --repo path",
        )
    return StorageError(f"{exc.strerror or exc} ({what})")


class LocalStorage(NativeCapabilities):
    """Storage in a local folder. ``root`` must exist for anything but ``put``."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True):
        self.root = Path(root)
        self._fsync = fsync
        self._made_dirs: set[Path] = set()
        # Objects never change once written, so read descriptors can be kept open and reused.
        self._local = threading.local()
        self._caches: list[OrderedDict[str, int]] = []
        self._fd_lock = threading.Lock()

    @property
    def url(self) -> str:
        return str(self.root)

    def after_fork(self) -> None:
        """(Forkable) Usable from a forked child (bcdr/forked.py): files are opened per
        process, and descriptors inherited at the fork are only read with pread."""
        self._fd_lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _ensure_dir(self, path: Path) -> None:
        if path not in self._made_dirs:
            path.mkdir(parents=True, exist_ok=True)
            self._made_dirs.add(path)

    def put(self, key: str, data: bytes) -> bool:
        return self.put_parts(key, (data,))

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        staged = self.stage(check_key(key).rsplit("/", 1)[-1])
        for part in parts:
            staged.write(part)
        return staged.commit(key)

    def stage(self, hint: str = "staged") -> TempFile:
        return TempFile(self, hint)

    def _read_fd(self, key: str) -> int:
        """A cached read descriptor. Each thread has its own cache, so a descriptor is only
        ever closed by the thread that uses it."""
        cache: OrderedDict[str, int] | None = getattr(self._local, "fds", None)
        if cache is None:
            cache = self._local.fds = OrderedDict()
            with self._fd_lock:
                self._caches.append(cache)
        fd = cache.get(key)
        if fd is not None:
            cache.move_to_end(key)
            return fd
        fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        cache[key] = fd
        if len(cache) > MAX_OPEN_READERS:
            _, old = cache.popitem(last=False)
            os.close(old)
        return fd

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        try:
            if length is None:
                with open(self._path(key), "rb", buffering=0) as f:
                    f.seek(offset)
                    return f.read()
            return _pread_exact(self._read_fd(key), length, offset)
        except FileNotFoundError:
            raise ObjectNotFound(f"not found: {key}", where=self.url) from None
        except OSError as exc:
            raise translate_os_error(exc, f"{self.url}/{key}") from None

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"not found: {key}", where=self.url) from None
        except OSError as exc:
            raise translate_os_error(exc, f"{self.url}/{key}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk the folder that contains the prefix, then filter by the full key.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        if not start.is_dir():
            return

        def fail(exc: OSError) -> None:
            raise translate_os_error(exc, f"{self.url}/{prefix}")

        for dirpath, dirnames, filenames in os.walk(start, onerror=fail):
            rel_dir = os.path.relpath(dirpath, self.root)
            if rel_dir == TMP_DIR:
                dirnames[:] = []
                continue
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if key.startswith(prefix):
                    try:
                        st = os.stat(os.path.join(dirpath, name))
                    except FileNotFoundError:
                        continue
                    when = datetime.fromtimestamp(st.st_mtime, UTC)
                    yield ObjectInfo(key, st.st_size, modified=when)

    def _forget_fd(self, key: str) -> None:
        cache: OrderedDict[str, int] | None = getattr(self._local, "fds", None)
        fd = cache.pop(key, None) if cache is not None else None
        if fd is not None:
            os.close(fd)

    def delete(self, key: str) -> bool:
        self._forget_fd(key)
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise translate_os_error(exc, f"{self.url}/{key}") from None

    def list_offline(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(())

    @property
    def concurrency(self) -> int:
        return LOCAL_CONCURRENCY

    def leftover_temp_files(self, idle: float = 0.0) -> builtins.list[str]:
        """Temporary files (never part of the repository) nothing has written to for
        ``idle`` seconds: a crashed writer's, or with ``idle`` 0 a live one's too."""
        return sorted(entry.name for entry in self._idle_temp_files(idle))

    def remove_temp_files(self, idle: float, *, dry_run: bool = False) -> builtins.list[str]:
        """Remove the temporary files nothing has written to for ``idle`` seconds: a crashed
        writer's (a backup writes the pack it is filling into one as it goes, so a live
        writer's file is seconds old). The names removed (or that would be)."""
        gone = []
        for entry in self._idle_temp_files(idle):
            if not dry_run:
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:  # its writer committed or discarded it meanwhile
                    continue
                except OSError as exc:
                    raise translate_os_error(exc, f"{self.url}/{TMP_DIR}") from None
            gone.append(entry.name)
        return sorted(gone)

    def _idle_temp_files(self, idle: float) -> Iterator[os.DirEntry[str]]:
        """The files in tmp/ last written to at least ``idle`` seconds ago."""
        tmp = self.root / TMP_DIR
        if not tmp.is_dir():
            return
        cutoff = time.time() - idle
        try:
            entries = list(os.scandir(tmp))
        except OSError as exc:
            raise translate_os_error(exc, f"{self.url}/{TMP_DIR}") from None
        for entry in entries:
            try:
                if idle and entry.stat(follow_symlinks=False).st_mtime >= cutoff:
                    continue
            except FileNotFoundError:  # its writer committed or discarded it meanwhile
                continue
            yield entry

    def close(self) -> None:
        """Close cached descriptors (call when no other thread is reading)."""
        with self._fd_lock:
            caches, self._caches = self._caches, []
        for cache in caches:
            while cache:
                os.close(cache.popitem()[1])
        self._local = threading.local()


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    chunks = [data]
    got = len(data)
    while got < length:
        part = os.pread(fd, length - got, offset + got)
        if not part:
            break
        chunks.append(part)
        got += len(part)
    return b"".join(chunks)


class TempFile:
    """A :class:`~bcdr.storage.base.Staged` object of the local disk: the parts go into a
    temporary file in ``tmp/`` as they come (small ones gathered into writes of COALESCE
    bytes), fsynced and linked to the key on commit. Discarded (closed and removed) by
    ``commit``, ``discard`` or any error; a crash leaves only the temporary file."""

    def __init__(self, storage: LocalStorage, hint: str):
        self._storage = storage
        self._tmp = storage.root / TMP_DIR / f"{hint}.{secrets.token_hex(6)}.tmp"
        self._fd = -1
        self._small = bytearray()
        self._ended = False

    def _open(self) -> None:
        if self._ended:  # a bug: the temporary file is not made anew
            raise ValueError("write or commit of a staged object already committed or discarded")
        self._storage._ensure_dir(self._tmp.parent)
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _write_all(self, data: bytes | bytearray) -> None:
        if self._fd < 0:
            self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def _write_small(self) -> None:
        small, self._small = self._small, bytearray()
        self._write_all(small)

    def write(self, data: bytes) -> None:
        try:
            if len(data) < COALESCE:
                self._small += data
                if len(self._small) >= COALESCE:
                    self._write_small()
                return
            if self._small:
                self._write_small()
            self._write_all(data)
        except OSError as exc:
            self.discard()
            raise translate_os_error(exc, f"{self._storage.url}/{TMP_DIR}") from None

    def commit(self, key: str) -> bool:
        try:
            final = self._storage._path(key)
            self._write_small()  # opens the file of an empty object too
            if self._storage._fsync:
                os.fsync(self._fd)
            fd, self._fd = self._fd, -1  # forgotten first: a Ctrl-C right after the close
            os.close(fd)  # must not make discard close it (or a reused number) again
            self._storage._ensure_dir(final.parent)
            try:
                os.link(self._tmp, final)
            except FileExistsError:
                return False
            if self._storage._fsync:
                _fsync_dir(final.parent)
            return True
        except OSError as exc:
            raise translate_os_error(exc, f"{self._storage.url}/{key}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        self._ended = True
        self._small = bytearray()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        try:
            os.unlink(self._tmp)
        except (FileNotFoundError, NotADirectoryError):
            pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
