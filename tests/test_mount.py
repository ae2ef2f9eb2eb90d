"""``bcdr mount``: snapshots as a read-only FUSE filesystem, through the real libfuse and the
kernel's FUSE (issue 35). Bytes, names and metadata as backed up; read-only, nosuid, nodev;
hostile names left out; damaged chunks give EIO, never wrong bytes; the read lock is held while
mounted and released when SIGTERM or Ctrl-C unmounts."""

from __future__ import annotations

import errno
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bcdr.repository.tree import SYMLINK, Node
from tests.conftest import run_process, write_tree
from tests.test_restore_hostile import _file, _snapshot, _tree


@contextmanager
def mounted(repo: Path | str, mnt: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcdr", "mount", "--repo", str(repo), str(mnt), *extra],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if "mounted read-only" not in line:
        proc.kill()
        pytest.fail(f"bcdr mount did not mount: {line}{proc.stderr.read()}")
    deadline = time.monotonic() + 20
    while not os.path.ismount(mnt):
        assert time.monotonic() < deadline, "the mount never appeared"
        time.sleep(0.05)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
                proc.kill()
                raise


def _tree_of(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            body: object = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                body = Path(full).read_bytes()
            perms = stat.S_IMODE(st.st_mode) & ~0o222
            size = st.st_size if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(full, root)] = (stat.S_IFMT(st.st_mode), perms, size, body)
    return out


def test_snapshots_read_back_as_backed_up_and_nothing_can_be_written(
    tmp_path: Path, repo: str
) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "ckpt/model.bin": os.urandom(3_000_000),  # many chunks
            "ckpt/config.json": b'{"lr": 0.1}',
            "data/shard 01 é.txt": b"x" * 7000,
            "empty": b"",
        },
    )
    (src / "ckpt" / "latest").symlink_to("model.bin")
    os.chmod(src / "ckpt" / "config.json", 0o4750)  # a setuid bit: shown, never working
    assert run_process("backup", "--repo", repo, src, "--job", "ckpt").code == 0
    (src / "data" / "new.txt").write_bytes(b"second")
    assert run_process("backup", "--repo", repo, src, "--job", "ckpt").code == 0
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    mnt = tmp_path / "mnt"
    with mounted(repo, mnt):
        assert sorted(os.listdir(mnt)) == ["ids", "jobs", "latest", "snapshots"]
        assert sorted(os.listdir(mnt / "ids")) == sorted(s["id"][:8] for s in snaps)
        assert len(os.listdir(mnt / "snapshots")) == 2
        assert "latest" in os.listdir(mnt / "jobs" / "ckpt")
        latest = mnt / "latest" / str(src).lstrip("/")
        assert _tree_of(latest) == _tree_of(src)
        first = sorted(snaps, key=lambda s: s["time"])[0]["id"][:8]
        assert not (mnt / "ids" / first / str(src).lstrip("/") / "data" / "new.txt").exists()
        # a byte range in the middle of a large file, as a program seeking in it reads
        with open(latest / "ckpt" / "model.bin", "rb") as f:
            f.seek(1_234_567)
            assert f.read(100_000) == (src / "ckpt" / "model.bin").read_bytes()[1_234_567:1_334_567]
        assert (
            os.stat(latest / "ckpt" / "model.bin").st_mtime_ns
            == os.stat(src / "ckpt" / "model.bin").st_mtime_ns
        )
        for attempt in (
            lambda: (latest / "new").write_bytes(b"x"),
            lambda: open(latest / "ckpt" / "config.json", "r+b"),
            lambda: os.unlink(latest / "empty"),
            lambda: os.mkdir(latest / "d"),
        ):
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
        options = [
            m.split()[3]
            for m in Path("/proc/mounts").read_text().splitlines()
            if m.split()[1] == str(mnt)
        ][0].split(",")
        assert {"ro", "nosuid", "nodev"} <= set(options)
        # the read lock keeps a prune away while mounted
        assert list((Path(repo) / "locks").iterdir())
    assert not os.path.ismount(mnt)
    assert list((Path(repo) / "locks").iterdir()) == []  # released on SIGTERM


def test_ctrl_c_unmounts_cleanly(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"a"})
    assert run_process("backup", "--repo", repo, src).code == 0
    mnt = tmp_path / "mnt"
    with mounted(repo, mnt) as proc:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "unmounted" in proc.stderr.read()
    assert not os.path.ismount(mnt)


def test_a_hostile_tree_reads_as_an_error_and_the_rest_stays_browsable(tmp_path: Path) -> None:
    repo = tmp_path / "repo"

    def hostile(r: Any) -> bytes:
        return _tree(r, [_file(r, b"good", b"fine"), _file(r, b"..", b"up")])

    def fine(r: Any) -> bytes:
        return _tree(
            r, [_file(r, b"good", b"fine"), Node(b"out", SYMLINK, 0o777, target=b"/etc/passwd")]
        )

    bad_id, good_id = _snapshot(repo, hostile), _snapshot(repo, fine)
    mnt = tmp_path / "mnt"
    with mounted(repo, mnt) as proc:
        with pytest.raises(OSError) as caught:
            os.listdir(mnt / "ids" / bad_id[:8] / "src")
        assert caught.value.errno == errno.EIO
        root = mnt / "ids" / good_id[:8] / "src"
        assert sorted(os.listdir(root)) == ["good", "out"]
        assert (root / "good").read_bytes() == b"fine"
        assert os.readlink(root / "out") == "/etc/passwd"  # shown as stored, followed by no one
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert "not a name a folder can hold" in err, err


def test_a_damaged_chunk_reads_as_an_error_never_as_wrong_bytes(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"big.bin": os.urandom(2_000_000), "small": b"ok"})
    assert run_process("backup", "--repo", repo, src).code == 0
    packs = sorted((Path(repo) / "data").rglob("*"), key=lambda p: p.stat().st_size)
    biggest = [p for p in packs if p.is_file()][-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 3] ^= 0xFF
    biggest.write_bytes(bytes(data))
    mnt = tmp_path / "mnt"
    with mounted(repo, mnt):
        root = mnt / "latest" / str(src).lstrip("/")
        with pytest.raises(OSError) as caught:
            (root / "big.bin").read_bytes()
        assert caught.value.errno == errno.EIO
        assert (root / "small").read_bytes() == b"ok"


def test_a_mount_point_in_use_or_missing_is_a_clear_error(tmp_path: Path, repo: str) -> None:
    busy = write_tree(tmp_path / "busy", {"x": b"1"})
    r = run_process("mount", "--repo", repo, busy)
    assert r.code == 2 and "the folder is not empty" in r.err and "Traceback" not in r.err
    r = run_process("mount", "--repo", repo, tmp_path / "nowhere")
    assert r.code == 2 and "not a folder" in r.err
