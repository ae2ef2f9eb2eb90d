"""Sharded restores (``bcdr restore --shards N``, ``--part I/N``, ``--finish``): the parts
write disjoint files into one target, the finish makes the links and folder metadata; the
result is the plain restore's for any N; a part that did not run is named by the finish and
run again on its own."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import restored_root, run_process, snapshot_tree
from tests.test_shards import _init, _source


def _backup(tmp_path: Path, seed: int = 1) -> tuple[Path, Path]:
    src = _source(tmp_path, seed)
    os.chmod(src / "data", 0o750)
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "f").write_bytes(b"x" * 3000)
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("backup", "--repo", repo, "--job", "j", src)
    assert r.code == 0, r.err
    return src, repo


def test_any_number_of_parts_restores_the_snapshot(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path)
    plain = tmp_path / "plain"
    assert run_process("restore", "--repo", repo, "latest", "--target", plain).code == 0
    want = snapshot_tree(restored_root(plain, src))
    assert want == snapshot_tree(src)
    for n in (1, 2, 3, 5):
        out = tmp_path / f"out{n}"
        r = run_process(
            "restore", "--repo", repo, "latest", "--target", out, "--shards", n, "--json"
        )
        assert r.code == 0, r.out + r.err
        doc = r.json()
        assert doc["ok"] and len(doc["parts"]) == n and doc["failed"] == []
        # every regular file written once, by one part (a hardlink's other name: linked)
        files = {f.stat().st_ino for f in src.rglob("*") if f.is_file() and not f.is_symlink()}
        assert sum(p["files"] for p in doc["parts"]) == len(files)
        assert doc["finish"]["hardlinks"] == 1 and doc["finish"]["symlinks"] == 1
        assert snapshot_tree(restored_root(out, src)) == want, n


def test_a_part_that_did_not_run_is_named_and_run_again(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path, seed=2)
    r = run_process("snapshots", "--repo", repo, "--json")
    snap = r.json()[0]["id"]
    out = tmp_path / "out"
    for i in (0, 2):
        r = run_process("restore", "--repo", repo, snap, "--target", out, "--part", f"{i}/3")
        assert r.code == 0, r.err
    r = run_process("restore", "--repo", repo, snap, "--target", out, "--finish", "--json")
    assert r.code == 1
    missing = [e for e in r.json()["errors"] if "did not finish" in e["error"]]
    assert missing and all(e["path"].startswith(str(src)) for e in missing)
    r = run_process("restore", "--repo", repo, snap, "--target", out, "--part", "1/3")
    assert r.code == 0, r.err
    r = run_process("restore", "--repo", repo, snap, "--target", out, "--finish")
    assert r.code == 0, r.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    # a part run again rewrites its files in place, and the finish again changes nothing
    r = run_process("restore", "--repo", repo, snap, "--target", out, "--part", "1/3")
    assert r.code == 0, r.err
    r = run_process("restore", "--repo", repo, snap, "--target", out, "--finish")
    assert r.code == 0, r.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_a_failed_part_fails_the_restore_with_the_commands_to_finish(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path, seed=3)
    out = tmp_path / "out"
    # a file where a folder of the snapshot goes: the part that writes there fails
    inside = restored_root(out, src)
    inside.parent.mkdir(parents=True)
    inside.mkdir()
    (inside / "ckpt").mkdir()
    (inside / "ckpt" / "model.bin").mkdir()  # a folder where a file goes
    r = run_process(
        "restore", "--repo", repo, "latest", "--target", out, "--shards", 2, "--overwrite"
    )
    assert r.code == 1
    assert "part(s) failed" in r.err and "--finish" in r.err and "--part " in r.err
    assert "Traceback" not in r.err


def test_sharded_restore_usage_errors(tmp_path: Path) -> None:
    _, repo = _backup(tmp_path, seed=4)
    out = tmp_path / "out"
    for args, said in (
        (["--part", "3/3"], "I must be from 0 to N-1"),
        (["--part", "x"], "is not I/N"),
        (["--shards", 2, "--part", "0/2"], "drop --part"),
        (["--part", "0/2", "--finish"], "separate steps"),
        (["--shards", 2, "--wait"], "--wait goes with --executor slurm"),
        (["--wait"], "go with --shards"),
        (["--shards", 0], "--shards must be from 1"),
    ):
        r = run_process("restore", "--repo", repo, "latest", "--target", out, *args)
        assert r.code == 2 and said in r.err and "Traceback" not in r.err, (args, r.err)
    # the target is checked before anything starts: not empty, not without --overwrite
    out.mkdir()
    (out / "x").write_text("there")
    r = run_process("restore", "--repo", repo, "latest", "--target", out, "--shards", 2)
    assert r.code == 2 and "not empty" in r.err
