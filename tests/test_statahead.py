"""Stats taken ahead on filesystems where each one waits for a server (bcdr/archive/statahead.py):
in the folder's order, errors kept in place, bounded, off on local filesystems; and the walks
that use them (a backup's, a sharded run's plan and commit) over a real FUSE filesystem whose
every stat waits, as a network filesystem's does (tests/slowfs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bcdr.actions.common import open_repo
from bcdr.actions.drill import DrillReport
from bcdr.actions.drill import _files as drill_files
from bcdr.actions.drill import _verify as verify_restored
from bcdr.archive.statahead import AHEAD, StatAhead, slow_metadata
from bcdr.repository.hashing import fingerprint
from bcdr.repository.tree import FILE, Node
from tests.conftest import restored_root, run_process, snapshot_tree, write_tree
from tests.slowfs import counts, reset
from tests.test_shards import _trees

SLOWFS = Path(__file__).resolve().parent / "slowfs.py"


def test_which_filesystems_answer_a_stat_over_the_network() -> None:
    for fstype in ("nfs", "nfs4", "lustre", "beegfs", "cifs", "ceph", "gpfs", "fuse.sshfs"):
        assert slow_metadata(fstype), fstype
    local: list[str | None] = ["ext4", "xfs", "btrfs", "tmpfs", "overlay", None]
    for other in local:
        assert not slow_metadata(other), other


def test_stats_ahead_are_the_stats_in_order_with_each_error_in_its_place(tmp_path: Path) -> None:
    names = [f"f{i:04d}" for i in range(3 * AHEAD + 5)]
    write_tree(tmp_path / "d", {n: n.encode() for n in names if not n.endswith("7")})
    paths = [os.fsencode(tmp_path / "d" / n) for n in names]
    stats = StatAhead("1")
    try:
        for ahead in (False, True):
            got = list(stats.lstats(paths, ahead))
            assert len(got) == len(paths)
            for path, st in zip(paths, got, strict=True):
                if path.endswith(b"7"):
                    assert isinstance(st, FileNotFoundError)
                else:
                    assert not isinstance(st, OSError) and st.st_ino == os.lstat(path).st_ino
        assert stats.taken_ahead == len(paths)
        # a walk that stops early (an error in the folder) leaves nothing running behind it
        walk = stats.lstats(paths, True)
        next(walk)
        walk.close()
    finally:
        stats.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("bcdr-stat")]


def test_local_filesystems_are_walked_one_stat_at_a_time(tmp_path: Path) -> None:
    stats = StatAhead()
    st = os.lstat(tmp_path)
    assert not stats.slow(os.fsencode(tmp_path), st.st_dev)  # the test machine's local disk
    assert StatAhead("1").slow(os.fsencode(tmp_path), st.st_dev)
    assert not StatAhead("0").slow(b"/", st.st_dev)


@contextmanager
def slow_mount(
    source: Path, mnt: Path, delay: float, *, writable: bool = False, rot: str = ""
) -> Iterator[Path]:
    """``source`` seen through tests/slowfs.py at ``mnt`` (``rot``: files whose name starts
    with it read back with their first byte flipped)."""
    mnt.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(SLOWFS), str(source), str(mnt), str(delay)]
        + (["--writable"] if writable else [])
        + (["--rot", rot] if rot else []),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"slowfs did not mount: {proc.communicate()[1]}")
        time.sleep(0.05)
    try:
        yield mnt
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_walks_over_a_slow_filesystem_stat_side_by_side_and_save_the_same_tree(
    tmp_path: Path,
) -> None:
    files = {f"d{d}/f{i:03d}.bin": os.urandom(100 + i) for d in range(2) for i in range(150)}
    files["big.bin"] = os.urandom(3 << 20)
    src = write_tree(tmp_path / "src", files)
    os.symlink("d0/f000.bin", src / "link")
    os.setxattr(src / "d0", "user.team", b"vision")  # a folder's, read with its parent's
    os.setxattr(src / "d1" / "f007.bin", "user.origin", b"s3://bucket/f007")
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    with slow_mount(src, tmp_path / "mnt", 0.004) as mnt:
        # the plan's walk alone: one stat at a time when told not to look ahead
        off = {**os.environ, "BCDR_STAT_AHEAD": "0"}
        reset(mnt)
        r = run_process("shard", "plan", "--repo", repo, "--job", "p", "--shards", 2, mnt, env=off)
        assert r.code == 0, r.err
        calls, most = counts(mnt)
        assert calls >= len(files) and most == 1
        # FUSE is a filesystem whose stats are taken ahead: many wait at once
        reset(mnt)
        r = run_process("shard", "plan", "--repo", repo, "--job", "p", "--shards", 2, mnt)
        assert r.code == 0, r.err
        assert counts(mnt)[1] >= 8
        # a first backup reads every entry's extended attributes: ahead too, where no
        # parent snapshot holds the folder
        for job, shards, env, most_xattrs in (
            ("serial", (), off, 1),
            ("whole", (), None, 8),
            ("sharded", ("--shards", 2), None, 8),
        ):
            reset(mnt)
            r = run_process("backup", "--repo", repo, "--job", job, *shards, mnt, "--json", env=env)
            assert r.code == 0, r.err
            assert r.json()["stats"]["files_new"] == len(files)
            calls, most = counts(mnt, "listxattr")
            assert calls >= len(files), job
            assert most == 1 if most_xattrs == 1 else most >= most_xattrs, (job, most)
        trees = _trees(repo, mnt)  # the folders above hold tmp's changing metadata
        assert trees["whole"] == trees["sharded"] == trees["serial"]
        # a backup's walk (and so a commit's): nothing changed, so nothing is read, only
        # stat'ed; one at a time, or side by side
        for env, expected in ((off, 1), (None, 8)):
            reset(mnt)
            r = run_process("backup", "--repo", repo, "--job", "whole", mnt, "--json", env=env)
            assert r.code == 0, r.err
            assert r.json()["stats"]["files_unchanged"] == len(files)
            calls, most = counts(mnt)
            assert calls >= len(files)
            assert most == 1 if expected == 1 else most >= expected
    out = tmp_path / "out"
    assert (
        run_process("restore", "--repo", repo, "latest", "--job", "whole", "--target", out).code
        == 0
    )
    root = restored_root(out, mnt)
    for name, body in files.items():
        assert (root / name).read_bytes() == body
    assert os.getxattr(root / "d0", "user.team") == b"vision"
    assert os.getxattr(root / "d1" / "f007.bin", "user.origin") == b"s3://bucket/f007"
    assert os.listxattr(root / "d1") == []
    assert os.readlink(root / "link") == "d0/f000.bin"


@pytest.mark.slow
def test_a_sharded_restores_finish_checks_files_side_by_side_on_a_slow_target(
    tmp_path: Path,
) -> None:
    """The finish of a sharded restore checks that every file a part restored is in place:
    on a target whose stats wait (a shared filesystem, where such restores go) it checks each
    folder's files side by side, through one descriptor of the folder; the restore is the
    same either way, and a file no part restored is still named."""
    files = {f"d{d}/f{i:03d}.bin": os.urandom(50 + i) for d in range(2) for i in range(100)}
    src = write_tree(tmp_path / "src", files)
    os.link(src / "d0" / "f001.bin", src / "d1" / "linked.bin")
    os.symlink("f002.bin", src / "d0" / "link")
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    assert run_process("backup", "--repo", repo, src).code == 0
    (tmp_path / "real").mkdir()
    off = {**os.environ, "BCDR_STAT_AHEAD": "0"}
    with slow_mount(tmp_path / "real", tmp_path / "mnt", 0.002, writable=True) as mnt:
        for target, env, expected in (("serial", off, 1), ("ahead", None, 8)):
            out = mnt / target
            for i in range(2):
                r = run_process(
                    "restore", "--repo", repo, "latest", "--target", out, "--part", f"{i}/2"
                )
                assert r.code == 0, r.err
            reset(mnt)
            r = run_process(
                "restore", "--repo", repo, "latest", "--target", out, "--finish", env=env
            )
            assert r.code == 0, r.err
            most = counts(mnt)[1]
            assert most == 1 if expected == 1 else most >= expected, (target, most)
            assert snapshot_tree(restored_root(tmp_path / "real" / target, src)) == snapshot_tree(
                src
            )
        # a file a part should have restored and did not: named by the finish
        gone = restored_root(mnt / "ahead", src) / "d1" / "f050.bin"
        gone.unlink()
        r = run_process("restore", "--repo", repo, "latest", "--target", mnt / "ahead", "--finish")
        assert r.code != 0 and "d1/f050.bin" in r.out + r.err


@pytest.mark.slow
def test_a_restore_onto_a_slow_filesystem_writes_a_batchs_files_side_by_side(
    tmp_path: Path,
) -> None:
    """Onto a target where each create, write and rename waits for a server, each worker
    restores its batch of small files FILES_AHEAD at a time instead of one after another:
    many calls wait at once, and the files, their modes and times are the same."""
    files = {f"d{d}/f{i:03d}.bin": os.urandom(40 + i) for d in range(3) for i in range(80)}
    src = write_tree(tmp_path / "src", files)
    os.chmod(src / "d1" / "f007.bin", 0o640)
    os.link(src / "d0" / "f001.bin", src / "d2" / "linked.bin")
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    assert run_process("backup", "--repo", repo, src).code == 0
    (tmp_path / "real").mkdir()
    off = {**os.environ, "BCDR_STAT_AHEAD": "0"}
    most = {}
    with slow_mount(tmp_path / "real", tmp_path / "mnt", 0.003, writable=True) as mnt:
        for target, env in (("serial", off), ("ahead", None)):
            reset(mnt)
            r = run_process("restore", "--repo", repo, "latest", "--target", mnt / target, env=env)
            assert r.code == 0, r.err
            most[target] = counts(mnt)[1]
            restored = restored_root(tmp_path / "real" / target, src)
            assert snapshot_tree(restored) == snapshot_tree(src)
    # one call at a time per worker process (and the walk's own) against a batch at a time
    assert most["serial"] <= 3 and most["ahead"] >= 8, most


def test_a_drill_reads_its_scratch_back_side_by_side_on_a_slow_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drill reads every restored file back several at once (one at a time with
    BCDR_STAT_AHEAD=0), with the same findings in the same order (a changed file, a missing
    one)."""
    files = {f"d{d}/f{i:03d}.bin": os.urandom(200 + i) for d in range(2) for i in range(16)}
    src = write_tree(tmp_path / "src", files)
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    assert run_process("backup", "--repo", repo, src).code == 0
    (tmp_path / "real").mkdir()
    opened = open_repo(str(repo))
    try:
        opened.load_index()
        [snap] = opened.list_snapshots()
        chosen = drill_files(opened, bytes.fromhex(snap.tree), [])
    finally:
        opened.close()
    with slow_mount(tmp_path / "real", tmp_path / "mnt", 0.002, writable=True) as mnt:
        r = run_process("restore", "--repo", repo, "latest", "--target", mnt / "scratch")
        assert r.code == 0, r.err
        restored = restored_root(tmp_path / "real" / "scratch", src)
        with open(restored / "d0" / "f007.bin", "r+b") as f:  # the disk gave other bytes
            f.write(b"X")
        (restored / "d1" / "f013.bin").unlink()
        reports = []
        for mode, expected in (("0", 1), ("", 4)):
            monkeypatch.setenv("BCDR_STAT_AHEAD", mode)
            report = DrillReport(plan="p", drill="d", kind="backup", job="j", started="now")
            reset(mnt)
            verify_restored(report, str(mnt / "scratch"), chosen, set())
            most = counts(mnt)[1]
            assert most == 1 if expected == 1 else most >= expected, (mode, most)
            reports.append((report.files_verified, report.bytes_verified, report.failures))
    assert reports[0] == reports[1]
    verified, _, failures = reports[1]
    assert verified == len(files) - 2
    assert [(f["path"].split("/src/")[1], f["error"].split(" ")[0]) for f in failures] == [
        ("d0/f007.bin", "digest"),
        ("d1/f013.bin", "not"),
    ]


def test_a_file_that_opens_and_cannot_be_read_back_is_a_finding(tmp_path: Path) -> None:
    """What stands where a restored file should be and cannot be read (here a folder) is
    told for that path, and the drill goes on with the others."""
    (tmp_path / "t" / "sub").mkdir(parents=True)
    (tmp_path / "t" / "ok.bin").write_bytes(b"fine")
    files = {"/sub": b"", "/ok.bin": b"fine"}
    chosen = [
        (os.fsencode(p), Node(os.fsencode(p[1:]), FILE, size=len(b), digest=fingerprint(b)))
        for p, b in files.items()
    ]
    report = DrillReport(plan="p", drill="d", kind="backup", job="j", started="now")
    verify_restored(report, str(tmp_path / "t"), chosen, set())
    assert report.files_verified == 1
    assert report.failures == [{"path": "/sub", "error": "not a regular file"}]
