"""Lock liveness across pid namespaces, and the commit guard: a backup that is alive is never
taken for dead, and a backup never commits a snapshot whose reused packs are gone.

The race these tests close: a backup in a container that shares the host's hostname but not
its pid namespace was judged dead by its pid; a prune on the host swept the packs it had
deduplicated against, and the backup then exited 0 with a snapshot that did not restore.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bcdr.repository.locks import (
    BACKUP,
    LockInfo,
    boot_id,
    is_stale,
    list_locks,
    pid_namespace,
    process_start,
)
from bcdr.storage.local import LocalStorage
from tests.conftest import init_small, restored_root, run_process, snapshot_tree, write_tree
from tests.pause_helper import resume, start_paused

NOW = datetime.now(UTC)


def _lock(**fields: object) -> LockInfo:
    base: dict[str, object] = {
        "key": "locks/x",
        "kind": BACKUP,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "username": "u",
        "created": NOW.isoformat(),
        "expires": (NOW + timedelta(minutes=30)).isoformat(),
        "boot_id": boot_id(),
        "pid_ns": pid_namespace(),
        "started": process_start(os.getpid()),
    }
    return LockInfo(**{**base, **fields})  # type: ignore[arg-type]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_pid_is_trusted_only_in_the_same_boot_and_pid_namespace() -> None:
    dead = _dead_pid()
    assert not is_stale(_lock(), NOW)  # this very process
    assert is_stale(_lock(pid=dead, started=0), NOW)  # gone, same host, boot and namespace
    # Another pid namespace (a container sharing the hostname), or another boot: the pid
    # says nothing here, so only the expiry counts.
    assert not is_stale(_lock(pid=dead, pid_ns="pid:[1]"), NOW)
    assert not is_stale(_lock(pid=dead, boot_id="another-boot"), NOW)
    # A lock written before boot and namespace were recorded cannot be judged by its pid.
    assert not is_stale(_lock(pid=dead, boot_id="", pid_ns=""), NOW)
    # ... but every lock is stale once its holder stopped refreshing it.
    assert is_stale(_lock(pid=dead, pid_ns="pid:[1]"), NOW + timedelta(minutes=31))
    # A pid that exists but started at another time is a reused pid: its holder is gone.
    assert is_stale(_lock(started=process_start(os.getpid()) + 1), NOW)


def test_a_written_lock_records_boot_namespace_and_start(repo: str) -> None:
    from bcdr.clock import SystemClock
    from bcdr.repository.locks import RepoLock

    storage = LocalStorage(repo)
    with RepoLock(storage, SystemClock(), kind=BACKUP, url=repo).acquire():
        (lock,) = list_locks(storage)
    assert (lock.boot_id, lock.pid_ns) == (boot_id(), pid_namespace()) and lock.boot_id
    assert lock.started == process_start(os.getpid()) > 0


def _free_host_pid(start: int) -> int:
    pid = start
    while Path(f"/proc/{pid}").exists():
        pid += 1
    return pid


def _paused_backup(
    tmp_path: Path, repo: Path, src: Path, job: str, *, namespace: bool
) -> subprocess.Popen[str]:
    """Start tests.pause_helper (in a new pid namespace with the host's hostname, when
    ``namespace``) and wait until it has stopped itself, holding its lock."""
    marker = tmp_path / "paused"
    helper = [sys.executable, "-m", "tests.pause_helper", str(repo), str(src), job, str(marker)]
    if namespace:
        # In the new namespace pids count up from 1 (sh). Burn some with `true` so that the
        # backup's pid is one no process has on the host: judged by its pid on the host, its
        # lock looks dead, as in the reported race.
        burn = _free_host_pid(20) - 2
        script = f'i=0; while [ $i -lt {burn} ]; do /bin/true; i=$((i+1)); done; "$@"; true'
        helper = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, "sh", *helper]
    return start_paused(helper, marker, "backup")


def _resume(proc: subprocess.Popen[str]) -> dict[str, object]:
    return resume(proc)


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """A repository whose only snapshot of ``src`` (job old) is about to be forgotten: the
    paused backup (job ns) deduplicates every chunk of ``src`` against its packs."""
    repo = tmp_path / "repo"
    init_small(repo, "4096,4096,32768", 65536)
    src = write_tree(tmp_path / "src", {f"f{i}": os.urandom(150_000) for i in range(6)})
    other = write_tree(tmp_path / "other", {"x": os.urandom(10_000)})
    assert run_process("backup", "--repo", repo, "--job", "old", src).code == 0
    assert run_process("backup", "--repo", repo, "--job", "old", other).code == 0
    (src / "new").write_bytes(os.urandom(5000))  # the paused backup writes one pack of its own
    return repo, src


def _forget_old_and_prune(repo: Path) -> dict[str, object]:
    r = run_process("forget", "--repo", repo, "--job", "old", "--keep-last", "1")
    assert r.code == 0, r.err
    r = run_process("prune", "--repo", repo, "--grace", "0", "--max-unused", "0", "--json")
    assert r.code == 0, r.err
    report: dict[str, object] = json.loads(r.out)
    return report


def _restores(tmp_path: Path, repo: Path, snap: str, src: Path) -> None:
    out = tmp_path / f"out-{snap[:8]}-{len(list(tmp_path.iterdir()))}"
    r = run_process("restore", "--repo", repo, snap, "--target", out)
    assert r.code == 0, r.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 0, r.out + r.err


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="unshare --pid needs root (CI runs as root)")
def test_a_backup_in_another_pid_namespace_with_the_same_hostname_is_not_taken_for_dead(
    tmp_path: Path,
) -> None:
    repo, src = _setup(tmp_path)
    proc = _paused_backup(tmp_path, repo, src, "ns", namespace=True)
    try:
        (lock,) = [lock for lock in list_locks(LocalStorage(repo)) if lock.kind == BACKUP]
        assert lock.hostname == socket.gethostname() and lock.pid_ns != pid_namespace()
        assert not Path(f"/proc/{lock.pid}").exists()  # by its pid, it looks dead here
        report = _forget_old_and_prune(repo)
        # The sweep waits for the live backup instead of deleting what it reuses.
        assert report["packs_deleted"] == 0, report
        assert any("waiting for backup lock" in p for p in report["postponed"]), report  # type: ignore[attr-defined]
    finally:
        result = _resume(proc)
    assert result["notes"] == []
    _restores(tmp_path, repo, str(result["snapshot"]), src)
    # Now the backup has ended, the next prune sweeps the mark: it keeps the packs the
    # backup's snapshot refers to (and deletes what only the forgotten snapshot used).
    r = run_process("prune", "--repo", repo, "--grace", "0", "--json")
    assert r.code == 0, r.err
    swept = json.loads(r.out)
    assert swept["marks_swept"] and swept["packs_kept"], swept  # (the forgotten trees' go)
    _restores(tmp_path, repo, str(result["snapshot"]), src)


@pytest.mark.slow
def test_commit_guard_stores_again_what_a_prune_swept_under_a_running_backup(
    tmp_path: Path,
) -> None:
    """The operator removes the live backup's lock (`unlock --remove-all`), and prune sweeps
    the packs the backup reused: the backup finds them gone before it commits, stores those
    blobs again from the source, and its snapshot restores."""
    repo, src = _setup(tmp_path)
    proc = _paused_backup(tmp_path, repo, src, "ns", namespace=False)
    try:
        assert run_process("unlock", "--repo", repo, "--remove-all").code == 0
        report = _forget_old_and_prune(repo)
        assert report["packs_deleted"], report  # the reused packs are gone
    finally:
        result = _resume(proc)
    notes = result["notes"]
    assert isinstance(notes, list) and len(notes) == 1, notes
    assert "no longer safely stored" in notes[0] and "pass 2" in notes[0]
    _restores(tmp_path, repo, str(result["snapshot"]), src)
