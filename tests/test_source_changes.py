"""Files that vanish or change while a backup reads them are reported; the backup completes."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive import backup as backup_mod
from bcdr.archive.backup import BackupStats
from bcdr.archive.restore import Restorer
from bcdr.forked import processes_enabled
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.conftest import Cli, write_tree


def _repo(tmp_path: Path) -> Repository:
    params = ChunkerParams(min_size=4096, avg_size=4096, max_size=32768)
    return Repository.init(LocalStorage(tmp_path / "repo"), password=None, chunker=params)


def test_vanished_file_is_reported_and_backup_completes(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a-big": os.urandom(400_000), "b-gone": b"bye", "c": b"c"})
    repo = _repo(tmp_path)

    def delete_next_file(stats: BackupStats, path: bytes) -> None:
        if (src / "b-gone").exists():
            os.unlink(src / "b-gone")  # removed after the folder was listed

    result = run_backup(repo, BackupRequest(paths=(str(src),)), progress=delete_next_file)
    assert result.partial
    assert [(s.path, s.reason) for s in result.skipped] == [
        (str(src / "b-gone"), "vanished before it was read")
    ]
    assert result.stats.files_new == 2  # a-big and c were stored
    assert result.snapshot.skipped == tuple(result.skipped)


def test_file_changed_while_read_is_detected(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"growing": os.urandom(400_000)})
    repo = _repo(tmp_path)
    appended: list[bool] = []

    def append(stats: BackupStats, path: bytes) -> None:
        if not appended:
            with open(src / "growing", "ab") as f:
                f.write(b"more")
            appended.append(True)

    result = run_backup(repo, BackupRequest(paths=(str(src),)), progress=append)
    assert result.partial
    assert "changed while it was read" in result.skipped[0].reason
    # The next backup sees the new mtime and reads the file again.
    again = run_backup(repo, BackupRequest(paths=(str(src),)))
    assert again.stats.bytes_read == 400_004 and not again.partial


def test_small_file_gone_when_its_batch_is_read_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files are read by a worker in batches, after their folder was listed and stat'ed:
    one that cannot be opened by then is reported and left out of the tree, and the rest of
    its batch and folder is stored and restores."""
    files = {f"f{i:02d}": os.urandom(100 + i) for i in range(40)}
    src = write_tree(tmp_path / "src", files)
    repo = _repo(tmp_path)
    real_open = backup_mod._open_noatime
    walker = os.getpid()

    def open_or_vanish(path: bytes) -> int:
        if path.endswith(b"/f07"):
            # read in a batch: by a worker process (or thread), not by the walk
            assert (
                os.getpid() != walker or threading.current_thread() is not threading.main_thread()
            )
            raise FileNotFoundError(path)
        return real_open(path)

    monkeypatch.setattr(backup_mod, "_open_noatime", open_or_vanish)
    result = run_backup(repo, BackupRequest(paths=(str(src),)))
    assert [(s.path, s.reason) for s in result.skipped] == [
        (str(src / "f07"), "vanished before it was read")
    ]
    assert result.stats.files_new == 39
    out = tmp_path / "out"
    Restorer(repo, os.fsencode(out)).run(bytes.fromhex(result.snapshot.tree))
    restored = out / str(src).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == sorted(set(files) - {"f07"})
    assert all((restored / n).read_bytes() == files[n] for n in files if n != "f07")


@pytest.mark.skipif(not processes_enabled(2), reason="worker processes are forked on Linux")
def test_worker_process_killed_fails_the_backup_cleanly_and_the_next_one_works(
    tmp_path: Path,
    repo: str,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker process that dies (the OOM killer picks it) fails the backup with a clear
    error and exit code 1; nothing is committed, the repository checks clean, and the next
    backup stores everything."""
    files = {f"d{d}/f{i}": os.urandom(300 + i) for d in range(3) for i in range(30)}
    src = write_tree(tmp_path / "src", files | {"d1/poison": b"p"})
    walker = os.getpid()
    real_open = backup_mod._open_noatime

    def open_or_die(path: bytes) -> int:
        if path.endswith(b"/poison") and os.getpid() != walker:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_open(path)

    monkeypatch.setattr(backup_mod, "_open_noatime", open_or_die)
    r = cli("backup", "--repo", repo, src)
    assert r.code == 1, r.err
    assert "worker process of this backup ended unexpectedly" in r.err
    assert "Traceback" not in r.err
    assert cli("snapshots", "--repo", repo, "--json").json() == []
    assert cli("check", "--repo", repo, "--read-data").code == 0

    monkeypatch.setattr(backup_mod, "_open_noatime", real_open)
    r = cli("backup", "--repo", repo, src)
    assert r.code == 0, r.err
    out = tmp_path / "out"
    assert cli("restore", "--repo", repo, "latest", "--target", out).code == 0
    restored = out / str(src).lstrip("/")
    assert all((restored / n).read_bytes() == data for n, data in files.items())


@pytest.mark.skipif(not processes_enabled(2), reason="worker processes are forked on Linux")
def test_worker_processes_and_threads_store_the_same_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small files read by forked processes or by threads give the same snapshot tree (the
    same bytes, chunked, hashed and recorded alike), and the processes really ran."""
    rng = __import__("random").Random(7)
    files = {
        f"d{d}/f{i}": rng.randbytes(rng.randint(0, 40_000)) for d in range(4) for i in range(50)
    }
    src = write_tree(tmp_path / "src", files)
    repo = _repo(tmp_path)
    readers: set[int] = set()
    real_open = backup_mod._open_noatime

    def open_noting_reader(path: bytes) -> int:
        readers.add(os.getpid())  # in a child, the parent never sees it: only threads count
        return real_open(path)

    monkeypatch.setattr(backup_mod, "_open_noatime", open_noting_reader)
    forked = run_backup(repo, BackupRequest(paths=(str(src),), job="forked"))
    assert readers == set()  # no file was opened in this process: workers did it
    monkeypatch.setenv("BCDR_WORKER_PROCESSES", "0")
    threaded = run_backup(repo, BackupRequest(paths=(str(src),), job="threads"))
    assert readers == {os.getpid()}
    assert threaded.snapshot.tree == forked.snapshot.tree
    assert threaded.stats.bytes_read == forked.stats.bytes_read == sum(map(len, files.values()))


@pytest.mark.parametrize("told", [0, 5, 99_999, 100_000, 100_001, 250_000])
def test_a_small_file_is_read_to_its_end_whatever_size_stat_told(tmp_path: Path, told: int) -> None:
    # The size from fstat is only a hint: a file that grew or shrank since is read to its end
    # (and the backup then reports it as changed while read)
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert backup_mod._read_to_end(fd, told, 1 << 20) == data
    finally:
        os.close(fd)


def test_reading_a_small_file_whole_stops_past_the_limit(tmp_path: Path) -> None:
    # A file listed as small that grew by far is not read whole into a worker's memory
    (tmp_path / "f").write_bytes(b"y" * 10_000)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        assert backup_mod._read_to_end(fd, 100, 5_000) is None  # grew past the limit: not all read
        os.lseek(fd, 0, os.SEEK_SET)
        assert backup_mod._read_to_end(fd, 100, 10_000) == b"y" * 10_000  # grew, within it
        os.lseek(fd, 0, os.SEEK_SET)
        assert backup_mod._read_to_end(fd, 10_000, 10_000) == b"y" * 10_000
    finally:
        os.close(fd)


def test_short_reads_are_read_on_to_the_end(tmp_path: Path) -> None:
    # A pipe gives short reads, as some network and FUSE file systems do
    r, w = os.pipe()
    parts = [os.urandom(3000) for _ in range(5)]

    def feed() -> None:
        for part in parts:
            os.write(w, part)
        os.close(w)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        assert backup_mod._read_to_end(r, 15_000, 1 << 20) == b"".join(parts)
    finally:
        writer.join()
        os.close(r)
