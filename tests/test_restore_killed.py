"""A restore killed at any moment leaves no file at its final name with other bytes than the
snapshot's, and the next restore into the same target finishes the job and removes every
temporary file its predecessor left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcdr.archive.filerestore import TEMP_PREFIX
from tests.conftest import init_small, restored_root, run_process, snapshot_tree, write_tree


def _temps(target: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, _, names in os.walk(target)
        for n in names
        if n.encode().startswith(TEMP_PREFIX)
    ]


@pytest.mark.slow
def test_a_killed_restore_leaves_only_whole_files_and_the_next_one_finishes(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    init_small(repo, "16384,65536,262144", 4 * 2**20)
    rng = random.Random(5)
    files = {f"small/{i // 100}/f{i}": rng.randbytes(rng.randrange(1, 9000)) for i in range(1500)}
    files.update({f"big/b{i}": rng.randbytes(12 * 2**20) for i in range(4)})
    src = write_tree(tmp_path / "src", files)
    assert run_process("backup", "--repo", repo, src).code == 0
    started = time.monotonic()  # how long a whole restore takes, process start included
    assert run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "t").code == 0
    whole = time.monotonic() - started
    killed_mid_way = 0
    for n, share in enumerate(i / 20 for i in range(3, 20)):
        if killed_mid_way >= 3:
            break
        delay = whole * share
        target = tmp_path / f"out{n}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bcdr",
                "restore",
                "--repo",
                str(repo),
                "latest",
                "--target",
                str(target),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        root = restored_root(target, src)
        present = [
            p
            for p in (root.rglob("*") if root.exists() else [])
            if p.is_file() and not p.name.encode().startswith(TEMP_PREFIX)
        ]
        for path in present:  # every file at its final name is whole and right
            assert path.read_bytes() == files[str(path.relative_to(root))], path
        if 0 < len(present) < len(files):
            killed_mid_way += 1
        # the next restore into the same target finishes it and leaves no temporary file
        r = run_process("restore", "--repo", repo, "latest", "--target", target, "--overwrite")
        assert r.code == 0, r.err
        assert snapshot_tree(root) == snapshot_tree(src)
        assert _temps(target) == []
    assert killed_mid_way >= 1  # at least one kill fell in the middle (timing varies)
