"""Progress is shown on a terminal and silent otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

from bcdr.cli.progress import Scanner
from tests.conftest import run_process, tmpfs, write_tree


def test_silent_when_not_a_terminal(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"big": os.urandom(3_000_000)})
    r = run_process("backup", "--repo", repo, src)
    assert r.code == 0 and r.err == ""


def _on_a_terminal(*args: object) -> bytes:
    """What ``bcdr ARGS`` writes to stderr when stderr is a terminal."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcdr", *map(str, args)],
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
    assert proc.wait() == 0, seen
    os.close(leader)
    return seen


def test_a_backup_shows_totals_counted_ahead_a_rate_and_an_eta(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "model.bin", "wb") as f:  # one large file: the line moves inside it
        for _ in range(48):
            f.write(os.urandom(8 << 20))
    write_tree(src, {f"small/{i}.txt": b"x" * 1000 for i in range(20)})
    seen = _on_a_terminal("backup", "--repo", repo, src)
    lines = [line.strip() for line in seen.split(b"\r") if line.strip()]
    totals = [line for line in lines if b"of 384.0 MiB" in line]
    assert totals, lines
    assert any(b"ETA " in line and b"/s" in line for line in totals), totals
    assert any(b"of 21 files" in line for line in totals), totals
    percents = [float(line.split(b"%")[0]) for line in totals if b"%" in line]
    assert len(percents) >= 2 and percents == sorted(percents), percents  # it moves, forward
    assert percents[0] < 100.0


def test_progress_on_a_terminal(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {f"f{i}": os.urandom(2_000_000) for i in range(40)})
    seen = _on_a_terminal("backup", "--repo", repo, src)
    assert b"of 40 files" in seen and b"%" in seen and b"\r" in seen
    # --quiet silences it even on a terminal
    quiet = _on_a_terminal("backup", "-q", "--force-read", "--repo", repo, src)
    assert b"files" not in quiet and b"%" not in quiet


def test_a_restore_line_moves_while_one_large_file_is_written(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "model.bin", "wb") as f:
        for _ in range(64):
            f.write(os.urandom(8 << 20))
    assert run_process("backup", "--repo", repo, src).code == 0
    seen = _on_a_terminal("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    lines = [line.strip() for line in seen.split(b"\r") if b"of 512.0 MiB" in line]
    percents = [float(line.split(b"%")[0]) for line in lines]
    assert len(percents) >= 2 and percents == sorted(percents), (percents, seen[-500:])
    assert 0 < percents[0] < 100 and any(b"ETA" in line for line in lines)
    assert (tmp_path / "out").exists()
    # --verify: the line then tells the reading back
    seen = _on_a_terminal(
        "restore", "--repo", repo, "latest", "--target", tmp_path / "again", "--verify"
    )
    assert b"reading back: " in seen and b"of 512.0 MiB" in seen.split(b"reading back: ")[1]


def test_check_read_data_shows_its_share_and_eta(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {f"f{i}": os.urandom(3_000_000) for i in range(30)})
    assert run_process("backup", "--repo", repo, src).code == 0
    seen = _on_a_terminal("check", "--repo", repo, "--read-data")
    assert b"packs (" in seen and b"%)" in seen, seen[-300:]


def test_a_copy_shows_the_share_of_every_snapshot_it_copies(tmp_path: Path, repo: str) -> None:
    """Totals from the snapshots' own sizes (two snapshots, a file twice in one of them:
    shared chunks are counted as the files have them), moving inside one large file."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "model.bin", "wb") as f:
        for _ in range(12):
            f.write(os.urandom(8 << 20))
    assert run_process("backup", "--repo", repo, src).code == 0
    (src / "again.bin").write_bytes((src / "model.bin").read_bytes()[: 16 << 20])
    assert run_process("backup", "--repo", repo, src).code == 0
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst).code == 0
    seen = _on_a_terminal("copy", "--from-repo", repo, "--repo", dst, "all")
    lines = [line.strip() for line in seen.split(b"\r") if b"of 208.0 MiB" in line]
    percents = [float(line.split(b"%")[0]) for line in lines]
    assert len(percents) >= 3 and percents == sorted(percents), (percents, seen[-500:])
    assert 0 < percents[0] < 50 and any(b"ETA" in line for line in lines)
    assert percents[-1] > 90
    r = run_process("copy", "--from-repo", repo, "--repo", tmp_path / "dst", "all", "--json")
    assert r.code == 0 and "bytes_done" not in r.out and "bytes_planned" not in r.out


def test_the_count_ahead_leaves_out_other_filesystems_with_one_file_system(
    tmp_path: Path,
) -> None:
    """With ``-x`` the totals are what the backup reads: a file mounted below is not counted."""
    src = write_tree(tmp_path / "src", {"local.bin": b"l" * 1000})
    with tmpfs(src / "mnt", "1m"):
        (src / "mnt" / "other-fs.bin").write_bytes(b"o" * 5000)
        for one_file_system, expected in ((True, (1, 1000)), (False, (2, 6000))):
            scan = Scanner([str(src)], (), one_file_system)
            deadline = time.monotonic() + 30
            while not scan.complete and time.monotonic() < deadline:
                time.sleep(0.01)
            assert scan.complete and (scan.files, scan.bytes) == expected
