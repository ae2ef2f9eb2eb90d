"""Damage is found by check and never restored as wrong bytes."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from bcdr.repository.hashing import fingerprint
from bcdr.repository.pack import DATA, TREE
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, encode_tree
from bcdr.storage.local import LocalStorage
from tests.conftest import Cli, init_small, restored_root, run_process, write_tree


@pytest.fixture
def populated(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    init_small(repo, "4096,4096,32768", 65536)
    rng = random.Random(5)
    src = write_tree(tmp_path / "src", {f"file{i}.bin": rng.randbytes(120_000) for i in range(8)})
    assert run_process("backup", "--repo", repo, src).code == 0
    return repo, src


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data").rglob("*") if p.is_file())


def test_flipped_byte_is_reported_and_never_restored(
    tmp_path: Path, populated: tuple[Path, Path]
) -> None:
    repo, src = populated
    pack = _packs(repo)[0]
    data = bytearray(pack.read_bytes())
    data[100] ^= 0x01  # inside the first blob
    pack.write_bytes(bytes(data))

    r = run_process("check", "--repo", repo)
    assert r.code == 0  # structure is intact; only reading data shows the damage
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 1
    assert f"pack {pack.name[:12]}: content does not match its name" in r.out
    assert "blob" in r.out and (
        "authentication failed" in r.out or "does not match its id" in r.out or "zstd" in r.out
    )

    target = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--target", target, "--json")
    assert r.code == 1
    doc = json.loads(r.out)
    bad = {e["path"] for e in doc["errors"]}
    assert len(bad) >= 1
    out = restored_root(target, src)
    for name in os.listdir(src):
        restored = out / name
        if str(src / name) in bad:
            assert not restored.exists(), "a damaged file must not appear"
        else:
            assert restored.read_bytes() == (src / name).read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".bcdr-restore-")]


def test_truncated_pack(tmp_path: Path, populated: tuple[Path, Path]) -> None:
    repo, src = populated
    pack = _packs(repo)[1]
    pack.write_bytes(pack.read_bytes()[:1000])
    r = run_process("check", "--repo", repo)
    assert r.code == 1 and f"pack {pack.name[:12]} is truncated" in r.out
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 1 and "truncated" in r.out
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    assert r.code == 1 and "truncated" in r.err


def test_missing_index_file(tmp_path: Path, populated: tuple[Path, Path]) -> None:
    repo, src = populated
    for index in (repo / "index").iterdir():
        index.unlink()
    r = run_process("check", "--repo", repo)
    assert r.code == 1
    assert "not in any index" in r.out  # packs without an index are named
    assert "chunk(s) missing" in r.out or "tree unreadable" in r.out
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    assert r.code == 1 and "Traceback" not in r.err


def test_missing_pack(tmp_path: Path, populated: tuple[Path, Path]) -> None:
    repo, src = populated
    pack = _packs(repo)[-1]
    pack.unlink()
    r = run_process("check", "--repo", repo)
    assert r.code == 1 and f"pack {pack.name[:12]} is listed in the index but missing" in r.out


def test_damaged_snapshot_and_index_are_named(tmp_path: Path, populated: tuple[Path, Path]) -> None:
    repo, src = populated
    snap = next((repo / "snapshots").iterdir())
    snap.write_bytes(snap.read_bytes()[:-5] + b"XXXXX")
    index = next((repo / "index").iterdir())
    index.write_bytes(index.read_bytes() + b"junk")
    r = run_process("check", "--repo", repo)
    assert r.code == 1
    assert f"snapshot {snap.name[:12]}" in r.out and f"index {index.name[:12]}" in r.out


def test_one_damaged_snapshot_does_not_hide_the_others(
    tmp_path: Path, populated: tuple[Path, Path]
) -> None:
    repo, src = populated
    first = next((repo / "snapshots").iterdir())
    (src / "file0.bin").write_bytes(b"changed")
    assert run_process("backup", "--repo", repo, src).code == 0
    stored_at = first.stat()
    first.write_bytes(b"\x00" + first.read_bytes()[1:])
    os.utime(first, ns=(stored_at.st_atime_ns, stored_at.st_mtime_ns))  # bit rot: same time
    r = run_process("snapshots", "--repo", repo, "--json")
    assert r.code == 0 and len(json.loads(r.out)) == 1
    assert f"snapshot {first.name[:12]} is damaged" in r.err
    # The damaged one was stored before the newest readable one: "latest" is that one.
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "out")
    assert r.code == 0, r.err


def test_damaged_single_chunk_file_never_replaces_the_existing_one(tmp_path: Path) -> None:
    """Files of one chunk are written straight to their name, after in-memory verification;
    a damaged one is not created, and with --overwrite the file already there survives."""
    repo = tmp_path / "repo"
    init_small(repo, "4096,16384,65536", 65536)
    rng = random.Random(9)
    files = {f"small{i}.txt": rng.randbytes(3000) for i in range(6)}
    src = write_tree(tmp_path / "src", files)
    assert run_process("backup", "--repo", repo, src).code == 0
    target = tmp_path / "out"
    assert run_process("restore", "--repo", repo, "latest", "--target", target).code == 0
    out = restored_root(target, src)
    for name in files:  # what a user has there now: other bytes
        (out / name).write_bytes(b"previous version")

    pack = _packs(repo)[0]
    data = bytearray(pack.read_bytes())
    data[40] ^= 0x01  # inside the first blob of the first pack
    pack.write_bytes(bytes(data))

    r = run_process("restore", "--repo", repo, "latest", "--target", target, "--overwrite")
    assert r.code == 1
    damaged = [n for n in files if (out / n).read_bytes() == b"previous version"]
    assert len(damaged) == 1, damaged
    assert damaged[0] in r.err + r.out
    for name in files:
        if name not in damaged:
            assert (out / name).read_bytes() == files[name]
    assert not [p for p in out.iterdir() if p.name.startswith(".bcdr-restore-")]

    fresh = tmp_path / "fresh"
    r = run_process("restore", "--repo", repo, "latest", "--target", fresh)
    assert r.code == 1
    assert not (restored_root(fresh, src) / damaged[0]).exists()
    assert len(list(restored_root(fresh, src).iterdir())) == len(files) - 1


def test_sections_cover_the_blob_area_in_order_without_splitting_a_blob() -> None:
    from bcdr.repository import check
    from bcdr.repository.pack import PackEntry

    def entry(offset: int, length: int) -> PackEntry:
        return PackEntry(offset.to_bytes(32, "big"), 0, 0, offset, length, length)

    entries = [entry(16 + 700 * i, 700) for i in range(10)] + [entry(1400, 100)]  # overlaps
    old = check.SECTION
    check.SECTION = 1000
    try:
        parts = list(check._sections(entries, 16 + 7000))
    finally:
        check.SECTION = old
    # the reads are contiguous from 0 to the end of the blob area (hashed in this order)
    assert parts[0][0] == 0 and parts[-1][1] == 16 + 7000
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    # about SECTION each: one more blob at most, two where the overlapping blob chains them
    assert len(parts) >= 4 and all(e - s <= 1000 + 2 * 700 for s, e, _ in parts)
    # every blob is read exactly once, whole, inside one read
    inside = [(e, s, end) for s, end, blobs in parts for e in blobs]
    assert sorted(e.offset for e, _, _ in inside) == sorted(e.offset for e in entries)
    assert all(s <= e.offset and e.offset + e.stored_len <= end for e, s, end in inside)


def test_read_data_in_small_sections_passes_clean_packs_and_finds_damage(
    populated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs are verified section by section (and a header longer than the first read of the
    pack's end is read again): a clean repository passes, and damage in a later section of a
    pack is found and named."""
    from bcdr.repository import check
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    repo, _ = populated
    monkeypatch.setattr(check, "SECTION", 5000)
    monkeypatch.setattr(check, "TAIL_READ", 64)
    packs = _packs(repo)

    report = check.Checker(Repository.open(LocalStorage(repo))).run(read_fraction=1.0)
    assert report.ok, report.errors
    assert report.packs_read == len(packs)
    assert report.bytes_read == sum(p.stat().st_size for p in packs)

    pack = packs[-1]
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x40  # past the first section
    pack.write_bytes(bytes(data))
    report = check.Checker(Repository.open(LocalStorage(repo))).run(read_fraction=1.0)
    assert report.errors[0] == f"pack {pack.name[:12]}: content does not match its name (damaged)"
    assert any(e.startswith(f"pack {pack.name[:12]}: blob ") for e in report.errors[1:])


def test_a_pack_header_listing_nothing_is_reported_against_the_index(
    populated: tuple[Path, Path],
) -> None:
    """A header that parses but lists no blobs (here: replaced by an empty one) still
    contradicts the index, and check --read-data says so."""
    from bcdr.repository.pack import MAGIC, TRAILER, header_span

    repo, _ = populated
    pack = _packs(repo)[0]
    data = pack.read_bytes()
    body_end = header_span(data[-TRAILER.size :], len(data), "pack")
    pack.write_bytes(data[:body_end] + TRAILER.pack(0, MAGIC))  # unencrypted: empty header
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 1
    assert f"pack {pack.name[:12]}: header does not match the index" in r.out


def _rewrite_header(pack: Path, change: object) -> None:
    """Rewrite an unencrypted pack's header with ``change(entries)`` applied."""
    from bcdr.repository.pack import MAGIC, TRAILER, decode_entries, encode_entries, header_span

    data = pack.read_bytes()
    body_end = header_span(data[-TRAILER.size :], len(data), "pack")
    entries = decode_entries(data[body_end : len(data) - TRAILER.size], "pack")
    header = encode_entries(change(entries))  # type: ignore[operator]
    pack.write_bytes(data[:body_end] + header + TRAILER.pack(len(header), MAGIC))


def test_a_header_listing_the_same_blobs_in_another_order_matches_the_index(
    populated: tuple[Path, Path],
) -> None:
    # check compares a header with the index as sets of entries (by a digest of the entries
    # in a canonical order), not entry by entry in the order each was written
    from bcdr.repository import check
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    repo, _ = populated
    pack = max(_packs(repo), key=lambda p: p.stat().st_size)
    _rewrite_header(pack, lambda entries: list(reversed(entries)))
    report = check.Checker(Repository.open(LocalStorage(repo))).run(read_fraction=1.0)
    assert f"pack {pack.name[:12]}: content does not match its name (damaged)" in report.errors
    assert not [e for e in report.errors if "header does not match" in e], report.errors


def test_a_header_with_one_entry_changed_does_not_match_the_index(
    populated: tuple[Path, Path],
) -> None:
    from dataclasses import replace

    from bcdr.repository import check
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    repo, _ = populated
    pack = max(_packs(repo), key=lambda p: p.stat().st_size)

    def bump_last(entries: list) -> list:  # type: ignore[type-arg]
        return [*entries[:-1], replace(entries[-1], raw_len=entries[-1].raw_len + 1)]

    _rewrite_header(pack, bump_last)
    report = check.Checker(Repository.open(LocalStorage(repo))).run(read_fraction=1.0)
    assert f"pack {pack.name[:12]}: header does not match the index" in report.errors


@pytest.mark.parametrize("batch", [None, 1])  # the chunk ids of many folders at once, or each
def test_check_counts_each_referenced_chunk_once_and_names_files_whose_pack_is_gone(
    tmp_path: Path,
    populated: tuple[Path, Path],
    batch: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bcdr.repository import check
    from bcdr.repository.pack import DATA
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    if batch is not None:
        monkeypatch.setattr(check, "CONTENT_BATCH", batch)
    repo, src = populated
    (src / "sub").mkdir()  # files in two folders: one search for both, or one each
    (src / "sub" / "inner.bin").write_bytes((src / "file1.bin").read_bytes()[::-1])
    (src / "copy.bin").write_bytes((src / "file3.bin").read_bytes())  # the same chunks again
    assert run_process("backup", "--repo", repo, src).code == 0
    opened = Repository.open(LocalStorage(repo))
    opened.load_index()
    found = {b: loc for b in opened.index.blobs() if (loc := opened.index.lookup(b)) is not None}
    data_blobs = [b for b, loc in found.items() if loc.type == DATA]
    report = check.Checker(Repository.open(LocalStorage(repo))).run()
    assert report.ok and report.snapshots == 2
    assert report.blobs_referenced == len(data_blobs)

    # a data pack goes: check names exactly the files with a chunk in it, in each snapshot.
    # Packs mix trees and data; a pack holding a tree would hide the files below it (check
    # then reports the tree unreadable), so the pack taken holds data only.
    tree_packs = {loc.pack for loc in found.values() if loc.type != DATA}
    loc = next(found[b] for b in data_blobs if found[b].pack not in tree_packs)
    (repo / "data" / loc.pack[:2] / loc.pack).unlink()

    def chunk_packs(path: Path) -> set[str]:
        ids = [opened.content_id(c) for c in opened.chunker.chunks_of(path.read_bytes())]
        return {found.pack for b in ids if (found := opened.index.lookup(b)) is not None}

    hit = sorted(f.name for f in src.rglob("*") if f.is_file() and loc.pack in chunk_packs(f))
    assert hit
    report = check.Checker(Repository.open(LocalStorage(repo))).run()
    missing = [e for e in report.errors if "chunk(s) missing" in e]
    named = sorted({e.split(": ")[0].rsplit("/", 1)[-1] for e in missing})
    assert named == hit, missing
    assert f"pack {loc.pack[:12]} is listed in the index but missing" in "\n".join(report.errors)


EVIL = b"EVIL!"


def _tampered_snapshot(
    tmp_path: Path, nodes_of: Callable[[Repository, bytes], list[Node]]
) -> tuple[Path, str]:
    """An unencrypted repository (anyone who can write to its storage can also make valid
    blobs) with a snapshot whose root tree is ``nodes_of(repo, id of a 5-byte chunk)``."""
    repo_path = tmp_path / "repo"
    init_small(repo_path)
    src = write_tree(tmp_path / "src", {"f": EVIL})
    assert run_process("backup", "--repo", repo_path, src).code == 0
    repo = Repository.open(LocalStorage(repo_path))
    repo.load_index()
    snap = repo.list_snapshots()[-1]
    with repo.writing():
        chunk = repo.save_blob(DATA, EVIL)
        root = repo.save_blob(TREE, encode_tree(nodes_of(repo, chunk)))
    return repo_path, repo.save_snapshot(replace(snap, tree=root.hex())).id


@pytest.mark.parametrize("name", [b"..", b"../../escaped", b"a/../../escaped", b".", b""])
def test_a_tree_naming_a_node_outside_its_folder_restores_nothing_there(
    tmp_path: Path, name: bytes
) -> None:
    def nodes(repo: Repository, chunk: bytes) -> list[Node]:
        return [Node(name, FILE, 0o644, size=5, content=[chunk], digest=fingerprint(EVIL))]

    repo_path, snap = _tampered_snapshot(tmp_path, nodes)
    target = tmp_path / "out" / "deep" / "target"
    r = run_process("restore", "--repo", repo_path, snap, "--target", target)
    assert r.code != 0 and "tree does not parse" in r.err, r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "out" / "escaped").exists() and not (tmp_path / "escaped").exists()
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written == []


def test_a_tree_listing_a_name_twice_cannot_restore_through_its_own_symlink(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()

    def nodes(repo: Repository, chunk: bytes) -> list[Node]:
        inner = repo.save_blob(
            TREE,
            encode_tree(
                [Node(b"x", FILE, 0o644, size=5, content=[chunk], digest=fingerprint(EVIL))]
            ),
        )
        return [
            Node(b"d", SYMLINK, 0o777, target=os.fsencode(outside)),
            Node(b"d", DIR, 0o755, subtree=inner),
        ]

    repo_path, snap = _tampered_snapshot(tmp_path, nodes)
    r = run_process("restore", "--repo", repo_path, snap, "--target", tmp_path / "target")
    assert r.code != 0 and "tree does not parse" in r.err, r.err
    assert list(outside.iterdir()) == []


def test_a_tree_with_a_content_id_of_the_wrong_length_is_reported_not_a_crash(
    tmp_path: Path,
) -> None:
    # check reads the ids of many folders as one array of 32-byte ids: a 5-byte id in a
    # tampered tree failed it with a traceback before trees checked each id's length
    def nodes(repo: Repository, chunk: bytes) -> list[Node]:
        return [
            Node(b"a", FILE, 0o644, size=5, content=[chunk[:5]], digest=fingerprint(EVIL)),
            Node(b"b", FILE, 0o644, size=5, content=[chunk], digest=fingerprint(EVIL)),
        ]

    repo_path, snap = _tampered_snapshot(tmp_path, nodes)
    r = run_process("check", "--repo", repo_path)
    assert r.code == 1 and "Traceback" not in r.err, r.err
    assert f"snapshot {snap[:8]} /: tree unreadable" in r.out and "tree does not parse" in r.out
    r = run_process("restore", "--repo", repo_path, snap, "--target", tmp_path / "out")
    assert r.code != 0 and "tree does not parse" in r.err and "Traceback" not in r.err, r.err


@pytest.mark.parametrize(
    "change",
    [
        {"tree": "zz" * 32},  # not hex
        {"tree": "abcd"},  # too short
        {"tree": 5},
        {"time": "yesterday"},
        {"time": "2026-11-29T10:00:00"},  # no UTC offset: cannot be compared with the others
        {"paths": "/data"},
        {"stats": [1, 2]},
        {"hostname": None},
        {"job": 7},
        {"skipped": [{"path": 1}]},
    ],
    ids=lambda change: "-".join(f"{k}={v}" for k, v in change.items()),
)
def test_a_snapshot_with_a_field_of_the_wrong_kind_is_damaged_not_a_crash(
    tmp_path: Path,
    cli: Cli,
    change: dict[str, object],
) -> None:
    # each of these failed snapshots, ls, restore, forget or backup with a traceback
    from bcdr.repository.hashing import object_name
    from bcdr.repository.snapshot import SNAPSHOT_AAD

    repo_path = tmp_path / "repo"
    init_small(repo_path)
    src = write_tree(tmp_path / "src", {"f": b"data" * 100})
    assert cli("backup", "--repo", repo_path, "--job", "j", src).code == 0
    repo = Repository.open(LocalStorage(repo_path))
    good = repo.list_snapshots()[-1]
    doc = {**json.loads(good.to_bytes()), **change}
    sealed = repo.cipher.seal(json.dumps(doc).encode(), SNAPSHOT_AAD)
    bad = object_name(sealed)
    repo.storage.put(f"snapshots/{bad}", sealed)

    r = cli("snapshots", "--repo", repo_path, "--json")
    assert r.code == 0 and [s["id"] for s in json.loads(r.out)] == [good.id]
    assert f"snapshot {bad[:12]} is damaged" in r.err
    r = cli("check", "--repo", repo_path)
    assert r.code == 1 and f"error: snapshot {bad[:12]}: does not parse (" in r.out, r.out
    # Stored after the good one, it may be the newest: "latest" names it instead of quietly
    # restoring an older snapshot; the good one is restored by its id.
    r = cli("restore", "--repo", repo_path, "latest", "--target", tmp_path / "out")
    assert r.code == 1 and bad[:12] in r.err and "may be the newest" in r.err, r.err
    r = cli("restore", "--repo", repo_path, good.id, "--target", tmp_path / "out")
    assert r.code == 0, r.err
    assert (restored_root(tmp_path / "out", src) / "f").read_bytes() == b"data" * 100
    r = cli("forget", "--repo", repo_path, "--keep-last", "1", "--dry-run")
    assert r.code == 0, r.err
    r = cli("backup", "--repo", repo_path, "--job", "j", src)
    assert r.code == 0 and "Traceback" not in r.err, r.err
