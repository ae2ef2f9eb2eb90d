"""A real ``bcdr backup`` process killed with SIGKILL at many points leaves a repository whose
every earlier snapshot restores, that checks clean (leftovers aside), and where the next backup
succeeds."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import init_small, restored_root, run_process, snapshot_tree, write_tree

KILLS = 14


def _backup_proc(repo: Path, src: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bcdr", "backup", "--repo", str(repo), "--job", "crash", str(src)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
def test_sigkill_at_many_points(tmp_path: Path) -> None:
    rng = random.Random(42)
    src = write_tree(
        tmp_path / "src", {f"shard-{i}.bin": rng.randbytes(3_000_000) for i in range(10)}
    )
    repo = tmp_path / "repo"
    # Small chunks and packs: tens of packs and several index files per backup.
    init_small(repo, "16384,16384,131072", 262144)

    started = time.monotonic()
    assert run_process("snapshots", "--repo", repo).code == 0
    startup = time.monotonic() - started  # interpreter, imports, opening the repository
    started = time.monotonic()
    assert run_process("backup", "--repo", repo, "--job", "crash", src).code == 0
    full = time.monotonic() - started
    print(f"startup {startup:.2f}s, full backup {full:.2f}s")

    count = 1
    completed_before_kill = 0
    for i in range(KILLS):
        # New data every round so each attempt has as much to write as the timed one.
        for j in range(10):
            (src / f"shard-{j}.bin").write_bytes(rng.randbytes(3_000_000))
        proc = _backup_proc(repo, src)
        time.sleep(startup + (full - startup) * (i + 1) / (KILLS + 1))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        if proc.wait() == 0:
            completed_before_kill += 1

        check = run_process("check", "--repo", repo)
        assert check.code == 0, f"kill #{i}: {check.out}{check.err}"
        assert "error:" not in check.out
        snaps = json.loads(run_process("snapshots", "--repo", repo, "--json").out)
        # A kill may land after the snapshot was written: at most one more, never fewer.
        assert count <= len(snaps) <= count + 1
        count = len(snaps)

    # Every snapshot that exists restores and verifies; the newest equals the source if the
    # last attempt completed, so compare after one more (unkilled) backup.
    r = run_process("backup", "--repo", repo, "--job", "crash", src)
    assert r.code == 0, r.err
    snaps = json.loads(run_process("snapshots", "--repo", repo, "--json").out)
    for snap in snaps:
        target = tmp_path / f"restore-{snap['id'][:8]}"
        r = run_process("restore", "--repo", repo, snap["id"], "--target", target)
        assert r.code == 0, r.err
    assert snapshot_tree(
        restored_root(tmp_path / f"restore-{snaps[-1]['id'][:8]}", src)
    ) == snapshot_tree(src)
    check = run_process("check", "--repo", repo, "--read-data")
    assert check.code == 0, check.out
    # Leftovers of the killed runs are reported as such, not as errors.
    assert "leftover:" in check.out or completed_before_kill == KILLS
    assert completed_before_kill < KILLS // 2  # most kills really interrupted a backup
    assert os.listdir(repo / "snapshots")


def _helper(repo: Path, src: Path, kill_after: int | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.crash_helper", str(repo), str(src), str(kill_after)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


@pytest.mark.slow
def test_sigkill_after_every_kind_of_write(tmp_path: Path) -> None:
    """Kill exactly after the 1st, 2nd, ... put: lock, packs, index files, snapshot."""
    rng = random.Random(7)
    src = write_tree(tmp_path / "src", {f"f{i}": rng.randbytes(400_000) for i in range(6)})
    repo = tmp_path / "repo"
    init_small(repo, "16384,16384,131072", 65536)
    dry = _helper(repo, src, 0)
    assert dry.returncode == 0, dry.stderr
    total_puts = int(dry.stdout)
    assert total_puts > 30  # lock + dozens of packs + index + snapshot
    snaps_before = 1
    points = sorted(
        {1, 2, 3, total_puts - 2, total_puts - 1, total_puts}
        | set(range(4, total_puts - 2, max(1, total_puts // 10)))
    )
    for n in points:
        for f in src.iterdir():  # all new data: about as many puts as the dry run
            f.write_bytes(rng.randbytes(400_000))
        proc = _helper(repo, src, n)
        # Pack boundaries vary by a put or so; a run may finish just before the last points.
        finished = proc.returncode == 0 and n >= total_puts - 2
        assert proc.returncode == -signal.SIGKILL or finished, (n, proc.stderr)
        check = run_process("check", "--repo", repo, "--read-data")
        assert check.code == 0, f"killed after put {n}: {check.out}"
        snaps = json.loads(run_process("snapshots", "--repo", repo, "--json").out)
        assert snaps_before <= len(snaps) <= snaps_before + 1
        snaps_before = len(snaps)
        latest = tmp_path / f"out-{n}"
        assert run_process("restore", "--repo", repo, "latest", "--target", latest).code == 0
    # Killed right after the snapshot was written: the snapshot is there, whole, and restores.
    (src / "f0").write_bytes(b"after the last kill")
    assert _helper(repo, src, "snapshots/").returncode == -signal.SIGKILL
    snaps = json.loads(run_process("snapshots", "--repo", repo, "--json").out)
    assert len(snaps) == snaps_before + 1
    out = tmp_path / "out-final"
    assert run_process("restore", "--repo", repo, snaps[-1]["id"], "--target", out).code == 0
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    assert _helper(repo, src, 0).returncode == 0


STUCK_BACKUP = """
import os, sys, time
import bcdr.archive.backup as backup_mod
from bcdr.actions.backup import BackupRequest, backup
real_open = backup_mod._open_noatime
def stuck_open(path):
    if path.endswith(b"/stuck"):
        time.sleep(600)  # a worker hangs on this file (a dead NFS server, say)
    return real_open(path)
backup_mod._open_noatime = stuck_open
backup(sys.argv[1], BackupRequest(paths=(sys.argv[2],)))
"""


def _running(pid: int) -> bool:
    """Alive, not a zombie waiting for whoever adopted it to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out |= {int(c) for c in f.read().split()}
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux")
def test_worker_processes_die_with_a_killed_backup(tmp_path: Path, repo: str) -> None:
    """bcdr killed (SIGKILL, the OOM killer) takes its worker processes with it: none lingers
    holding its pipes or the source files."""
    src = write_tree(tmp_path / "src", {f"f{i}": b"x" * 100 for i in range(10)} | {"stuck": b"s"})
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK_BACKUP, repo, str(src)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        workers: set[int] = set()
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = _children(proc.pid)
            time.sleep(0.05)
        assert len(workers) >= 2, "the backup forked no worker processes"
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [w for w in workers if _running(w)]
    for w in alive:  # do not leave them behind even when the test fails
        os.kill(w, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived the killed backup"
