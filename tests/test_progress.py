"""Progress is shown on a terminal and silent otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from tests.conftest import run_process, write_tree


def test_silent_when_not_a_terminal(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"big": os.urandom(3_000_000)})
    r = run_process("backup", "--repo", repo, src)
    assert r.code == 0 and r.err == ""


def test_progress_on_a_terminal(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {f"f{i}": os.urandom(2_000_000) for i in range(40)})
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcdr", "backup", "--repo", repo, str(src)],
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the terminal closed
            break
        if not data:
            break
        seen += data
    assert proc.wait() == 0
    os.close(leader)
    assert b"files, " in seen and b"read" in seen and b"\r" in seen
    # --quiet silences it even on a terminal
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcdr", "backup", "-q", "--force-read", "--repo", repo, str(src)],
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    assert proc.wait() == 0
    try:
        quiet = os.read(leader, 4096)
    except OSError:
        quiet = b""
    os.close(leader)
    assert b"files, " not in quiet
