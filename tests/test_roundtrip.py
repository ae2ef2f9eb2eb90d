"""restore(backup(tree)) == tree, for every kind of entry bcdr promises to keep."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.restore import restore
from bcdr.archive.backup import WORKER_FILE_MAX, Archiver
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.repo import Repository
from bcdr.repository.tree import Node
from bcdr.storage.local import LocalStorage
from tests.conftest import Cli, restored_root, snapshot_tree

SMALL = ChunkerParams(min_size=4096, avg_size=4096, max_size=32768)


def _roundtrip(src: Path, work: Path) -> Path:
    repo = Repository.init(LocalStorage(work / "repo"), password=None, chunker=SMALL)
    result = run_backup(repo, BackupRequest(paths=(str(src),)))
    repo.close()
    assert not result.skipped, result.skipped
    target = work / "restore"
    res = restore(str(work / "repo"), "latest", str(target))
    assert res.ok, res.stats.errors
    return restored_root(target, src)


def test_every_kind_of_entry(tmp_path: Path, cli: Cli) -> None:
    src = tmp_path / "src"
    (src / "dir" / "nested").mkdir(parents=True)
    (src / "dir" / "nested" / "data.bin").write_bytes(os.urandom(300_000))
    (src / "empty").write_bytes(b"")
    (src / "exec.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(src / "exec.sh", 0o751)
    os.symlink("dir/nested/data.bin", src / "link")
    os.symlink("/nonexistent/target", src / "dangling")
    os.link(src / "dir" / "nested" / "data.bin", src / "hardlink")
    (src / os.fsdecode(b"bad-\xff\xfe-utf8")).write_bytes(b"bytes name")
    (src / ("L" * 255)).write_bytes(b"long name")
    with open(src / "sparse", "wb") as f:
        f.truncate(64 * 1024 * 1024)
        f.seek(32 * 1024 * 1024)
        f.write(b"middle")
    os.chown(src / "exec.sh", 1234, 5678)
    deep = src
    for i in range(120):
        deep = deep / f"d{i}"
    deep.mkdir(parents=True)
    (deep / "bottom").write_bytes(b"deep")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    os.mkfifo(src / "fifo")
    os.mknod(src / "null-device", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.utime(src / "dir", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))

    repo = tmp_path / "repo"
    assert cli("init", "--repo", repo, "--chunk-size", "4096,4096,32768").code == 0
    r = cli("backup", "--repo", repo, src)
    assert r.code == 0, r.err
    assert "socket skipped" in r.err and "FIFO skipped" in r.err and "device skipped" in r.err
    sock.close()
    os.unlink(src / "sock")
    os.unlink(src / "fifo")
    os.unlink(src / "null-device")

    target = tmp_path / "out"
    r = cli("restore", "--repo", repo, "latest", "--target", target)
    assert r.code == 0, r.err
    out = restored_root(target, src)
    assert snapshot_tree(out) == snapshot_tree(src)
    assert os.lstat(out / "hardlink").st_ino == os.lstat(out / "dir/nested/data.bin").st_ino
    assert os.lstat(out / "exec.sh").st_uid == 1234 and os.lstat(out / "exec.sh").st_gid == 5678
    assert stat.S_IMODE(os.lstat(out / "exec.sh").st_mode) == 0o751
    # The 64 MiB sparse file comes back sparse: far fewer blocks allocated than its size.
    assert os.stat(out / "sparse").st_blocks * 512 < 1024 * 1024


names = (
    st.binary(min_size=1, max_size=12)
    .map(lambda b: bytes(c for c in b if c not in (0, 47)) or b"x")
    .filter(lambda b: b not in (b".", b".."))
)

entries = st.lists(
    st.tuples(
        st.lists(names, min_size=1, max_size=4),
        st.sampled_from(["file", "empty", "symlink", "hardlink", "dir", "sparse"]),
        st.binary(max_size=40_000),
        st.integers(min_value=0, max_value=2**31),
    ),
    max_size=25,
)


def _build(root: Path, spec: list[tuple[list[bytes], str, bytes, int]]) -> None:
    base = os.fsencode(root)
    os.makedirs(base)
    files: list[bytes] = []
    for parts, kind, data, mtime in spec:
        path = os.path.join(base, *parts)
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, exist_ok=True)
            if os.path.lexists(path):
                continue
            if kind == "dir":
                os.mkdir(path)
            elif kind == "symlink":
                os.symlink(data[:50].replace(b"\0", b"_") or b"t", path)
            elif kind == "hardlink" and files:
                os.link(files[mtime % len(files)], path)
            elif kind == "sparse":
                with open(path, "wb") as f:
                    f.truncate(200_000)
                    f.seek(mtime % 200_000)
                    f.write(data)
                files.append(path)
            else:
                with open(path, "wb") as f:
                    f.write(b"" if kind == "empty" else data)
                files.append(path)
            os.utime(path, ns=(mtime * 1000 + 7, mtime * 1000 + 7), follow_symlinks=False)
        except (NotADirectoryError, FileExistsError, FileNotFoundError):
            continue  # a generated path runs through a file or a dangling link: skip it


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=entries)
def test_restore_of_backup_is_identical(spec: list[tuple[list[bytes], str, bytes, int]]) -> None:
    work = Path(tempfile.mkdtemp(prefix="bcdr-prop-"))
    try:
        src = work / "src"
        _build(src, spec)
        out = _roundtrip(src, work)
        assert snapshot_tree(out) == snapshot_tree(src)
    finally:
        shutil.rmtree(work)


def test_files_above_the_worker_limit_are_read_by_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes read files up to WORKER_FILE_MAX; larger ones are read by the walk
    (their chunks compressed in threads), so a worker never holds a big file whole."""
    src = tmp_path / "src"
    src.mkdir()
    sizes = {"small": 1000, "at-limit": WORKER_FILE_MAX, "above": WORKER_FILE_MAX + 1}
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))
    by_walk: list[bytes] = []
    read_file = Archiver._read_file

    def recording(self: Archiver, path: bytes, node: Node) -> bool:
        by_walk.append(os.path.basename(path))
        return read_file(self, path, node)

    monkeypatch.setattr(Archiver, "_read_file", recording)
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    assert repo.chunker.whole_max > WORKER_FILE_MAX  # the default chunker: the limit decides
    run_backup(repo, BackupRequest(paths=(str(src),)))
    repo.close()
    assert by_walk == [b"above"]
    res = restore(str(tmp_path / "repo"), "latest", str(tmp_path / "out"))
    assert res.ok and snapshot_tree(restored_root(tmp_path / "out", src)) == snapshot_tree(src)


def test_a_small_file_that_grew_before_its_worker_read_it_is_read_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk's lstat said small; by the time a worker opens the file it holds many
    megabytes (a shared host; a shard reads what its plan listed hours before). The worker
    must not read it whole into memory: it says it grew, and the file is read in chunks by
    the walk, backed up whole and unchanged."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a-small").write_bytes(b"small")
    (src / "grows").write_bytes(b"x" * 100)
    grown = os.urandom(3 * WORKER_FILE_MAX)
    lstat = os.lstat

    def growing_lstat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        st = lstat(path, *args, **kwargs)  # type: ignore[arg-type]
        if os.fsdecode(path).endswith("grows") and st.st_size == 100:  # type: ignore[arg-type]
            (src / "grows").write_bytes(grown)  # right after the walk saw it small
        return st

    read_file = Archiver._read_file
    by_walk: list[bytes] = []

    def recording(self: Archiver, path: bytes, node: Node, *, inline: bool = False) -> bool:
        by_walk.append(os.path.basename(path))
        return read_file(self, path, node, inline=inline)

    monkeypatch.setattr(os, "lstat", growing_lstat)
    monkeypatch.setattr(Archiver, "_read_file", recording)
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    result = run_backup(repo, BackupRequest(paths=(str(src),)))
    repo.close()
    monkeypatch.undo()
    assert by_walk == [b"grows"] and not result.skipped
    res = restore(str(tmp_path / "repo"), "latest", str(tmp_path / "out"))
    assert res.ok, res.stats.errors
    assert (restored_root(tmp_path / "out", src) / "grows").read_bytes() == grown


def test_folders_nested_deeper_than_the_recursion_limit(
    tmp_path: Path,
    cli: Cli,
    request: pytest.FixtureRequest,
) -> None:
    # ls walked a snapshot's trees by recursion: 1,100 nested folders failed it with a
    # RecursionError (backup and restore raise the limit for their own recursion)
    import json
    import sys

    depth = sys.getrecursionlimit() + 100
    request.addfinalizer(lambda: _remove_deep(tmp_path))  # pytest's cleanup would recurse
    src = tmp_path / "src"
    folder = src
    src.mkdir()
    for _ in range(depth):  # one by one: mkdir(parents=True) recurses too
        folder = folder / "d"
        folder.mkdir()
    (folder / "leaf").write_bytes(b"deep")
    repo = tmp_path / "repo"
    assert cli("init", "--repo", repo).code == 0
    assert cli("backup", "--repo", repo, src).code == 0
    r = cli("ls", "--repo", repo, "latest", "--json")
    assert r.code == 0, r.err
    paths = [e["path"] for e in json.loads(r.out)["entries"]]
    assert len(paths) >= depth + 1 and paths[-1] == str(folder / "leaf"), paths[-1][-80:]
    r = cli("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    assert r.code == 0, r.err
    leaf = restored_root(tmp_path / "out", src).joinpath(*["d"] * depth, "leaf")
    assert leaf.read_bytes() == b"deep"


def _remove_deep(top: Path) -> None:
    """Remove a folder however deep, without recursion (shutil.rmtree recurses per level)."""
    path = str(top)
    while os.path.lexists(top):
        entries = list(os.scandir(path))
        folders = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        if folders:
            path = folders[0]
            continue
        for e in entries:
            os.unlink(e.path)
        os.rmdir(path)
        path = os.path.dirname(path)


def test_a_file_swapped_for_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    """Between the walk's lstat and the open a file can become a FIFO (a shared host, or a
    sharded run's shard that reads what its plan listed): opening it must not wait for a
    writer that never comes. A regular file comes back with its stat, read blocking."""
    from bcdr.archive.backup import _open_source

    os.mkfifo(tmp_path / "fifo")
    assert _open_source(os.fsencode(tmp_path / "fifo")) == "no longer a regular file"
    (tmp_path / "file").write_bytes(b"bytes")
    opened = _open_source(os.fsencode(tmp_path / "file"))
    assert not isinstance(opened, str)
    fd, st = opened
    try:
        assert os.get_blocking(fd) and st.st_size == 5 and stat.S_ISREG(st.st_mode)
    finally:
        os.close(fd)
    os.symlink("file", tmp_path / "link")
    assert str(_open_source(os.fsencode(tmp_path / "link"))).startswith("cannot open")
