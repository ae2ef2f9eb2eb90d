"""restore --include, ls PATH, and snapshot references (id, prefix, latest per job)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import restored_root, run_process, write_tree


def test_include_restores_only_matching_paths(tmp_path: Path, repo: str) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "ckpt/step-100.bin": b"100",
            "ckpt/step-200.bin": b"200",
            "data/shard.jsonl": b"{}",
        },
    )
    assert run_process("backup", "--repo", repo, src).code == 0
    out = tmp_path / "out"
    r = run_process(
        "restore",
        "--repo",
        repo,
        "latest",
        "--target",
        out,
        "--include",
        "step-200*",
        "--include",
        str(src / "data"),
    )
    assert r.code == 0, r.err
    root = restored_root(out, src)
    assert (root / "ckpt/step-200.bin").read_bytes() == b"200"
    assert (root / "data/shard.jsonl").read_bytes() == b"{}"
    assert not (root / "ckpt/step-100.bin").exists()
    # a pattern that matches nothing is a mistake, not an empty success
    empty = tmp_path / "empty"
    miss = run_process(
        "restore", "--repo", repo, "latest", "--target", empty, "--include", "/nowhere/*"
    )
    assert miss.code == 1, miss.err
    assert "--include /nowhere/* matched nothing" in miss.err
    assert "nothing was restored" in miss.err and "bcdr ls" in miss.err
    assert not empty.exists() or not any(empty.iterdir())


def test_ls_path_and_snapshot_references(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a/x": b"1", "b/y": b"22"})
    assert run_process("backup", "--repo", repo, "--job", "one", src).code == 0
    (src / "b/y").write_bytes(b"333")
    assert run_process("backup", "--repo", repo, "--job", "two", src).code == 0
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    assert isinstance(snaps, list) and len(snaps) == 2
    first = snaps[0]["id"]

    r = run_process("ls", "--repo", repo, first[:8], str(src / "b"), "--json")
    entries = r.json()["entries"]
    assert [(e["path"], e["size"]) for e in entries] == [(str(src / "b"), 0), (str(src / "b/y"), 2)]
    r = run_process("ls", "--repo", repo, "latest", "--job", "one", str(src / "b/y"), "--json")
    assert r.json()["entries"][0]["size"] == 2
    r = run_process("ls", "--repo", repo, "latest", "--job", "two", str(src / "b/y"), "--json")
    assert r.json()["entries"][0]["size"] == 3
    r = run_process("ls", "--repo", repo, "latest", str(src / "nope"))
    assert r.code == 2 and "no path" in r.err
    r = run_process("ls", "--repo", repo, first[:3])
    assert r.code == 1 and "too short" in r.err
    r = run_process("snapshots", "--repo", repo, "--job", "two", "--json")
    assert [s["job"] for s in r.json()] == ["two"]
    # a job name with no snapshot (a typo): told, with the jobs that have some
    r = run_process("restore", "--repo", repo, "latest", "--job", "tow", "-t", tmp_path / "o")
    assert r.code == 1 and "no snapshot of job 'tow'" in r.err
    assert "hint: jobs with snapshots here: one, two" in r.err
    r = run_process("snapshots", "--repo", repo, "--job", "tow")
    assert r.code == 0 and r.out.strip() == "no snapshots of job 'tow'"


def test_overwrite_replaces_a_symlink_where_the_snapshot_has_a_folder(
    tmp_path: Path, repo: str
) -> None:
    """A link ``d -> elsewhere`` in the target where the snapshot has the folder ``d`` is
    replaced by the folder, never followed: the folder's files would land in ``elsewhere``."""
    src = write_tree(tmp_path / "src", {"d/f": b"data", "d/sub/g": b"more"})
    assert run_process("backup", "--repo", repo, src).code == 0
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = restored_root(out, src)
    root.mkdir(parents=True)
    (root / "d").symlink_to(elsewhere)
    r = run_process("restore", "--repo", repo, "latest", "--target", out, "--overwrite")
    assert r.code == 0, r.err
    assert list(elsewhere.iterdir()) == []
    assert not (root / "d").is_symlink() and (root / "d/f").read_bytes() == b"data"
    assert (root / "d/sub/g").read_bytes() == b"more"


def test_overwrite_follows_a_symlink_above_the_backed_up_paths_only_inside_the_target(
    tmp_path: Path, repo: str
) -> None:
    """The folders above a backed-up path were recorded as folders whatever they were (/lib ->
    usr/lib on merged-/usr systems): a link there is kept and followed while it leads to a
    place inside the target. One that leads outside is never followed: nothing is written
    there, and the restore names it and fails."""
    src = write_tree(tmp_path / "src", {"f": b"data"})
    assert run_process("backup", "--repo", repo, src).code == 0
    first = str(src.resolve()).lstrip("/").split("/")[0]  # the top folder above the path
    inside = str(src.resolve()).lstrip("/").split("/", 1)[1]
    out = tmp_path / "out"
    (out / "moved").mkdir(parents=True)
    (out / first).symlink_to("moved")  # relative: an absolute link is never followed
    r = run_process("restore", "--repo", repo, "latest", "--target", out, "--overwrite")
    assert r.code == 0, r.err
    assert (out / first).is_symlink()
    assert (out / "moved" / inside / "f").read_bytes() == b"data"

    out2, outside = tmp_path / "out2", tmp_path / "outside"
    out2.mkdir()
    outside.mkdir()
    (out2 / first).symlink_to(outside)
    r = run_process("restore", "--repo", repo, "latest", "--target", out2, "--overwrite")
    assert r.code == 1 and "Traceback" not in r.err
    assert "is a link to a place outside the restore target" in r.out + r.err
    assert "not followed" in r.out + r.err
    assert list(outside.iterdir()) == []
    assert (out2 / first).is_symlink()


def test_restore_tells_what_it_wrote_around_the_page_cache_and_buffered_writes_none(
    tmp_path: Path, repo: str
) -> None:
    """Files of 8 MiB or more are written with O_DIRECT unless --buffered; the report says
    how many bytes were (text and --json)."""
    big = os.urandom(9 * 2**20)
    src = write_tree(tmp_path / "src", {"ckpt/model.bin": big, "small.txt": b"x" * 100})
    assert run_process("backup", "--repo", repo, src).code == 0
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "a")
    assert r.code == 0, r.err
    assert "direct     9.0 MiB written around the page cache (O_DIRECT)" in r.out
    assert (restored_root(tmp_path / "a", src) / "ckpt/model.bin").read_bytes() == big
    r = run_process(
        "restore", "--repo", repo, "latest", "--target", tmp_path / "b", "--buffered", "--json"
    )
    assert r.code == 0, r.err
    assert r.json()["bytes_direct"] == 0
    assert r.json()["bytes_total"] == len(big) + 100
    assert (restored_root(tmp_path / "b", src) / "ckpt/model.bin").read_bytes() == big
