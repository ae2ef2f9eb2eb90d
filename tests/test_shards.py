"""Sharded backups (``bcdr backup --shards N``, ``bcdr shard plan|run|commit``): one snapshot
read by several processes, with the tree an unsharded backup makes for any N; a shard missing
or killed is run again on its own; files changed after their shard read them are read by the
commit; nothing is committed twice."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.common import open_repo
from bcdr.actions.prune import prune
from bcdr.actions.shard import commit_run, describe_manifest, plan_run, run_shard
from bcdr.archive.backup import GREW
from bcdr.archive.shards import (
    Manifest,
    cut,
    encode_shards,
    load_manifest,
    load_receipts,
    new_run_nonce,
    save_manifest,
)
from bcdr.clock import FakeClock
from bcdr.errors import CorruptObject
from bcdr.repository.repo import Repository
from bcdr.repository.tree import decode_tree
from tests.conftest import restored_root, run_process, snapshot_tree, tmpfs, write_tree

REGION = 64 * 1024
CHUNKS = "4096,4096,32768"


def _init(repo: Path) -> None:
    r = run_process("init", "--repo", repo, "--chunk-size", CHUNKS, "--region-size", REGION)
    assert r.code == 0, r.err


def _source(base: Path, seed: int = 1) -> Path:
    rng = random.Random(seed)
    files = {f"data/shard-{i:02d}.jsonl": rng.randbytes(rng.randint(0, 40_000)) for i in range(25)}
    files["ckpt/model.bin"] = rng.randbytes(5 * REGION + 999)  # cut in regions across shards
    files["ckpt/opt.bin"] = rng.randbytes(2 * REGION)
    files["empty"] = b""
    src = write_tree(base / "src", files)
    os.symlink("model.bin", src / "ckpt" / "latest")
    os.link(src / "data" / "shard-01.jsonl", src / "hardlink.jsonl")
    return src


def _trees(repo: Path, src: Path | None = None) -> dict[str, str]:
    """Job -> the tree of ``src`` in its newest snapshot (the folders above it hold the
    metadata of /tmp and the like, which other processes change meanwhile)."""
    r = run_process("snapshots", "--repo", repo, "--json")
    assert r.code == 0, r.err
    if src is None:
        return {s["job"]: s["tree"] for s in r.json()}
    opened = open_repo(str(repo))
    try:
        opened.load_index()
        return {s["job"]: _subtree(opened, s["tree"], src) for s in r.json()}
    finally:
        opened.close()


def _subtree(repo: Repository, tree: str, path: Path) -> str:
    node_tree = bytes.fromhex(tree)
    for name in path.parts[1:]:
        nodes = {n.name: n for n in decode_tree(repo.load_blob(node_tree), "tree")}
        subtree = nodes[os.fsencode(name)].subtree
        assert subtree is not None
        node_tree = subtree
    return node_tree.hex()


def test_any_number_of_shards_gives_the_unsharded_tree(tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    assert run_process("backup", "--repo", repo, "--job", "whole", src).code == 0
    for n in (1, 2, 3, 5):
        r = run_process("backup", "--repo", repo, "--job", f"s{n}", "--shards", n, src, "--json")
        assert r.code == 0, r.err
        doc = r.json()
        # every file read once, by the shards (a hardlinked one once for both names)
        files = {
            f.stat().st_ino: f.stat().st_size
            for f in src.rglob("*")
            if not f.is_symlink() and f.is_file()
        }
        assert len(doc["shards"]) == n and doc["files_from_shards"] == len(files)
        assert doc["stats"]["bytes_read"] == sum(files.values())
        assert sum(s["bytes_read"] for s in doc["shards"]) == sum(files.values())
    trees = _trees(repo, src)
    assert {trees[f"s{n}"] for n in (1, 2, 3, 5)} == {trees["whole"]}
    out = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--job", "s5", "--target", out)
    assert r.code == 0, r.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 0, r.out + r.err


@st.composite
def _files(draw: st.DrawFn) -> dict[str, int]:
    names = draw(
        st.lists(
            st.text("abcdef", min_size=1, max_size=4).map(lambda s: s + ".bin"),
            min_size=1,
            max_size=12,
            unique=True,
        )
    )
    folders = draw(
        st.lists(
            st.sampled_from(["", "x/", "x/y/", "z/"]), min_size=len(names), max_size=len(names)
        )
    )
    sizes = draw(
        st.lists(
            st.one_of(st.integers(0, 5000), st.integers(REGION - 10, 3 * REGION + 10)),
            min_size=len(names),
            max_size=len(names),
        )
    )
    return {f + n: s for f, n, s in zip(folders, names, sizes, strict=True)}


@given(files=_files(), shards=st.integers(1, 5), seed=st.integers(0, 2**16))
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_generated_trees_shard_to_the_same_tree(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, int], shards: int, seed: int
) -> None:
    base = tmp_path_factory.mktemp("gen")
    rng = random.Random(seed)
    src = write_tree(base / "src", {name: rng.randbytes(size) for name, size in files.items()})
    repo = base / "repo"
    _init(repo)
    r = open_repo(str(repo))
    try:
        whole = run_backup(r, BackupRequest(paths=(str(src),), job="whole")).snapshot
        manifest = plan_run(r, (str(src),), shards, job="sharded")
        for i in range(manifest.count):
            run_shard(r, manifest.run, i)
        result = commit_run(r, manifest.run)
        sharded_tree = _subtree(r, result.snapshot.tree, src)
        assert sharded_tree == _subtree(r, whole.tree, src)
    finally:
        r.close()
    assert result.from_shards == sum(1 for s in files.values())


def test_commit_refuses_a_missing_receipt_then_commits_once(tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("shard", "plan", "--repo", repo, "--job", "j", "--shards", 3, src, "--json")
    assert r.code == 0, r.err
    run = r.json()["run"]
    for i in (0, 2):
        r = run_process("shard", "run", "--repo", repo, "--run", run, "--index", i)
        assert r.code == 0, r.err
    r = run_process("shard", "commit", "--repo", repo, "--run", run)
    assert r.code == 1
    assert "shard(s) 1)" in r.err and f"--run {run} --index N" in r.err
    assert _trees(repo) == {}
    assert run_process("shard", "run", "--repo", repo, "--run", run, "--index", 1).code == 0
    # a shard that has its receipt does nothing again
    r = run_process("shard", "run", "--repo", repo, "--run", run, "--index", 1, "--json")
    assert r.code == 0 and r.json()["bytes_read"] > 0  # the first run's receipt
    assert len(list((repo / "shards" / run).iterdir())) == 4  # manifest and three receipts
    r = run_process("shard", "commit", "--repo", repo, "--run", run, "--json")
    assert r.code == 0, r.err
    snap = r.json()["snapshot"]
    r = run_process("shard", "commit", "--repo", repo, "--run", run, "--json")
    assert r.code == 0 and r.json() == {"snapshot": snap, "already_committed": True}
    assert len(_trees(repo)) == 1
    # usage mistakes are told, not tracebacks
    for args in (
        ["shard", "run", "--repo", repo, "--run", run, "--index", 3],
        ["shard", "run", "--repo", repo, "--run", run],
        ["shard", "commit", "--repo", repo, "--run", "nosuchrun"],
        ["shard", "plan", "--repo", repo, src],
        ["backup", "--repo", repo, "--shards", 0, src],
    ):
        r = run_process(*args)
        assert r.code in (1, 2) and "Traceback" not in r.err and "error" in r.err, args


def test_a_file_changed_after_its_shard_read_it_is_read_by_the_commit(tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    r = open_repo(str(repo))
    try:
        manifest = plan_run(r, (str(src),), 2, job="j")
        for i in range(2):
            run_shard(r, manifest.run, i)
        (src / "ckpt" / "opt.bin").write_bytes(b"rewritten after its shard read it")
        result = commit_run(r, manifest.run)
    finally:
        r.close()
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, result.snapshot.id, "--target", out).code == 0
    assert (restored_root(out, src) / "ckpt" / "opt.bin").read_bytes().startswith(b"rewritten")
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_incremental_shards_read_only_what_changed(tmp_path: Path) -> None:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    assert run_process("backup", "--repo", repo, "--job", "j", "--shards", 3, src).code == 0
    with open(src / "ckpt" / "model.bin", "r+b") as f:
        f.seek(3 * REGION + 10)
        f.write(b"changed")
    r = run_process("backup", "--repo", repo, "--job", "j", "--shards", 3, src, "--json")
    assert r.code == 0, r.err
    doc = r.json()
    size = (src / "ckpt" / "model.bin").stat().st_size
    # the hardlinked file is not read again either: its content is the parent's, as in an
    # unsharded backup (only its node is made anew, for its other name)
    assert doc["stats"]["bytes_read"] == size
    assert doc["parent"]
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, "latest", "--target", out).code == 0
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_an_incremental_plan_shares_out_only_what_changed(tmp_path: Path) -> None:
    """The plan leaves out the files the parent holds as they are, so its shards split the
    changed bytes (not all of them: one shard would get the change and the others nothing)
    and no shard stats or looks up unchanged files."""
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    assert run_process("backup", "--repo", repo, "--job", "j", src).code == 0
    changed = {src / "data" / f"shard-{i:02d}.jsonl" for i in (3, 17)} | {src / "ckpt" / "opt.bin"}
    for path in changed:
        path.write_bytes(path.read_bytes() + b"appended")
    r = open_repo(str(repo))
    try:
        manifest = plan_run(r, (str(src),), 2, job="j")
        shards = [manifest.parts(i) for i in range(manifest.count)]
        planned = {Path(os.fsdecode(p.path)) for shard in shards for p in shard}
        assert planned == changed  # the unchanged hardlinked file too is left out
        assert all(shards), "both shards have a part of what changed"
        regular = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
        assert manifest.files == len(regular) - 1  # the hardlink counted once
        assert manifest.unchanged == manifest.files - len(planned)
        assert f"{manifest.unchanged} unchanged since the parent" in describe_manifest(manifest)
        for i in range(2):
            run_shard(r, manifest.run, i)
        result = commit_run(r, manifest.run)
    finally:
        r.close()
    assert result.backup is not None and result.snapshot.parent
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, result.snapshot.id, "--target", out).code == 0
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_a_hardlinked_file_is_read_again_only_when_it_changed(tmp_path: Path) -> None:
    """Incremental sharded backups treat a file with several names as an unsharded backup
    does: unchanged, no shard reads it (its content is the parent's); changed, one shard
    reads it once for all its names; a new name of an unchanged file reads nothing."""
    src = _source(tmp_path)
    linked, other = src / "data" / "shard-01.jsonl", src / "hardlink.jsonl"
    repo = tmp_path / "repo"
    _init(repo)
    for job in ("whole", "sharded"):
        shards = ("--shards", 3) if job == "sharded" else ()
        assert run_process("backup", "--repo", repo, "--job", job, *shards, src).code == 0

    def both(expected_read: int) -> None:
        for job in ("whole", "sharded"):
            shards = ("--shards", 3) if job == "sharded" else ()
            r = run_process("backup", "--repo", repo, "--job", job, *shards, src, "--json")
            assert r.code == 0, r.err
            assert r.json()["stats"]["bytes_read"] == expected_read, job
        trees = _trees(repo, src)
        assert trees["sharded"] == trees["whole"]

    both(0)
    with open(linked, "ab") as f:
        f.write(b"appended through one name")
    both(linked.stat().st_size)  # once, for both names
    os.link(linked, src / "third-name.jsonl")  # a new link changes the file's ctime
    both(linked.stat().st_size)
    both(0)
    out = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--job", "sharded", "--target", out)
    assert r.code == 0, r.err
    root = restored_root(out, src)
    assert snapshot_tree(root) == snapshot_tree(src)
    names = [root / "data" / "shard-01.jsonl", root / "hardlink.jsonl", root / "third-name.jsonl"]
    assert len({p.stat().st_ino for p in names}) == 1 and names[0].stat().st_nlink == 3
    assert other.read_bytes() == names[1].read_bytes()


def test_the_plan_walks_the_paths_as_the_backup_does(tmp_path: Path) -> None:
    """The plan meets the given paths in the backup's order, component by component (``a/x``
    before ``a-b``, though ``-`` sorts before ``/``), and a path inside another given path
    once: each file is shared out once, a hardlinked one by the name the commit meets first.
    A run planned in another order (an older bcdr sorted whole paths) still gives the commit
    every file: a hardlink the shard read by its other name is found by its inode."""
    rng = random.Random(7)
    sizes = {"a/x/f.bin": 30_000, "a/x/sub/h.bin": 10_000, "a-b/g.bin": 20_000}
    src = write_tree(tmp_path / "src", {n: rng.randbytes(size) for n, size in sizes.items()})
    os.link(src / "a" / "x" / "f.bin", src / "a-b" / "linked.bin")
    paths = (src / "a-b", src / "a" / "x", src / "a" / "x" / "sub")
    total = sum(sizes.values())
    repo = tmp_path / "repo"
    _init(repo)
    for job, shards in (("whole", ()), ("sharded", ("--shards", 2))):
        r = run_process("backup", "--repo", repo, "--job", job, *shards, *paths, "--json")
        assert r.code == 0, r.err
        assert r.json()["stats"]["bytes_read"] == total, job  # every file read once
    repository = open_repo(str(repo))
    try:
        manifest = plan_run(repository, tuple(map(str, paths)), 2, job="older")
        planned = sorted(p.path for i in range(manifest.count) for p in manifest.parts(i))
        assert planned == sorted(os.fsencode(src / n) for n in sizes)
        assert manifest.files == len(sizes)
        # as an older bcdr planned it: a-b first, so the hardlink by its name there
        older = [(os.fsencode(src / n), s) for n, s in sorted(sizes.items()) if n != "a/x/f.bin"]
        older.insert(1, (os.fsencode(src / "a-b" / "linked.bin"), sizes["a/x/f.bin"]))
        encoded, shard_bytes = encode_shards(cut(older, 2, manifest.region))
        run = save_manifest(
            repository,
            msgspec.structs.replace(
                manifest, run=new_run_nonce(), shards=encoded, shard_bytes=shard_bytes
            ),
        ).run
        for i in range(2):
            run_shard(repository, run, i)
        result = commit_run(repository, run)
    finally:
        repository.close()
    assert result.backup is not None
    assert result.backup.stats.bytes_read == total  # the commit read nothing again
    assert result.from_shards == len(sizes)
    trees = _trees(repo, src)
    assert trees["sharded"] == trees["whole"] == trees["older"]


def test_one_file_system_with_shards_keeps_mount_points_empty(tmp_path: Path) -> None:
    """``backup -x --shards N`` and ``shard plan -x``: no shard reads a file on another
    filesystem, and the snapshot is the unsharded ``-x`` backup's (the mount point an empty
    folder)."""
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    with tmpfs(src / "mnt", "4m"):
        (src / "mnt" / "other-fs.bin").write_bytes(b"elsewhere" * 1000)
        r = run_process("backup", "--repo", repo, "--job", "whole", "-x", src)
        assert r.code == 0, r.err
        r = run_process("backup", "--repo", repo, "--job", "s", "-x", "--shards", 3, src, "--json")
        assert r.code == 0, r.err
        local = {
            f.stat().st_ino: f.stat().st_size
            for f in src.rglob("*")
            if f.is_file() and not f.is_symlink() and "mnt" not in f.parts
        }
        assert sum(s["bytes_read"] for s in r.json()["shards"]) == sum(local.values())
        assert r.json()["stats"]["bytes_read"] == sum(local.values())  # the commit read none
        run = run_process("shard", "plan", "--repo", repo, "--job", "p", "-x", "--shards", 2, src)
        assert run.code == 0, run.err
        run_id = run.out.split()[1].rstrip(":")
        for i in range(2):
            assert (
                run_process("shard", "run", "--repo", repo, "--run", run_id, "--index", i).code == 0
            )
        r = run_process("shard", "commit", "--repo", repo, "--run", run_id, "--json")
        assert r.code == 0, r.err
        assert r.json()["stats"]["bytes_read"] == sum(local.values())
        trees = _trees(repo, src)
        assert trees["s"] == trees["p"] == trees["whole"]
        listed = run_process("ls", "--repo", repo, "latest", "--job", "s").out
        assert "mnt" in listed and "other-fs.bin" not in listed
        r = run_process("backup", "--repo", repo, "--job", "s", "--shards", 2, src, "--json")
        assert r.code == 0, r.err  # without -x the other filesystem is read
        assert "other-fs.bin" in run_process("ls", "--repo", repo, "latest", "--job", "s").out


def test_a_shard_decodes_only_its_own_parts_of_a_manifest_stored_as_before(
    tmp_path: Path,
) -> None:
    """The manifest keeps each shard's parts encoded, so a shard of a run of millions of files
    decodes its own, not the run's; the stored bytes are those of a manifest whose parts were
    decoded whole (a node with an older bcdr reads it), and one without the per-shard byte
    counts still tells them."""
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    r = open_repo(str(repo))
    try:
        manifest = plan_run(r, (str(src),), 3, job="j")
        loaded = load_manifest(r, manifest.run)
        assert all(isinstance(raw, msgspec.Raw) for raw in loaded.shards)
        parts = [loaded.parts(i) for i in range(loaded.count)]
        assert loaded.sizes() == list(loaded.shard_bytes)
        assert loaded.sizes() == [sum(p.end - p.start for p in ps) for ps in parts]
        assert sum(len(ps) for ps in parts) >= len(list(src.rglob("*.jsonl")))
        stored = r.storage.get(f"shards/{manifest.run}/manifest")
        doc = msgspec.msgpack.decode(zstandard.decompress(r.cipher.open(stored, b"shard", "m")))
        assert [[tuple(p) for p in ps] for ps in doc["shards"]] == [
            [(p.path, p.start, p.end, p.size) for p in ps] for ps in parts
        ]
        older = save_manifest(
            r, msgspec.structs.replace(loaded, run=new_run_nonce(), shard_bytes=[])
        )
        again = load_manifest(r, older.run)
        assert again.shard_bytes == [] and again.sizes() == loaded.sizes()
        assert again.parts(1) == parts[1]
    finally:
        r.close()


def test_a_shards_parts_that_do_not_decode_are_a_corrupt_object() -> None:
    manifest = Manifest(run="r", created="", paths=[], shards=[msgspec.Raw(b"\xc1")])
    with pytest.raises(CorruptObject, match="shard 0's parts do not decode"):
        manifest.parts(0)


def test_files_replaced_after_the_plan_are_read_by_the_commit(tmp_path: Path) -> None:
    """A shard reads what the plan listed without a stat of its own: a file that became a
    FIFO must not hang it (opened without waiting for a writer), and one that grew, shrank,
    turned into a symlink or vanished is left to the commit, which backs up what is there
    (and skips the FIFO, with a warning, as a backup does)."""
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init(repo)
    r = open_repo(str(repo))
    try:
        manifest = plan_run(r, (str(src),), 2, job="j")
    finally:
        r.close()
    data = src / "data"
    (data / "shard-02.jsonl").unlink()
    os.mkfifo(data / "shard-02.jsonl")
    (data / "shard-04.jsonl").write_bytes(b"shorter")
    (data / "shard-05.jsonl").write_bytes((data / "shard-05.jsonl").read_bytes() * 2)
    (data / "shard-06.jsonl").unlink()
    os.symlink("shard-07.jsonl", data / "shard-06.jsonl")
    (data / "shard-08.jsonl").unlink()
    grown = random.Random(3).randbytes(3 * 2**20)  # past what a worker reads whole
    (data / "shard-09.jsonl").write_bytes(grown)
    for i in range(2):
        done = run_process(
            "shard", "run", "--repo", repo, "--run", manifest.run, "--index", i, timeout=60
        )
        assert done.code == 0, done.err
        assert "left to the commit" in done.out and "unchanged" not in done.out  # the plan's
    r = open_repo(str(repo))
    try:
        failed = dict(f for rec in load_receipts(r, manifest).values() for f in rec.failed)
    finally:
        r.close()
    assert failed[str(data / "shard-09.jsonl")] == GREW  # not read whole into a worker
    committed = run_process("shard", "commit", "--repo", repo, "--run", manifest.run, "--json")
    assert committed.code == 0, committed.err
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, "latest", "--target", out).code == 0
    restored = restored_root(out, src) / "data"
    assert (restored / "shard-04.jsonl").read_bytes() == b"shorter"
    assert (restored / "shard-05.jsonl").read_bytes() == (data / "shard-05.jsonl").read_bytes()
    assert os.readlink(restored / "shard-06.jsonl") == "shard-07.jsonl"
    assert not (restored / "shard-08.jsonl").exists()
    assert (restored / "shard-09.jsonl").read_bytes() == grown
    assert not (restored / "shard-02.jsonl").exists()  # special files are not backed up
    assert "FIFO skipped" in committed.out + committed.err


def test_a_killed_shard_is_run_again_on_its_own(tmp_path: Path) -> None:
    rng = random.Random(2)
    src = write_tree(tmp_path / "src", {f"f{i}.bin": rng.randbytes(3_000_000) for i in range(6)})
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("shard", "plan", "--repo", repo, "--shards", 2, src, "--json")
    run = r.json()["run"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bcdr",
            "shard",
            "run",
            "--repo",
            str(repo),
            "--run",
            run,
            "--index",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not any((repo / "data").rglob("*")) if (repo / "data").exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, "the shard ended first"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_process("shard", "commit", "--repo", repo, "--run", run).code == 1
    for i in (0, 1):
        r = run_process("shard", "run", "--repo", repo, "--run", run, "--index", i)
        assert r.code == 0, r.err
    r = run_process("shard", "commit", "--repo", repo, "--run", run, "--json")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, "latest", "--target", out).code == 0
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 0, r.out + r.err
    assert json.loads(run_process("snapshots", "--repo", repo, "--json").out)[0]["shard_run"] == run


def test_a_replaced_manifest_is_refused_before_a_file_is_read(tmp_path: Path) -> None:
    """The run id binds the manifest's bytes: whoever can write to the repository cannot
    swap in a manifest naming other files for the shards' nodes to read."""
    src = _source(tmp_path)
    secret = write_tree(tmp_path / "secret", {"key.pem": b"not for the repository"})
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("shard", "plan", "--repo", repo, "--shards", 1, src, "--json")
    run = r.json()["run"]
    r = run_process("shard", "plan", "--repo", repo, "--shards", 1, secret, "--json")
    other = r.json()["run"]
    planned = repo / "shards" / run / "manifest"
    planned.unlink()
    planned.write_bytes((repo / "shards" / other / "manifest").read_bytes())
    r = run_process("shard", "run", "--repo", repo, "--run", run, "--index", 0)
    assert r.code == 1 and "not the one planned" in r.err
    assert not list((repo / "shards" / run).glob("receipt-*"))
    r = run_process("ls", "--repo", repo, "latest")
    assert "key.pem" not in r.out


def test_tags_and_force_read_with_shards(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=7)
    repo = tmp_path / "repo"
    _init(repo)
    total = sum({f.stat().st_ino: f.stat().st_size for f in src.rglob("*") if f.is_file()}.values())
    r = run_process("backup", "--repo", repo, "--job", "j", "--shards", 2, "--tag", "t1", src)
    assert r.code == 0, r.err
    # unchanged files, the hardlinked one included: the shards read nothing, unless
    # --force-read
    r = run_process("backup", "--repo", repo, "--job", "j", "--shards", 2, src, "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["bytes_read"] == 0
    assert sum(s["bytes_read"] for s in r.json()["shards"]) == 0
    r = run_process(
        "backup",
        "--repo",
        repo,
        "--job",
        "j",
        "--shards",
        2,
        "--force-read",
        "--tag",
        "t2",
        "--tag",
        "t3",
        src,
        "--json",
    )
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["stats"]["bytes_read"] == total
    assert sum(s["bytes_read"] for s in doc["shards"]) == total
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    assert [s.get("tags", []) for s in snaps] == [["t1"], [], ["t2", "t3"]]
    trees = _trees(repo, src)
    assert len(set(trees.values())) == 1


def test_prune_keeps_a_pending_runs_chunks_and_removes_finished_runs(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=8)
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("shard", "plan", "--repo", repo, "--job", "j", "--shards", 2, src, "--json")
    assert r.code == 0, r.err
    run = r.json()["run"]
    for i in (0, 1):
        assert run_process("shard", "run", "--repo", repo, "--run", run, "--index", i).code == 0
    packs = sorted(p.name for p in (repo / "data").rglob("*") if p.is_file())
    # no snapshot needs the shards' chunks yet; the run not committed keeps them
    r = run_process("prune", "--repo", repo, "--grace", "0", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["shard_runs_kept"] == 1 and doc["shard_runs_removed"] == 0
    assert doc["packs_deleted"] == 0
    assert sorted(p.name for p in (repo / "data").rglob("*") if p.is_file()) == packs
    r = run_process("shard", "commit", "--repo", repo, "--run", run, "--json")
    assert r.code == 0, r.err
    assert r.json()["files_from_shards"] > 0 and r.json()["stats"]["bytes_read"] > 0
    committed = r.json()["snapshot"]
    # committed: its manifest and receipts go (a dry run only counts them)
    r = run_process("prune", "--repo", repo, "--grace", "0", "--dry-run", "--json")
    assert r.json()["shard_runs_removed"] == 1 and (repo / "shards" / run).exists()
    r = run_process("prune", "--repo", repo, "--grace", "0")
    assert r.code == 0 and "removed 1 sharded run(s)" in r.out, r.out
    assert not list((repo / "shards").rglob("*receipt*"))
    assert not (repo / "shards" / run / "manifest").exists()
    r = run_process("shard", "commit", "--repo", repo, "--run", run)
    assert r.code != 0 and "no sharded run" in r.err  # the snapshot stays, the run is gone
    r = run_process("check", "--repo", repo, "--read-data")
    assert r.code == 0, r.out + r.err
    # abandoned: planned and run, never committed, a week later
    r = run_process("shard", "plan", "--repo", repo, "--job", "k", "--shards", 1, src, "--json")
    stale = r.json()["run"]
    assert run_process("shard", "run", "--repo", repo, "--run", stale, "--index", 0).code == 0
    report = prune(
        str(repo), grace=timedelta(0), clock=FakeClock(datetime.now(UTC) + timedelta(days=8))
    )
    assert report.shard_runs_removed == 1 and report.shard_runs_kept == 0
    assert not (repo / "shards" / stale).exists() or not any((repo / "shards" / stale).iterdir())
    r = run_process("restore", "--repo", repo, committed, "--target", tmp_path / "out")
    assert r.code == 0, r.err


def test_a_shard_on_a_node_that_does_not_see_the_source_says_so(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=9)
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("shard", "plan", "--repo", repo, "--job", "j", "--shards", 2, src, "--json")
    run = r.json()["run"]
    hidden = src.rename(tmp_path / "elsewhere")  # as on a node that does not mount it
    r = run_process("shard", "run", "--repo", repo, "--run", run, "--index", 0)
    assert r.code == 2 and "does not exist on" in r.err and "every node mounts" in r.err
    assert not list((repo / "shards" / run).glob("receipt-*"))
    hidden.rename(src)
    assert run_process("shard", "run", "--repo", repo, "--run", run, "--index", 0).code == 0
