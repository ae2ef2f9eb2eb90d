"""Interrupts tell the truth: after SIGINT or SIGTERM a backup says whether it committed a
snapshot (and which), a committed snapshot always has its evidence record, no lock is left
behind and no traceback is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bcdr.repository.locks import list_locks
from bcdr.storage.local import LocalStorage
from tests.conftest import init_small, run_process, write_tree


def _run(sig: str, prefix: str, repo: Path, src: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.signal_helper",
            sig,
            prefix,
            "bcdr",
            "backup",
            "--repo",
            str(repo),
            "--job",
            "j",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )


def _snapshots(repo: Path) -> list[dict[str, object]]:
    r = run_process("snapshots", "--repo", repo, "--json")
    assert r.code == 0, r.err
    snaps: list[dict[str, object]] = json.loads(r.out)
    return snaps


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_at_the_commit_point_names_the_committed_snapshot(
    tmp_path: Path, sig: str
) -> None:
    repo = tmp_path / "repo"
    init_small(repo)
    src = write_tree(tmp_path / "src", {"a": b"x" * 50_000, "b/c": b"y" * 9000})
    proc = _run(sig, "snapshots/", repo, src)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    (snap,) = _snapshots(repo)
    assert f"interrupted after snapshot {str(snap['id'])[:8]} was committed" in proc.stderr
    assert "recorded as evidence" in proc.stderr
    r = run_process("evidence", "list", "--repo", repo, "--json")
    records = [rec for rec in json.loads(r.out) if rec["kind"] == "backup"]
    assert [rec["facts"]["snapshot"] for rec in records] == [snap["id"]]
    assert list_locks(LocalStorage(str(repo))) == []
    assert run_process("check", "--repo", repo).code == 0


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_before_the_commit_says_no_snapshot_was_written(
    tmp_path: Path, sig: str
) -> None:
    repo = tmp_path / "repo"
    init_small(repo)
    src = write_tree(tmp_path / "src", {f"f{i}": bytes([i]) * 60_000 for i in range(8)})
    proc = _run(sig, "data/", repo, src)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "before a snapshot was committed; no snapshot was written" in proc.stderr
    assert _snapshots(repo) == []
    assert list_locks(LocalStorage(str(repo))) == []  # released, SIGTERM too
    r = run_process("backup", "--repo", repo, "--job", "j", src)
    assert r.code == 0, r.err


def test_an_interrupt_inside_a_callback_python_cannot_raise_from_is_not_lost() -> None:
    """A KeyboardInterrupt raised inside ``__del__`` (or a weakref callback, an at-fork
    hook) is "ignored" by Python with a traceback, and the command went on as if never
    interrupted. bcdr sends the signal again, to stop the command where it can."""
    script = (
        "import os, signal, time\n"
        "from bcdr.interrupts import terminate_as_interrupt\n"
        "terminate_as_interrupt()\n"
        "class X:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        time.sleep(0.05)  # the handler runs here, inside __del__\n"
        "x = X()\n"
        "try:\n"
        "    del x\n"
        "    for _ in range(200):\n"
        "        time.sleep(0.005)\n"
        "    print('lost')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "interrupted", (proc.stdout, proc.stderr)
    assert "Exception ignored" not in proc.stderr and "Traceback" not in proc.stderr
