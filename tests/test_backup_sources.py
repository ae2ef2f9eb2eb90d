"""Which paths a backup reads (issue 35): --files-from, --exclude-file, --one-file-system."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli, run_process, tmpfs, write_tree


def _listed(cli: Cli, repo: str) -> str:
    r = cli("ls", "--repo", repo, "latest")
    assert r.code == 0, r.err
    return r.out


def test_files_from_and_exclude_file(cli: Cli, repo: str, tmp_path: Path) -> None:
    src = write_tree(
        tmp_path / "src",
        {"a/keep.bin": b"1", "a/skip.tmp": b"2", "b/also.bin": b"3", "c/not-listed.bin": b"4"},
    )
    listing = tmp_path / "paths.txt"
    listing.write_text(f"# what to back up\n{src / 'a'}\n\n{src / 'b'}\n")
    patterns = tmp_path / "excludes.txt"
    patterns.write_text("# scratch files\n*.tmp\n")
    r = cli("backup", "--repo", repo, "--files-from", listing, "--exclude-file", patterns)
    assert r.code == 0, r.err
    seen = _listed(cli, repo)
    assert "keep.bin" in seen and "also.bin" in seen
    assert "skip.tmp" not in seen and "not-listed" not in seen
    # from stdin, with paths on the command line too
    proc = subprocess.run(
        [sys.executable, "-m", "bcdr", "backup", "--repo", repo, "--files-from", "-", src / "c"],
        input=f"{src / 'a'}\n",
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    seen = _listed(cli, repo)
    assert "not-listed.bin" in seen and "keep.bin" in seen and "also.bin" not in seen
    missing = cli("backup", "--repo", repo, "--files-from", tmp_path / "nope.txt")
    assert missing.code == 2 and "nope.txt" in missing.err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    none = cli("backup", "--repo", repo, "--files-from", empty)
    assert none.code == 2 and "nothing to back up" in none.err


def test_one_file_system_keeps_mount_points_empty(repo: str, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"local.bin": b"local"})
    mnt = src / "mnt"
    mnt.mkdir()
    with tmpfs(mnt, "1m"):
        (mnt / "other-fs.bin").write_bytes(b"elsewhere")
        r = run_process("backup", "--repo", repo, "--one-file-system", src)
        assert r.code == 0, r.err
        listed = run_process("ls", "--repo", repo, "latest").out
        assert "local.bin" in listed and "mnt" in listed and "other-fs.bin" not in listed
        r = run_process("backup", "--repo", repo, src)
        assert "other-fs.bin" in run_process("ls", "--repo", repo, "latest").out
