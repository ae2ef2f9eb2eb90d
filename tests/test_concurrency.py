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

from bcdr.clock import FakeClock, SystemClock
from bcdr.errors import LockConflict, LockLost
from bcdr.repository.locks import (
    BACKUP,
    PRUNE,
    READ,
    SWEEP,
    RepoLock,
    boot_id,
    list_locks,
    pid_namespace,
)
from bcdr.storage.local import LocalStorage
from tests.conftest import (
    init_small,
    restored_root,
    run_process,
    snapshot_tree,
    temp_files,
    write_tree,
)


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


def _lock(storage: LocalStorage, clock: FakeClock, kind: str) -> RepoLock:
    return RepoLock(storage, clock, kind=kind, url=str(storage.root)).acquire()


def test_lock_kinds_never_block_backups(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    prune, sweep = _lock(storage, clock, PRUNE), _lock(storage, clock, SWEEP)
    backups = [_lock(storage, clock, BACKUP) for _ in range(2)]  # all coexist with a sweep
    with pytest.raises(LockConflict) as exc:
        _lock(storage, clock, READ)  # a reader could hold an index naming a pack being swept
    assert "sweep lock" in str(exc.value) and "bcdr unlock" in (exc.value.hint or "")
    with pytest.raises(LockConflict):
        _lock(storage, clock, PRUNE)  # one prune at a time
    sweep.release()
    reader = _lock(storage, clock, READ)
    with pytest.raises(LockConflict):
        _lock(storage, clock, SWEEP)  # and a sweep waits for readers
    for held in (reader, prune, *backups):
        held.release()
    assert list_locks(storage) == []


def test_reader_waits_for_a_sweep_to_end(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    sweep = _lock(storage, clock, SWEEP)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the sweep ends while the reader waits
        waits.append(seconds)
        clock.advance(timedelta(seconds=seconds))
        if len(waits) == 3:
            sweep.release()

    clock.sleep = sleep  # type: ignore[method-assign]
    reader = RepoLock(storage, clock, kind=READ, url="r", wait=60).acquire()
    assert len(waits) == 3
    reader.release()


def test_expired_lock_is_stale(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    held = _lock(storage, clock, SWEEP)
    clock.advance(timedelta(hours=1))  # past the 30 min expiry without a refresh
    reader = _lock(storage, clock, READ)
    assert [lock.key for lock in reader.stale_seen] == [held._key]
    reader.release()
    held.release()


def test_holder_whose_lock_expired_must_not_commit(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    held = _lock(storage, clock, BACKUP)
    clock.advance(timedelta(minutes=29))
    held.ensure_valid()
    clock.advance(timedelta(minutes=2))  # suspended past the expiry: a prune may have swept
    with pytest.raises(LockLost):
        held.ensure_valid()
    held.release()


def test_lock_of_dead_process_is_reported_and_unlocked(tmp_path: Path, repo: str) -> None:
    storage = LocalStorage(repo)
    doc = {
        "kind": "sweep",
        "exclusive": True,
        "hostname": socket.gethostname(),
        "boot_id": boot_id(),
        "pid_ns": pid_namespace(),
        "pid": 2**22 + 12345,
        "username": "ghost",
        "created": datetime.now(UTC).isoformat(),
        "expires": (datetime.now(UTC) + timedelta(minutes=30)).isoformat(),
        "nonce": "x",
    }
    storage.put("locks/deadbeef", json.dumps(doc).encode())
    src = write_tree(tmp_path / "src", {"a": b"1"})
    # A stale sweep lock does not block a backup or a restore, which say they ignored it ...
    r = run_process("backup", "--repo", repo, src)
    assert r.code == 0 and "note: ignored the stale sweep lock deadbeef by pid" in r.err, r.err
    assert f"`bcdr unlock --repo {repo}` removes it" in r.err
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    assert r.code == 0, r.err
    # ... and check names it with the command that clears it.
    r = run_process("check", "--repo", repo)
    assert r.code == 0 and "stale sweep lock deadbeef" in r.out
    assert f"bcdr unlock --repo {repo}" in r.out
    r = run_process("unlock", "--repo", repo)
    assert r.code == 0 and "1 lock(s) removed" in r.out
    assert list_locks(storage) == []


@pytest.mark.parametrize(
    "change",
    [
        {"expires": "garbage"},
        {"expires": 5},
        {"expires": "2099-01-01T00:00:00"},  # no UTC offset: cannot be compared with now
        {"pid": "x"},  # on this host: its process would be looked up with kill(pid, 0)
        {"pid": -1},
        {"hostname": 5},
        None,  # not an object
    ],
    ids=lambda change: "-".join(f"{k}={v}" for k, v in (change or {"doc": "list"}).items()),
)
def test_a_lock_object_with_a_field_of_the_wrong_kind_is_stale_not_a_crash(
    tmp_path: Path, repo: str, change: dict[str, object] | None
) -> None:
    # each failed backup, check, unlock and prune with a traceback
    storage = LocalStorage(repo)
    doc = {
        "kind": "backup",
        "hostname": socket.gethostname(),
        "pid": 1,
        "username": "u",
        "created": "2026-11-29T10:00:00+00:00",
        "expires": "2099-01-01T00:00:00+00:00",
    }
    storage.put(
        "locks/0badf00d", json.dumps([1, 2] if change is None else {**doc, **change}).encode()
    )
    src = write_tree(tmp_path / "src", {"a": b"1"})
    r = run_process("backup", "--repo", repo, src)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    r = run_process("check", "--repo", repo)
    assert r.code == 0 and "stale sweep lock 0badf00d" in r.out, r.out + r.err
    r = run_process("unlock", "--repo", repo)
    assert r.code == 0 and "1 lock(s) removed" in r.out, r.out + r.err
    assert list_locks(storage) == []


def test_live_sweep_lock_blocks_restore_but_not_backup(
    tmp_path: Path, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(repo)
    clock = FakeClock(datetime.now(UTC))
    held = _lock(storage, clock, SWEEP)  # this (live) process holds it
    monkeypatch.setenv("BCDR_LOCK_WAIT", "1")
    try:
        src = write_tree(tmp_path / "src", {"a": b"1"})
        assert run_process("backup", "--repo", repo, src).code == 0
        r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
        assert r.code == 1 and "repository is locked" in r.err and "--remove-all" in r.err
    finally:
        held.release()


def test_check_beside_a_live_writer_does_not_call_its_pack_being_filled_a_leftover(
    tmp_path: Path, repo: str
) -> None:
    """A backup fills its pack in tmp/ as it goes. While a writer's lock is live, check lists
    only temporary files nothing has written to for ten minutes; with no writer, every one
    is a leftover of an interrupted write."""
    storage = LocalStorage(repo)
    temp_files(repo, "staged.1a2b3c.tmp", "staged.4d5e6f.tmp", timedelta(hours=1))
    backup = RepoLock(storage, SystemClock(), kind=BACKUP, url=repo).acquire()
    r = run_process("check", "--repo", repo)
    assert r.code == 0, r.err
    assert "leftover: temporary file tmp/staged.4d5e6f.tmp" in r.out and "1a2b3c" not in r.out
    assert "prune removes it once nothing has written to it for a day" in r.out
    backup.release()
    r = run_process("check", "--repo", repo)
    assert "tmp/staged.1a2b3c.tmp" in r.out and "tmp/staged.4d5e6f.tmp" in r.out
