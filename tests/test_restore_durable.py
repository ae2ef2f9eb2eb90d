"""A restore's bytes are on the disk when it says so: it flushes the target's filesystem at
the end (``syncfs``), and while it writes onto a local disk (bcdr/archive/filewrite.py's
Flusher); a write the disk fails, which the page cache would hide from everyone, fails the
restore. Run on a real ext4 over a loop device (root, as CI runs)."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bcdr.archive import readback
from bcdr.archive.filerestore import file_digest
from bcdr.archive.filewrite import Flusher
from bcdr.repository.tree import FILE, Node
from tests.conftest import Result, restored_root, run_process, snapshot_tree, tmpfs, write_tree


@contextmanager
def ext4_disk(base: Path, *, failing: bool = False) -> Iterator[Path]:
    """A 64 MiB ext4 on a loop device, its image in a tmpfs of its own, mounted at
    ``base/mnt``. ``failing``: every block mkfs left free is a hole in the image and the
    tmpfs is full, so the disk fails each write to a block never written before, as a dying
    disk does; the blocks mkfs wrote (the journal among them) still take writes."""
    back, mnt = base / "back", base / "mnt"
    mnt.mkdir(parents=True)
    with tmpfs(back, "80m"):
        img = back / "img"
        img.write_bytes(bytes(64 << 20))
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "nodiscard", img], check=True)
        if failing:
            info = subprocess.run(["dumpe2fs", img], capture_output=True, text=True, check=True)
            for line in info.stdout.splitlines():
                ranges = line.strip().removeprefix("Free blocks: ")
                if line.strip().startswith("Free blocks: ") and ranges:
                    for r in ranges.split(", "):
                        first, _, last = r.partition("-")
                        start, end = int(first), int(last or first)
                        subprocess.run(
                            [
                                "fallocate",
                                "-p",
                                "-o",
                                str(start * 4096),
                                "-l",
                                str((end - start + 1) * 4096),
                                img,
                            ],
                            check=True,
                        )
        loop = subprocess.run(
            ["losetup", "--find", "--show", img], capture_output=True, text=True, check=True
        ).stdout.strip()
        try:
            subprocess.run(["mount", loop, mnt], check=True)
            try:
                if failing:
                    with open(back / "fill", "wb") as f:
                        try:
                            while True:
                                f.write(bytes(1 << 20))
                                f.flush()
                        except OSError as exc:
                            assert exc.errno == errno.ENOSPC
                yield mnt
            finally:
                subprocess.run(["umount", mnt], check=True)
        finally:
            subprocess.run(["losetup", "-d", loop], check=True)


def _backup(tmp_path: Path, files: int) -> tuple[Path, Path]:
    rng = random.Random(files)
    src = write_tree(
        tmp_path / "src",
        {f"d{i % 7}/f{i:04d}.bin": rng.randbytes(rng.randint(1, 20_000)) for i in range(files)},
    )
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    assert run_process("backup", "--repo", repo, src).code == 0
    return src, repo


def _restore(repo: Path, target: Path, every: str, *more: str) -> Result:
    """``bcdr restore`` of the latest snapshot with ``BCDR_FLUSH_EVERY=every``."""
    env = {"BCDR_FLUSH_EVERY": every}
    return run_process("restore", "--repo", repo, "latest", "--target", target, *more, env=env)


def test_a_restore_onto_a_disk_that_fails_writes_fails(tmp_path: Path) -> None:
    """Every file is created, written into the page cache, verified and named without an
    error; the disk fails the writes after. The restore must not say it restored them."""
    _, repo = _backup(tmp_path, 40)
    with ext4_disk(tmp_path / "disk", failing=True) as mnt:
        target = mnt / "out"
        r = _restore(repo, target, "0")  # one flush, at the end
    assert r.code == 1, r.err
    assert f"error: {target}: the disk failed a write of this restore (Input/output error)" in r.err
    assert "the disk failed a write: what is on it may differ" in r.err
    assert "nothing wrong was written" not in r.err
    assert "Traceback" not in r.err


def test_a_failed_write_met_while_flushing_is_told_at_the_end(tmp_path: Path) -> None:
    """The kernel tells a failed write to one flush of an open file: the flush that met it
    while files were still being written keeps it for the end, whose own flush then
    succeeds. A restore whose flushes meet the failure early fails too."""
    with ext4_disk(tmp_path / "disk", failing=True) as mnt:
        flusher = Flusher(os.fsencode(mnt), 0.001)
        (mnt / "file").write_bytes(random.randbytes(100_000))
        time.sleep(1)  # about a thousand flushes
        with pytest.raises(OSError) as failed:
            flusher.finish()
        assert failed.value.errno == errno.EIO
    _, repo = _backup(tmp_path, 400)
    with ext4_disk(tmp_path / "disk2", failing=True) as mnt:
        r = _restore(repo, mnt / "out", "0.001", "--json")
    assert r.code == 1, r.err
    doc = r.json()
    assert doc["sync_failed"] is True
    assert any("the disk failed a write" in e["error"] for e in doc["errors"])


def test_a_restore_is_on_the_disk_when_it_ends(tmp_path: Path) -> None:
    """The last thing a restore does is flush the target's filesystem, after every file has
    its name and every folder its times; on a local disk it also flushes while it writes
    (BCDR_FLUSH_EVERY seconds apart), 0 flushing only at the end."""
    src, repo = _backup(tmp_path, 400)
    traced = "syncfs,linkat,renameat,renameat2,utimensat"
    with ext4_disk(tmp_path / "disk") as mnt:
        for every in ("0", "0.001"):
            log, target = tmp_path / f"strace-{every}", mnt / f"out-{every}"
            proc = subprocess.run(
                [
                    "strace",
                    "-f",
                    "-qq",
                    "-e",
                    f"trace={traced}",
                    "-e",
                    "signal=none",
                    "-o",
                    log,
                    sys.executable,
                    "-m",
                    "bcdr",
                    "restore",
                    "--repo",
                    repo,
                    "latest",
                    "--target",
                    target,
                    "--json",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "BCDR_FLUSH_EVERY": every},
                timeout=120,
            )
            assert proc.returncode == 0, proc.stderr
            stats = json.loads(proc.stdout)
            assert stats["sync_failed"] is False and stats["synced_s"] is not None
            calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()]
            syncs = [c for c in calls if c.startswith("syncfs(")]
            assert calls[-1].startswith("syncfs(") and calls[-1].endswith("= 0"), calls[-3:]
            assert not [c for c in calls if "syncfs" in c and "= -1" in c]
            if every == "0":
                assert len(syncs) == 1
            else:
                assert len(syncs) >= 2, calls
            assert snapshot_tree(restored_root(target, src)) == snapshot_tree(src)


def test_a_bad_flush_interval_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    _, repo = _backup(tmp_path, 3)
    target = tmp_path / "out"
    r = _restore(repo, target, "soon")
    assert r.code != 0
    assert "BCDR_FLUSH_EVERY='soon' is not a number of seconds between 0 and 3600" in r.err
    assert "Traceback" not in r.err
    assert not any(target.rglob("*.bin"))


def test_a_file_is_read_back_from_the_disk_not_from_the_page_cache(tmp_path: Path) -> None:
    """What a drill and ``restore --verify`` read back is what the disk holds: a block the
    disk changed under a file whose pages are still in memory is found, where reading the
    page cache would find the bytes that were written."""
    data = random.Random(7).randbytes(64 * 1024)
    with ext4_disk(tmp_path / "disk") as mnt:
        path = mnt / "f.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = os.open(path, os.O_RDONLY)
        node = Node(name=b"f.bin", type=FILE, size=len(data), digest=file_digest(fd, len(data)))
        os.close(fd)
        assert readback.finding(node, readback.read_path((os.fsencode(path), node))) is None
        # the disk changes one block of the file under the filesystem (its image, as the loop
        # device reads it), while the file's pages stay in memory
        extents = subprocess.run(
            ["filefrag", "-v", "-b4096", path], capture_output=True, text=True, check=True
        ).stdout
        first = next(line for line in extents.splitlines() if line.strip().startswith("0:"))
        physical = int(first.split(":")[2].split("..")[0])
        with open(tmp_path / "disk" / "back" / "img", "r+b") as img:
            img.seek(physical * 4096)
            img.write(b"\xff" * 4096)
        assert path.read_bytes() == data  # the page cache still has what was written
        found = readback.finding(node, readback.read_path((os.fsencode(path), node)))
        assert found is not None and found.startswith("digest "), found
        assert path.read_bytes()[:4096] == b"\xff" * 4096  # read from the disk since


def test_a_verified_restore_reads_back_after_a_flush(tmp_path: Path) -> None:
    """``restore --verify`` flushes the target before it reads the files back, and drops each
    file's cached pages before reading it; the restore still ends with a flush."""
    src, repo = _backup(tmp_path, 60)
    with ext4_disk(tmp_path / "disk") as mnt:
        log, target = tmp_path / "strace", mnt / "out"
        proc = subprocess.run(
            [
                *("strace", "-f", "-qq", "-e", "trace=syncfs,fadvise64", "-e", "signal=none"),
                *("-o", log, sys.executable, "-m", "bcdr", "restore", "--repo", repo),
                *("latest", "--target", target, "--verify", "--json"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "BCDR_FLUSH_EVERY": "0"},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        stats = json.loads(proc.stdout)
        assert stats["files_read_back"] == 60 and stats["sync_failed"] is False
        calls = [line.split(None, 1)[1] for line in log.read_text().splitlines()]
        drops = [i for i, c in enumerate(calls) if "POSIX_FADV_DONTNEED" in c]
        syncs = [i for i, c in enumerate(calls) if c.startswith("syncfs(") and c.endswith("= 0")]
        assert len(drops) == 60, calls
        assert len(syncs) == 2 and syncs[0] < drops[0] and syncs[1] == len(calls) - 1, calls
        assert snapshot_tree(restored_root(target, src)) == snapshot_tree(src)
