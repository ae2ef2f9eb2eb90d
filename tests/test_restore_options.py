"""restore --include, ls PATH, and snapshot references (id, prefix, latest per job)."""

from __future__ import annotations

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


def test_ls_path_and_snapshot_references(tmp_path: Path, repo: str) -> None:
    src = write_tree(tmp_path / "src", {"a/x": b"1", "b/y": b"22"})
    assert run_process("backup", "--repo", repo, "--job", "one", src).code == 0
    (src / "b/y").write_bytes(b"333")
    assert run_process("backup", "--repo", repo, "--job", "two", src).code == 0
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    assert isinstance(snaps, list) and len(snaps) == 2
    first = snaps[0]["id"]

    r = run_process("ls", "--repo", repo, first[:8], str(src / "b"), "--json")
    entries = r.json()["entries"]  # type: ignore[index]
    assert [(e["path"], e["size"]) for e in entries] == [(str(src / "b"), 0), (str(src / "b/y"), 2)]
    r = run_process("ls", "--repo", repo, "latest", "--job", "one", str(src / "b/y"), "--json")
    assert r.json()["entries"][0]["size"] == 2  # type: ignore[index]
    r = run_process("ls", "--repo", repo, "latest", "--job", "two", str(src / "b/y"), "--json")
    assert r.json()["entries"][0]["size"] == 3  # type: ignore[index]
    r = run_process("ls", "--repo", repo, "latest", str(src / "nope"))
    assert r.code == 2 and "no path" in r.err
    r = run_process("ls", "--repo", repo, first[:3])
    assert r.code == 1 and "too short" in r.err
    r = run_process("snapshots", "--repo", repo, "--job", "two", "--json")
    assert [s["job"] for s in r.json()] == ["two"]  # type: ignore[union-attr, index]
