"""Two backups at once both succeed; locks exclude what they must and never outlive a dead
process silently."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bcdr.clock import FakeClock
from bcdr.errors import LockConflict
from bcdr.repository.locks import RepoLock, list_locks
from bcdr.storage.local import LocalStorage
from tests.conftest import init_small, restored_root, run_process, snapshot_tree, write_tree


def test_two_backups_at_the_same_time(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_small(repo, "16384,16384,131072", 262144)
    rng = random.Random(9)
    shared = rng.randbytes(2_000_000)  # both trees hold it: both writers race on its blobs
    a = write_tree(tmp_path / "a", {"shared": shared, "own": rng.randbytes(3_000_000)})
    b = write_tree(tmp_path / "b", {"shared": shared, "own": rng.randbytes(3_000_000)})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bcdr", "backup", "--repo", str(repo), "--job", name, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, path in (("a", a), ("b", b))
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert run_process("check", "--repo", repo, "--read-data").code == 0
    for job, src in (("a", a), ("b", b)):
        out = tmp_path / f"out-{job}"
        r = run_process("restore", "--repo", repo, "latest", "--job", job, "--target", out)
        assert r.code == 0, r.err
        assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def _lock(storage: LocalStorage, clock: FakeClock, exclusive: bool) -> RepoLock:
    return RepoLock(storage, clock, exclusive=exclusive, url=str(storage.root)).acquire()


def test_exclusive_lock_excludes_and_shared_locks_coexist(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    s1 = _lock(storage, clock, False)
    s2 = _lock(storage, clock, False)
    with pytest.raises(LockConflict) as exc:
        _lock(storage, clock, True)
    assert "bcdr unlock" in (exc.value.hint or "")
    s1.release()
    s2.release()
    x = _lock(storage, clock, True)
    with pytest.raises(LockConflict):
        _lock(storage, clock, False)
    x.release()
    assert list_locks(storage) == []


def test_expired_lock_is_stale(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    held = _lock(storage, clock, True)
    clock.advance(timedelta(hours=1))  # past the 30 min expiry without a refresh
    shared = _lock(storage, clock, False)
    assert [lock.key for lock in shared.stale_seen] == [held._key]
    shared.release()
    held.release()


def test_lock_of_dead_process_is_reported_and_unlocked(tmp_path: Path, repo: str) -> None:
    storage = LocalStorage(repo)
    doc = {
        "exclusive": True,
        "hostname": socket.gethostname(),
        "pid": 2**22 + 12345,
        "username": "ghost",
        "created": datetime.now(UTC).isoformat(),
        "expires": (datetime.now(UTC) + timedelta(minutes=30)).isoformat(),
        "nonce": "x",
    }
    storage.put("locks/deadbeef", json.dumps(doc).encode())
    src = write_tree(tmp_path / "src", {"a": b"1"})
    # A stale exclusive lock does not block a backup ...
    assert run_process("backup", "--repo", repo, src).code == 0
    # ... and check names it with the command that clears it.
    r = run_process("check", "--repo", repo)
    assert r.code == 0 and "stale exclusive lock deadbeef" in r.out
    assert f"bcdr unlock --repo {repo}" in r.out
    r = run_process("unlock", "--repo", repo)
    assert r.code == 0 and "1 lock(s) removed" in r.out
    assert list_locks(storage) == []


def test_live_exclusive_lock_blocks_backup_with_hint(tmp_path: Path, repo: str) -> None:
    storage = LocalStorage(repo)
    clock = FakeClock(datetime.now(UTC))
    held = _lock(storage, clock, True)  # this (live) process holds it
    try:
        src = write_tree(tmp_path / "src", {"a": b"1"})
        r = run_process("backup", "--repo", repo, src)
        assert r.code == 1 and "repository is locked" in r.err and "--remove-all" in r.err
    finally:
        held.release()
