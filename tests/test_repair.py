"""Nothing lost, everything repairable: a lost pack, a flipped tree blob, a deleted index file
or a damaged prune mark never stops later backups, never makes `latest` quietly older, and
`bcdr repair index|snapshots` bring the repository back to one whose every snapshot restores."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from bcdr.repository.pack import TREE
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.conftest import (
    init_small,
    restored_root,
    run_process,
    snapshot_tree,
    write_tree,
)


def _tree(base: Path, seed: int = 1) -> Path:
    rng = random.Random(seed)
    files = {f"d{i % 3}/f{i}": rng.randbytes(rng.randrange(20_000, 90_000)) for i in range(9)}
    return write_tree(base, files)


def _repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    init_small(repo, "4096,4096,32768", 65536)
    return repo


def _backup(repo: Path, src: Path, *extra: str) -> dict[str, Any]:
    r = run_process("backup", "--repo", repo, "--job", "j", "--json", *extra, src)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    doc: dict[str, Any] = json.loads(r.out)
    return doc


def _restores(repo: Path, snap: str, src: Path, target: Path) -> bool:
    r = run_process("restore", "--repo", repo, snap, "--target", target)
    assert "Traceback" not in r.err, r.err
    return r.code == 0 and snapshot_tree(restored_root(target, src)) == snapshot_tree(src)


def _check(repo: Path) -> tuple[int, dict[str, Any]]:
    r = run_process("check", "--repo", repo, "--json")
    assert "Traceback" not in r.err, r.err
    doc: dict[str, Any] = json.loads(r.out)
    return r.code, doc


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data").rglob("*") if p.is_file())


def _snapshot_ids(repo: Path) -> list[str]:
    r = run_process("snapshots", "--repo", repo, "--json")
    assert r.code == 0, r.err
    return [s["id"] for s in json.loads(r.out)]


def _repair(repo: Path, what: str, *extra: str) -> dict[str, Any]:
    r = run_process("repair", what, "--repo", repo, "--json", *extra)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    doc: dict[str, Any] = json.loads(r.out)
    return doc


def test_a_lost_pack_does_not_poison_later_backups_which_heal_every_snapshot(
    tmp_path: Path,
) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    first = _backup(repo, src)
    second = _backup(repo, src, "--force-read")  # reads every file, dedups against the first
    lost = _packs(repo)[len(_packs(repo)) // 2]
    lost.unlink()
    # check names every snapshot that lost something (they share it), and the repairs.
    code, report = _check(repo)
    assert code == 1
    assert set(report["damaged_snapshots"]) == {first["snapshot"], second["snapshot"]}
    repairs = " ".join(report["repairs"])
    assert "bcdr repair index" in repairs and "bcdr repair snapshots" in repairs
    # The next backup (no flag) sees the pack is gone and stores its blobs again ...
    third = _backup(repo, src)
    assert any("missing" in n and "repair index" in n for n in third["notes"]), third
    assert _restores(repo, str(third["snapshot"]), src, tmp_path / "t3")
    # ... and is not damaged; the older ones are healed where their blobs were stored again.
    code, report = _check(repo)
    assert code == 1 and third["snapshot"] not in report["damaged_snapshots"], report
    dry = _repair(repo, "index", "--dry-run")
    assert dry["missing_packs"] == [lost.name] and dry["dry_run"]
    assert _check(repo)[1]["errors"] == report["errors"]  # a dry run changes nothing
    index = _repair(repo, "index")
    assert index["missing_packs"] == [lost.name] and index["evidence"]
    _repair(repo, "snapshots", "--forget")
    assert _check(repo)[0] == 0
    for n, snap in enumerate(_snapshot_ids(repo)):
        r = run_process("restore", "--repo", repo, snap, "--target", tmp_path / f"r{n}")
        assert r.code == 0, r.err


def test_repair_snapshots_leaves_out_what_is_lost_and_says_so(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    first = _backup(repo, src)
    second = _backup(repo, src, "--force-read")
    # Packs of chunks only: files are lost, every folder stays readable.
    rp = Repository.open(LocalStorage(str(repo)))
    names, _ = rp.index_files()
    chunk_packs = sorted(
        pack
        for name in names
        for pack, records in rp.read_index_records(name)
        if not (records["type"] == TREE).any()
    )
    for pack in _packs(repo):
        if pack.name in chunk_packs[::3]:
            pack.unlink()
    assert _repair(repo, "index")["missing_packs"] == chunk_packs[::3]
    snaps = _repair(repo, "snapshots", "--forget")
    repaired = {r["snapshot"]: r for r in snaps["repaired"]}
    assert set(repaired) == {first["snapshot"], second["snapshot"]}
    assert all(r["lost_count"] > 0 and r["new"] and r["forgotten"] for r in repaired.values())
    # Every listed snapshot restores (without what was lost), and check is clean.
    assert _check(repo)[0] == 0
    for n, snap in enumerate(_snapshot_ids(repo)):
        r = run_process("restore", "--repo", repo, snap, "--target", tmp_path / f"r{n}")
        assert r.code == 0, r.err
    repo_obj = Repository.open(LocalStorage(str(repo)))
    new = repo_obj.load_snapshot(repaired[first["snapshot"]]["new"])
    assert new.repaired and new.repaired["from"] == first["snapshot"] and "repaired" in new.tags
    assert new.repaired["lost_count"] == repaired[first["snapshot"]]["lost_count"]
    assert all("(file: chunks missing)" in path for path in new.repaired["lost"])
    r = run_process("evidence", "list", "--repo", repo, "--json")
    kinds = [rec["kind"] for rec in json.loads(r.out)]
    assert kinds.count("repair") == 2
    # Nothing left to repair.
    again = _repair(repo, "snapshots")
    assert again["repaired"] == [] and not again["changed"]


def test_a_flipped_tree_blob_does_not_stop_the_next_backup(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    first = _backup(repo, src)
    rp = Repository.open(LocalStorage(str(repo)))
    rp.load_index()
    loc = rp.index.lookup(bytes.fromhex(rp.load_snapshot(str(first["snapshot"])).tree))
    assert loc is not None
    pack = next(p for p in _packs(repo) if p.name == loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0x40
    pack.write_bytes(bytes(data))
    second = _backup(repo, src)
    assert any("unreadable in the parent snapshot" in w["reason"] for w in second["warnings"])
    assert _restores(repo, str(second["snapshot"]), src, tmp_path / "t2")


def test_a_deleted_index_file_does_not_stop_the_next_backup_and_repair_reindexes(
    tmp_path: Path,
) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    first = _backup(repo, src)
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    second = _backup(repo, src)
    assert _restores(repo, str(second["snapshot"]), src, tmp_path / "t2")
    # the backup found the packs no index named and indexed them from their headers itself
    assert any("indexed from their headers" in n for n in second["notes"]), second
    index = _repair(repo, "index")
    assert not index["packs_indexed"] and not index["missing_packs"]
    assert _check(repo)[0] == 0
    assert _restores(repo, str(first["snapshot"]), src, tmp_path / "t1")


def test_garbage_and_malformed_prune_marks_block_nothing(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    _backup(repo, src)
    (repo / "prune" / "m1").mkdir(parents=True)
    (repo / "prune" / "m1" / "packs").write_bytes(os.urandom(64))
    (repo / "prune" / "m2").mkdir(parents=True)
    (repo / "prune" / "m2" / "packs").write_text(json.dumps({"packs": [1, {"x": 2}]}))
    (repo / "prune" / "m2" / "ready").write_text(json.dumps({"ready": 5, "sessions": "x"}))
    snap = _backup(repo, src)
    assert _restores(repo, str(snap["snapshot"]), src, tmp_path / "t")
    r = run_process("ls", "--repo", repo, "latest")
    assert r.code == 0 and "Traceback" not in r.err, r.err
    code, report = _check(repo)
    errors = " ".join(report["errors"])
    assert code == 1 and "prune mark m1 is damaged" in errors and "prune mark m2" in errors
    assert any("bcdr prune" in x for x in report["repairs"])
    r = run_process("prune", "--repo", repo, "--json")
    assert r.code == 0 and "Traceback" not in r.err, r.err
    problems = json.loads(r.out)["problems"]
    assert sum("is damaged" in p and "discarded" in p for p in problems) == 2, problems
    assert _check(repo)[0] == 0


def test_latest_fails_when_the_newest_snapshot_cannot_be_read(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path), _tree(tmp_path / "src")
    first = _backup(repo, src)
    second = _backup(repo, src, "--force-read")
    manifest = repo / "snapshots" / str(second["snapshot"])
    manifest.write_bytes(manifest.read_bytes()[:-5])
    for cmd in (["restore", "latest", "--target", tmp_path / "t"], ["ls", "latest"]):
        r = run_process(cmd[0], "--repo", repo, *cmd[1:])
        assert r.code == 1 and "Traceback" not in r.err, r.err
        assert str(second["snapshot"])[:12] in r.err and "may be the newest" in r.err
        assert "bcdr snapshots" in r.err
    assert _restores(repo, str(first["snapshot"]), src, tmp_path / "explicit")
    snaps = _repair(repo, "snapshots", "--forget")
    assert snaps["manifests_removed"] == [second["snapshot"]]
    r = run_process("ls", "--repo", repo, "latest", "--json")
    assert r.code == 0 and json.loads(r.out)["snapshot"] == first["snapshot"]
