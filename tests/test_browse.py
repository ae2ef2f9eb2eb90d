"""``diff``, ``find``, ``dump`` and ``stats`` (issue 35): looking into snapshots without
restoring them, every byte checked as a restore checks it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from tests.conftest import Cli, write_tree


def _two_snapshots(cli: Cli, repo: str, tmp_path: Path) -> tuple[Path, str, str]:
    src = write_tree(
        tmp_path / "src",
        {
            "ckpt/step-100.pt": b"a" * 30_000,
            "ckpt/step-200.pt": b"b" * 30_000,
            "data/train.jsonl": b"{}\n" * 100,
            "notes.txt": b"v1",
        },
    )
    os.symlink("ckpt/step-200.pt", src / "latest.pt")
    first = cli("backup", "--repo", repo, "--job", "ckpt", src, "--json").json()["snapshot"]
    (src / "notes.txt").write_bytes(b"v2")  # content
    (src / "ckpt" / "step-100.pt").unlink()  # removed
    (src / "ckpt" / "step-300.pt").write_bytes(b"c" * 30_000)  # added
    (src / "data" / "train.jsonl").chmod(0o600)  # metadata only
    second = cli("backup", "--repo", repo, "--job", "ckpt", src, "--json").json()["snapshot"]
    return src, first, second


def test_diff_names_what_was_added_removed_changed_and_touched(
    cli: Cli, repo: str, tmp_path: Path
) -> None:
    src, first, second = _two_snapshots(cli, repo, tmp_path)
    r = cli("diff", "--repo", repo, first, second, "--json")
    assert r.code == 0, r.err
    doc = r.json()
    got = {(c["what"], c["path"].removeprefix(str(src))) for c in doc["changes"]}
    assert ("added", "/ckpt/step-300.pt") in got
    assert ("removed", "/ckpt/step-100.pt") in got
    assert ("changed", "/notes.txt") in got
    assert ("metadata", "/data/train.jsonl") in got
    assert ("changed", "/ckpt/step-200.pt") not in {(w, p) for w, p in got}
    meta = [c for c in doc["changes"] if c["what"] == "metadata"]
    assert meta[0]["fields"] == ["mode"] or "mode" in meta[0]["fields"]
    assert doc["counts"]["added"] == 1 and doc["counts"]["removed"] == 1
    text = cli("diff", "--repo", repo, first, second).out
    assert f"+  {src}/ckpt/step-300.pt" in text and f"-  {src}/ckpt/step-100.pt" in text
    assert f"M  {src}/notes.txt" in text and "1 added, 1 removed, 1 changed" in text
    same = cli("diff", "--repo", repo, second, second, "--json").json()
    assert same["changes"] == []


def test_find_searches_every_snapshot(cli: Cli, repo: str, tmp_path: Path) -> None:
    src, first, second = _two_snapshots(cli, repo, tmp_path)
    r = cli("find", "--repo", repo, "step-1*.pt", "--json")
    assert r.code == 0
    assert [(f["snapshot"], f["path"]) for f in r.json()] == [(first, f"{src}/ckpt/step-100.pt")]
    both = cli("find", "--repo", repo, "*.pt", "--json").json()
    assert len([f for f in both if f["snapshot"] == second]) == 3  # 200, 300 and the link
    full = cli("find", "--repo", repo, f"{src}/data/*", "--snapshot", second, "--json").json()
    assert [f["path"] for f in full] == [f"{src}/data/train.jsonl"]
    none = cli("find", "--repo", repo, "*.bin")
    assert none.code == 1 and "0 match(es)" in none.out


def test_dump_writes_a_file_or_a_folder_as_tar(cli: Cli, repo: str, tmp_path: Path) -> None:
    src, first, second = _two_snapshots(cli, repo, tmp_path)
    run = [sys.executable, "-m", "bcdr", "dump", "--repo", repo]
    one = subprocess.run([*run, first, f"{src}/notes.txt"], capture_output=True)
    assert one.returncode == 0 and one.stdout == b"v1", one.stderr
    folder = subprocess.run([*run, second, f"{src}/ckpt"], capture_output=True)
    assert folder.returncode == 0, folder.stderr
    with tarfile.open(fileobj=io.BytesIO(folder.stdout)) as tar:
        names = sorted(tar.getnames())
        assert names == ["ckpt", "ckpt/step-200.pt", "ckpt/step-300.pt"]
        member = tar.extractfile("ckpt/step-300.pt")
        assert member is not None and member.read() == b"c" * 30_000
    missing = subprocess.run([*run, second, f"{src}/nope"], capture_output=True, text=True)
    assert missing.returncode == 2 and "no path" in missing.stderr
    # a damaged chunk is an error, never bytes passed off as the file
    packs = sorted((Path(repo) / "data").rglob("*"))
    for pack in [p for p in packs if p.is_file()]:
        data = bytearray(pack.read_bytes())
        data[len(data) // 3] ^= 0xFF
        pack.chmod(0o644)
        pack.write_bytes(bytes(data))
    bad = subprocess.run([*run, second, f"{src}/ckpt/step-300.pt"], capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_stats_per_job(cli: Cli, repo: str, tmp_path: Path) -> None:
    _two_snapshots(cli, repo, tmp_path)
    r = cli("stats", "--repo", repo, "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["snapshots"] == 2 and doc["packs"] >= 1
    (job,) = doc["jobs"]
    assert job["job"] == "ckpt" and job["snapshots"] == 2
    assert job["restore_size"] == 30_000 * 2 + 300 + 2  # the newest: 200, 300, data, notes
    assert doc["logical_bytes"] > doc["stored_bytes"]  # the same chunks stored once
    assert doc["dedup_ratio"] > 1
    text = cli("stats", "--repo", repo).out
    assert "2 snapshot(s)" in text and "ckpt: 2 snapshot(s)" in text


def test_tag_rewrites_the_snapshot_and_keeps_its_recovery_point(
    cli: Cli, repo: str, tmp_path: Path
) -> None:
    _, first, second = _two_snapshots(cli, repo, tmp_path)
    r = cli("tag", "--repo", repo, first, "--add", "release", "--add", "keep", "--json")
    assert r.code == 0, r.err
    (done,) = r.json()
    assert done["old"] == first and done["new"] != first and done["tags"] == ["keep", "release"]
    snaps = {s["id"]: s for s in cli("snapshots", "--repo", repo, "--json").json()}
    assert first not in snaps and done["new"] in snaps and second in snaps
    assert sorted(snaps[done["new"]]["tags"]) == ["keep", "release"]
    assert snaps[done["new"]]["original"] == first  # the same recovery point
    restored = cli("restore", "--repo", repo, done["new"], "--target", tmp_path / "o")
    assert restored.code == 0
    # same recovery point: retagging again, or a copy, knows it as the first snapshot
    again = cli("tag", "--repo", repo, done["new"], "--remove", "keep", "--json").json()
    assert again[0]["tags"] == ["release"]
    unchanged = cli("tag", "--repo", repo, again[0]["new"], "--add", "release", "--json").json()
    assert unchanged[0]["new"] is None
    assert cli("tag", "--repo", repo, second).code == 2  # nothing to change said
    kinds = [e["kind"] for e in cli("evidence", "list", "--repo", repo, "--json").json()]
    assert kinds.count("tag") == 2
