"""Restore's small files in forked worker processes: the same files as with threads, the
transfers counted, a dead worker reported, and storages that cannot cross a fork kept in
threads."""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

import pytest

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive import filerestore
from bcdr.archive.filerestore import FileRestorer
from bcdr.archive.restore import Restorer
from bcdr.forked import processes_enabled
from bcdr.repository.hashing import fingerprint
from bcdr.repository.repo import Repository
from bcdr.storage.base import C, Forkable
from bcdr.storage.local import LocalStorage
from bcdr.storage.wrap import MeteredStorage, RetryingStorage, StorageWrapper
from tests.conftest import Cli, snapshot_tree, write_tree

forking = pytest.mark.skipif(not processes_enabled(2), reason="worker processes fork on Linux")


def _files() -> dict[str, bytes]:
    rng = __import__("random").Random(21)
    small = {
        f"d{d}/f{i:03d}": rng.randbytes(rng.randint(0, 3000)) for d in range(4) for i in range(90)
    }
    return small | {"big.bin": rng.randbytes(3 * 2**20)}  # a larger file: threads restore it


@forking
def test_worker_processes_and_threads_restore_the_same_files_and_count_transfers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tree(tmp_path / "src", _files())
    Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    repo = Repository.open(MeteredStorage(LocalStorage(tmp_path / "repo")))
    tree = bytes.fromhex(run_backup(repo, BackupRequest(paths=(str(src),))).snapshot.tree)
    created_here: list[bytes] = []
    real_create = filerestore._create

    def create_noting(path: bytes, dir_fd: int | None = None) -> int:
        created_here.append(os.path.basename(path))  # a worker's calls are not seen here
        return real_create(path, dir_fd)

    monkeypatch.setattr(filerestore, "_create", create_noting)
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("BCDR_WORKER_PROCESSES", mode)
        opened = Repository.open(MeteredStorage(LocalStorage(tmp_path / "repo")))
        opened.load_index()
        out = tmp_path / f"out-{mode}"
        stats = Restorer(opened, os.fsencode(out)).run(tree)
        assert stats.errors == [] and stats.files == len(_files())
        assert snapshot_tree(out / str(src).lstrip("/")) == snapshot_tree(src)
        assert isinstance(opened.storage, MeteredStorage)
        down = opened.storage.downloaded
        results[mode] = (down.bytes, down.requests)
        # the big file is created under a temporary name by this process; small ones are
        # unnamed O_TMPFILE files linked to their names (no temporary name at all)
        assert len(created_here) == 1
        created_here.clear()
    # the workers' reads are counted as this process's own: the same as with threads
    assert results["1"] == results["0"] and results["1"][0] > 0


@forking
def test_a_killed_restore_worker_fails_the_restore_clearly_and_a_rerun_restores_all(
    tmp_path: Path,
    repo: str,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = _files() | {"d2/poison": b"p"}
    src = write_tree(tmp_path / "src", files)
    assert cli("backup", "--repo", repo, src).code == 0
    parent = os.getpid()
    real_fingerprint = fingerprint

    def fingerprint_or_die(data: bytes) -> str:
        if data == b"p" and os.getpid() != parent:  # the poison file, in a worker
            os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer picks a worker
        return real_fingerprint(data)

    monkeypatch.setattr(filerestore, "fingerprint", fingerprint_or_die)
    out = tmp_path / "out"
    r = cli("restore", "--repo", repo, "latest", "--target", out)
    assert r.code == 1, r.err
    assert "worker process of this restore ended unexpectedly" in r.err
    assert "--overwrite" in r.err and "Traceback" not in r.err

    monkeypatch.setattr(filerestore, "fingerprint", real_fingerprint)
    r = cli("restore", "--repo", repo, "latest", "--target", out, "--overwrite")
    assert r.code == 0, r.err
    assert snapshot_tree(out / str(src).lstrip("/")) == snapshot_tree(src)


class NotForkable(StorageWrapper):
    """A storage whose connections must not cross a fork (as Azure's): not ``Forkable``."""

    def capability(self, kind: type[C]) -> C | None:
        return None if kind is Forkable else super().capability(kind)


@forking
def test_a_storage_that_cannot_cross_a_fork_is_restored_by_threads(tmp_path: Path) -> None:
    Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    local = Repository.open(LocalStorage(tmp_path / "repo"))
    assert FileRestorer(local).start() is True
    remote = Repository.open(NotForkable(LocalStorage(tmp_path / "repo")))
    assert FileRestorer(remote).start() is False


def test_a_forked_child_reads_though_a_storage_lock_was_held_at_the_fork(tmp_path: Path) -> None:
    """A lock another thread held at the fork stays held in the child, for ever: after_fork
    makes the storages' locks anew (and the child counts only its own transfers)."""
    storage = MeteredStorage(RetryingStorage(LocalStorage(tmp_path)))
    storage.put("k", b"data")
    storage.get("k")
    storage._lock.acquire()  # as if a restore thread were inside get() at the fork
    pid = os.fork()
    if pid == 0:  # the child
        try:
            storage.after_fork()
            ok = storage.get("k") == b"data"
            _, down = storage.take_transfers()
            os._exit(0 if ok and (down.bytes, down.requests) == (4, 1) else 1)
        except BaseException:  # noqa: BLE001 (a forked child must never return into pytest)
            os._exit(2)
    storage._lock.release()
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    if done == (0, 0):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on a lock held at the fork")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert storage.downloaded.bytes == 4  # the parent's own read only


@forking
def test_when_no_process_can_be_made_backup_and_restore_use_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit on processes (EAGAIN from fork) is not an error: the work stays in threads."""

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    files = _files()
    src = write_tree(tmp_path / "src", files)
    Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    monkeypatch.setattr(os, "fork", no_fork)
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    tree = bytes.fromhex(run_backup(repo, BackupRequest(paths=(str(src),))).snapshot.tree)
    opened = Repository.open(LocalStorage(tmp_path / "repo"))
    opened.load_index()
    assert FileRestorer(opened).start() is False
    stats = Restorer(opened, os.fsencode(tmp_path / "out")).run(tree)
    assert stats.errors == [] and stats.files == len(files)
    assert snapshot_tree(tmp_path / "out" / str(src).lstrip("/")) == snapshot_tree(src)


def test_a_job_sent_to_a_worker_arrives_whole() -> None:
    """A small file's job and its chunk's place cross to a worker process pickled in a
    compact form: every field of the job and its node arrives as it was."""
    import pickle

    from bcdr.repository.index import BlobLocation
    from bcdr.repository.tree import FILE, Node

    node = Node(
        name=b"f", type=FILE, mode=0o100640, uid=7, gid=8, mtime_ns=9, ctime_ns=10, inode=11,
        dev=12, nlink=2, size=3, content=[b"c" * 32], digest="d", xattrs=((b"user.a", b"1"),),
    )  # fmt: skip
    job = filerestore._Job(
        node, b"/t/f", b"/f", b"/t/.tmp", 4, 1, b"/t", b"f", b".tmp", error="e", digest="x",
        end=2, direct=True, dir_fd=5, unnamed=True, xattrs_skipped=[b"user.b"],
    )  # fmt: skip
    loc = BlobLocation("ab" * 32, 1, 2, 3, 4, 5)
    again, there = pickle.loads(pickle.dumps((job, loc)))
    assert again == job and again.node == node and there == loc
