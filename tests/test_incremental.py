"""Incremental backups: unchanged files are not read; the parent is the job's newest snapshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcdr.actions.backup import BackupRequest, backup
from tests.conftest import Cli, write_tree


def test_unchanged_files_are_not_read(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {f"f{i}": os.urandom(10_000) for i in range(20)})
    req = BackupRequest(paths=(str(src),), job="ckpt")
    first = backup(repo, req)
    assert first.stats.files_new == 20 and first.stats.bytes_read == 200_000

    second = backup(repo, req)
    assert second.snapshot.parent == first.snapshot.id
    assert second.stats.files_unchanged == 20 and second.stats.bytes_read == 0
    assert second.stats.bytes_added == 0
    assert second.snapshot.tree == first.snapshot.tree  # nothing changed: same root tree

    (src / "f3").write_bytes(os.urandom(10_000))
    third = backup(repo, req)
    assert third.stats.files_changed == 1 and third.stats.files_unchanged == 19
    assert third.stats.bytes_read == 10_000

    forced = backup(repo, BackupRequest(paths=(str(src),), job="ckpt", force_read=True))
    assert forced.stats.bytes_read == 200_000 and forced.stats.bytes_added < 2_000


def test_touch_without_content_change_is_reread_but_costs_nothing(
    tmp_path: Path, repo: str
) -> None:
    src = write_tree(tmp_path / "src", {"a": b"x" * 50_000})
    req = BackupRequest(paths=(str(src),), job="j")
    backup(repo, req)
    os.utime(src / "a", ns=(1, 1))
    r = backup(repo, req)
    assert r.stats.files_changed == 1 and r.stats.bytes_read == 50_000
    # Only the trees on the path to the file changed: one per path component, no data blob.
    assert r.stats.blobs_added == len(src.parts)  # "/" counts: the root tree
    assert r.stats.bytes_added < 2_000


def test_parent_is_per_job(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1" * 1000})
    a1 = backup(repo, BackupRequest(paths=(str(src),), job="a"))
    b1 = backup(repo, BackupRequest(paths=(str(src),), job="b"))
    assert b1.snapshot.parent is None and b1.stats.bytes_read == 1000
    a2 = backup(repo, BackupRequest(paths=(str(src),), job="a"))
    assert a2.snapshot.parent == a1.snapshot.id


def test_excludes(tmp_path: Path, repo: str, cli: Cli) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "keep.bin": b"k",
            "skip.tmp": b"t",
            "sub/.cache/x": b"c",
            "sub/keep": b"k2",
        },
    )
    r = cli("backup", "--repo", repo, "--exclude", "*.tmp", "--exclude", "**/.cache/**", src)
    assert r.code == 0, r.err
    r = cli("ls", "--repo", repo, "latest", "--json")
    paths = {e["path"].removeprefix(str(src)) for e in r.json()["entries"]}
    assert {"/keep.bin", "/sub/keep"} <= paths
    assert "/skip.tmp" not in paths and "/sub/.cache/x" not in paths


def test_no_change_reuses_the_parents_folder_trees_without_encoding_them(
    tmp_path: Path, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {f"d{d}/f{i}.txt": os.urandom(100) for d in range(30) for i in range(20)}
    src = write_tree(tmp_path / "src", files)
    os.link(src / "d0" / "f0.txt", src / "d0" / "hard")  # files with a second name: d0
    os.symlink("f1.txt", src / "d1" / "link")  # and a symlink: d1
    req = BackupRequest(paths=(str(src),), job="small")
    first = backup(repo, req)
    import bcdr.archive.backup as archive
    from bcdr.repository.tree import Node, encode_tree

    encoded: list[int] = []

    def counting(nodes: list[Node]) -> bytes:
        encoded.append(len(nodes))
        return encode_tree(nodes)

    monkeypatch.setattr(archive, "encode_tree", counting)
    second = backup(repo, req)
    assert second.snapshot.tree == first.snapshot.tree
    # only the levels above the backed-up folder (built from the path, not read) are encoded;
    # the folder and its 30 subfolders keep the parent's trees
    assert len(encoded) == len(src.parts) - 1, encoded

    (src / "d7" / "f3.txt").write_bytes(b"changed")
    encoded.clear()
    third = backup(repo, req)
    assert third.stats.files_changed == 1
    # d7 and the folders above it are new trees; the 29 other subfolders are reused
    assert len(encoded) == len(src.parts) - 1 + 2, encoded
    assert third.snapshot.tree != first.snapshot.tree


def test_metadata_change_reaches_the_next_snapshot(tmp_path: Path, repo: str) -> None:
    """The no-change path reuses the parent's node only when every recorded field is equal:
    a new mode or a new hard link must reach the next snapshot."""
    from bcdr.actions.restore import restore
    from tests.conftest import restored_root, snapshot_tree

    src = write_tree(tmp_path / "src", {"a": os.urandom(5000), "b": os.urandom(5000)})
    req = BackupRequest(paths=(str(src),), job="meta")
    first = backup(repo, req)
    os.chmod(src / "a", 0o600)
    os.link(src / "b", src / "b-link")
    second = backup(repo, req)
    assert second.snapshot.tree != first.snapshot.tree
    # ctime moved, so a and b are read again (b-link is b's content, met second)
    assert second.stats.files_changed == 2 and second.stats.bytes_read == 10_000
    restore(repo, "latest", str(tmp_path / "out"))
    out = restored_root(tmp_path / "out", src)
    assert snapshot_tree(out) == snapshot_tree(src)
    assert os.stat(out / "b").st_ino == os.stat(out / "b-link").st_ino


def test_a_file_backed_up_by_its_own_path_keeps_its_content_when_unchanged(
    tmp_path: Path, repo: str
) -> None:
    from bcdr.actions.restore import restore

    data = os.urandom(30_000)
    src = write_tree(tmp_path / "src", {"model.bin": data, "other": b"not backed up"})
    req = BackupRequest(paths=(str(src / "model.bin"),), job="one-file")
    first = backup(repo, req)
    second = backup(repo, req)
    assert second.stats.files_unchanged == 1 and second.stats.bytes_read == 0
    assert second.snapshot.tree == first.snapshot.tree
    restore(repo, "latest", str(tmp_path / "out"))
    assert (tmp_path / "out" / str(src / "model.bin").lstrip("/")).read_bytes() == data


def test_a_repository_inside_the_backed_up_folder_is_not_backed_up_into_itself(
    tmp_path: Path,
) -> None:
    # it was: every backup stored the packs the one before had written, as new data
    from tests.conftest import run_process

    src = write_tree(tmp_path / "src", {"model.bin": os.urandom(200_000)})
    repo = src / "backups"
    assert run_process("init", "--repo", repo).code == 0
    first = run_process("backup", "--repo", repo, "--json", src)
    assert first.code == 0, first.err
    warned = {(w["path"], w["reason"]) for w in first.json()["warnings"]}
    assert (str(repo), "the repository itself: not backed up into itself") in warned
    paths = [
        e["path"] for e in run_process("ls", "--repo", repo, "latest", "--json").json()["entries"]
    ]
    assert str(src / "model.bin") in paths and not [p for p in paths if p.startswith(str(repo))]
    second = run_process("backup", "--repo", repo, "--json", src)
    assert second.code == 0 and second.json()["stats"]["bytes_added"] < 5_000
