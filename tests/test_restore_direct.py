"""Larger files are restored around the page cache (O_DIRECT): byte for byte, holes kept,
tails of any length, and buffered where the filesystem refuses O_DIRECT."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive.filewrite import (
    DIRECT_BUFFER,
    DIRECT_FILESYSTEMS,
    DIRECT_MIN,
    O_DIRECT,
    filesystem_of,
    set_direct,
    write_direct,
)
from bcdr.archive.restore import Restorer, RestoreStats
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.conftest import tmpfs, write_tree

pytestmark = pytest.mark.skipif(
    not O_DIRECT or filesystem_of(tempfile.gettempdir()) not in DIRECT_FILESYSTEMS,
    reason="O_DIRECT is Linux's, and the tests' temporary folder must be on a local disk",
)

MiB = 2**20


def _files() -> dict[str, bytes]:
    rng = random.Random(21)
    return {
        # a tail that is no multiple of a page, and one past a whole buffer
        "ckpt/model.safetensors": rng.randbytes(DIRECT_MIN + DIRECT_BUFFER + 12_345),
        # random, then 8 MiB of zeros (holes), then random, then zeros to the end
        "ckpt/sparse.bin": rng.randbytes(5 * MiB)
        + bytes(8 * MiB)
        + rng.randbytes(3 * MiB + 7)
        + bytes(DIRECT_BUFFER + 100),
        "ckpt/exact.bin": rng.randbytes(DIRECT_MIN),  # the smallest written direct
        "ckpt/below.bin": rng.randbytes(DIRECT_MIN - 1),  # buffered
        "data/shard.bin": rng.randbytes(DIRECT_MIN + 1),
        "small/a.txt": b"a" * 1000,
    }


def _restore(
    tmp_path: Path, target: Path | None = None, **kwargs: Any
) -> tuple[RestoreStats, Path]:
    files = _files()
    src = tmp_path / "src"
    if not src.exists():
        write_tree(src, files)
        repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
        run_backup(repo, BackupRequest(paths=(str(src),)))
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    repo.load_index()
    snap = repo.resolve_snapshot("latest", None)
    target = target or tmp_path / "out"
    stats = Restorer(repo, os.fsencode(target), **kwargs).run(bytes.fromhex(snap.tree))
    return stats, target / str(src).lstrip("/")


def _restore_patched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: Any, name: str, fake: Any
) -> tuple[dict[str, bytes], RestoreStats, Path]:
    """Restore with ``module.name`` replaced by ``fake`` (a filesystem's behaviour), and
    the files that were backed up."""
    monkeypatch.setattr(module, name, fake)
    stats, out = _restore(tmp_path)
    monkeypatch.undo()
    return _files(), stats, out


def _resident(path: Path) -> float:
    """The fraction of ``path``'s pages in the page cache (mincore(2))."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    pages = -(-size // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        start = ctypes.c_char.from_buffer(mm)
        try:
            assert libc.mincore(ctypes.addressof(start), size, vec) == 0, ctypes.get_errno()
        finally:
            del start
    return sum(v & 1 for v in vec) / pages


def test_larger_files_are_written_around_the_page_cache_byte_for_byte(tmp_path: Path) -> None:
    files = _files()
    stats, out = _restore(tmp_path)
    assert stats.errors == [] and stats.files == len(files)
    direct = [k for k, v in files.items() if len(v) >= DIRECT_MIN]
    assert stats.bytes_direct == sum(len(files[k]) for k in direct)
    for name in direct:  # nothing of them went through the page cache
        assert _resident(out / name) == 0.0, name
    # read only now: the bytes on the disk, not the ones restore had in memory
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name
    # zeros stay holes: 8 MiB and the zeros at the end are not allocated
    sparse = out / "ckpt" / "sparse.bin"
    assert sparse.stat().st_size == len(files["ckpt/sparse.bin"])
    assert sparse.stat().st_blocks * 512 <= len(files["ckpt/sparse.bin"]) - 9 * MiB


def test_buffered_writes_every_file_through_the_page_cache(tmp_path: Path) -> None:
    files = _files()
    stats, out = _restore(tmp_path, direct=False)
    assert stats.errors == [] and stats.bytes_direct == 0
    assert _resident(out / "ckpt" / "model.safetensors") > 0.9
    assert all((out / name).read_bytes() == data for name, data in files.items())


def test_a_filesystem_refusing_o_direct_gets_the_files_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tmpfs before Linux 6.6 and some FUSE filesystems refuse O_DIRECT (EINVAL from fcntl)."""
    real = fcntl.fcntl

    def refusing(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, cmd, arg)

    files, stats, out = _restore_patched(tmp_path, monkeypatch, fcntl, "fcntl", refusing)
    assert stats.errors == [] and stats.bytes_direct == 0
    assert all((out / name).read_bytes() == data for name, data in files.items())


def test_a_write_refused_with_o_direct_is_written_buffered_and_so_are_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem may take O_DIRECT at open and refuse a write (an alignment larger than a
    page): that file goes on buffered, whole and right."""
    real = os.pwrite
    refused: list[int] = []
    after: list[int] = []

    def picky(fd: int, data: Any, pos: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            if pos >= DIRECT_BUFFER:  # the first buffer is taken, the second refused
                refused.append(fd)
                raise OSError(errno.EINVAL, "Invalid argument")
        elif fd in refused:
            after.append(pos)
        return real(fd, data, pos)

    files, stats, out = _restore_patched(tmp_path, monkeypatch, os, "pwrite", picky)
    assert stats.errors == [] and refused and after
    assert all((out / name).read_bytes() == data for name, data in files.items())


def test_two_writes_of_a_file_refused_together_both_go_on_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writer threads may each have a buffer of the same file in flight when O_DIRECT is
    refused: the second to fail finds O_DIRECT already turned off by the first, and its write
    must still be made (it once failed the file: a race seen in CI)."""
    real = os.pwrite
    cleared = threading.Event()
    lock = threading.Lock()
    refused: list[int] = []

    def picky(fd: int, data: Any, pos: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            with lock:
                refused.append(pos)
            if pos:  # issued with O_DIRECT; refused only after the other write turned it off
                assert cleared.wait(10)
            raise OSError(errno.EINVAL, "Invalid argument")
        cleared.set()
        return real(fd, data, pos)

    monkeypatch.setattr(os, "pwrite", picky)
    buffers = mmap.mmap(-1, 2 * DIRECT_BUFFER)  # page-aligned
    data = random.Random(5).randbytes(2 * DIRECT_BUFFER)
    buffers[:] = data
    view = memoryview(buffers)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert set_direct(fd)
        with ThreadPoolExecutor(2) as pool:
            late = pool.submit(write_direct, fd, view[DIRECT_BUFFER:], DIRECT_BUFFER)
            deadline = time.monotonic() + 10
            while not refused:  # the late write is in flight with O_DIRECT
                assert time.monotonic() < deadline, "the late write never reached pwrite"
                time.sleep(0.001)
            first = pool.submit(write_direct, fd, view[:DIRECT_BUFFER], 0)
            first.result(10), late.result(10)
    finally:
        os.close(fd)
    monkeypatch.undo()
    assert sorted(refused) == [0, DIRECT_BUFFER]
    assert (tmp_path / "f").read_bytes() == data


def test_a_full_disk_in_a_direct_write_fails_that_file_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def full(fd: int, data: Any, pos: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT and pos >= DIRECT_BUFFER:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, pos)

    files, stats, out = _restore_patched(tmp_path, monkeypatch, os, "pwrite", full)
    failed = {e["path"].rsplit("/", 1)[-1]: e["error"] for e in stats.errors}
    # every file written direct has bytes past its first buffer, and fails; nothing else
    assert failed == {
        "model.safetensors": "No space left on device",
        "sparse.bin": "No space left on device",
        "exact.bin": "No space left on device",
        "shard.bin": "No space left on device",
    }
    # no temporary file is left beside them
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["below.bin"]
    assert list((out / "data").iterdir()) == []
    assert (out / "ckpt" / "below.bin").read_bytes() == files["ckpt/below.bin"]


MOUNTINFO = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
30 25 0:27 / /dev/shm rw,relatime - xfs /dev/sdb rw
41 27 0:40 / /mnt/team\040data rw,relatime shared:7 - nfs4 10.0.0.4:/export rw,vers=4.1
42 27 0:41 / /mnt/blob rw,nosuid - fuse.blobfuse2 blobfuse2 rw
"""


@pytest.mark.parametrize(
    "path, fstype",
    [
        ("/mnt/team data/ckpt", "nfs4"),  # a mount point with a space (escaped as \040)
        ("/mnt/team data", "nfs4"),
        ("/mnt/team", "ext4"),  # a prefix of a mount point, not below it
        ("/mnt/blob/restore", "fuse.blobfuse2"),
        ("/dev/shm/x", "xfs"),  # mounted over the tmpfs: the last listed wins
        ("/srv/restore/not-yet-made", "ext4"),
    ],
)
def test_the_filesystem_of_a_target_is_that_of_its_innermost_mount(path: str, fstype: str) -> None:
    assert filesystem_of(path, MOUNTINFO) == fstype


def test_files_not_on_a_local_disk_are_written_buffered(tmp_path: Path) -> None:
    """tmpfs takes O_DIRECT (since Linux 6.6) but has no disk to write to; network and FUSE
    filesystems make each direct write a round trip. Only local disks get O_DIRECT, decided
    for the folder each file is in: a folder under the target may be another mount."""
    files = _files()
    with tmpfs(tmp_path / "shm", "100m") as shm:  # the whole target
        stats, out = _restore(tmp_path, shm / "out")
        assert stats.errors == [] and stats.bytes_direct == 0
        assert all((out / name).read_bytes() == data for name, data in files.items())
    # the target on the local disk, its ckpt/ folder a tmpfs mounted there beforehand
    target = tmp_path / "mixed"
    ckpt = target / str(tmp_path / "src" / "ckpt").lstrip("/")
    ckpt.mkdir(parents=True)
    with tmpfs(ckpt, "100m"):
        stats, out = _restore(tmp_path, target)
        assert stats.errors == [] and stats.bytes_direct == len(files["data/shard.bin"])
        assert all((out / name).read_bytes() == data for name, data in files.items())


def test_direct_writes_leave_the_workers_and_their_buffers_are_bounded_and_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full buffers are written by the writer threads (the workers go on decoding), several
    files at once never hold more buffers than the restorer allows, every buffer comes back,
    and the files are whole."""
    import threading

    from bcdr.archive import filerestore, filewrite

    writers: set[str] = set()
    made: list[int] = []
    in_use, peak = [0], [0]
    lock = threading.Lock()
    real_write, real_take, real_give = (
        filewrite.write_direct,
        filerestore.FileRestorer._take_buffer,
        filerestore.FileRestorer._give_buffer,
    )

    def write_direct(fd: int, data: memoryview, pos: int) -> None:
        writers.add(threading.current_thread().name)
        real_write(fd, data, pos)

    def take(self: filerestore.FileRestorer) -> memoryview:
        buffer = real_take(self)
        with lock:
            made.append(id(buffer))
            in_use[0] += 1
            peak[0] = max(peak[0], in_use[0])
        return buffer

    def give(self: filerestore.FileRestorer, buffer: memoryview) -> None:
        with lock:
            in_use[0] -= 1
        real_give(self, buffer)

    monkeypatch.setattr(filewrite, "write_direct", write_direct)
    monkeypatch.setattr(filerestore.FileRestorer, "_take_buffer", take)
    monkeypatch.setattr(filerestore.FileRestorer, "_give_buffer", give)
    files = _files()
    stats, out = _restore(tmp_path)
    assert stats.errors == [] and stats.files == len(files)
    assert writers and all(name.startswith("bcdr-write") for name in writers), writers
    assert made and in_use[0] == 0  # every buffer taken was given back
    workers = max(os.cpu_count() or 1, 2)  # the restorer's, for a local repository
    assert peak[0] <= workers + 2 * filewrite.DIRECT_WRITERS, peak
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name


def test_a_file_whose_size_cannot_be_set_first_is_still_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Giving a file its size before the direct writes is an optimisation: a filesystem (or a
    size from a crafted tree) that refuses it leaves the writes to extend the file."""
    real = os.ftruncate
    refused: list[int] = []

    def ftruncate(fd: int, length: int) -> None:
        if os.fstat(fd).st_size == 0 and length > 0:  # before any byte: the size set first
            refused.append(length)
            raise OSError(errno.EFBIG, "File too large")
        real(fd, length)

    files, stats, out = _restore_patched(tmp_path, monkeypatch, os, "ftruncate", ftruncate)
    assert refused and stats.errors == [] and stats.files == len(files)
    for name, data in files.items():
        assert (out / name).read_bytes() == data, name
