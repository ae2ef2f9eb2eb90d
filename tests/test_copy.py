"""``bcdr copy``: recovery points copied between repositories, as a user runs it.

Local repositories here (Azure ones in tests/test_copy_azure.py): encrypted to unencrypted and
back, other chunkers, reruns that copy nothing, a damaged or incomplete source, kills at
random points, and prunes of either side at the same time."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SMALL_CHUNKS, Cli, run_process, snapshot_tree, write_tree
from tests.pause_helper import resume, start_paused
from tests.test_regions import _safetensors

SRC_PW = {"BCDR_PASSWORD": "source-pw"}
BOTH = {"BCDR_FROM_PASSWORD": "source-pw", "BCDR_PASSWORD": ""}


def _tree(base: Path, seed: int = 1, big: int = 400_000) -> Path:
    rng = random.Random(seed)
    return write_tree(
        base,
        {
            "ckpt/model.bin": rng.randbytes(big),
            "ckpt/twice.bin": b"\0" * 50_000 + rng.randbytes(30_000) + b"\0" * 50_000,
            "data/a.txt": b"hello " * 5000,
            "data/sub/b.txt": b"b" * 10,
            "empty": b"",
        },
    )


def _source(tmp_path: Path, cli_env: dict[str, str] | None = None) -> tuple[Path, Path, list[str]]:
    """An encrypted source repository with two snapshots of job ``ckpt`` (the second after a
    change) and one of job ``other``; (repo, tree, snapshot ids oldest first)."""
    env = {**SRC_PW, **(cli_env or {})}
    repo, tree = tmp_path / "src-repo", _tree(tmp_path / "tree")
    r = run_process("init", "--repo", repo, "--encrypt", "--chunk-size", SMALL_CHUNKS, env=env)
    assert r.code == 0, r.err
    ids = []
    for step in range(2):
        if step:
            with open(tree / "ckpt/model.bin", "r+b") as f:
                f.seek(100_000)
                f.write(random.Random(9).randbytes(20_000))
        r = run_process("backup", "--repo", repo, "--job", "ckpt", tree, "--json", env=env)
        assert r.code == 0, r.err
        ids.append(r.json()["snapshot"])
    r = run_process("backup", "--repo", repo, "--job", "other", tree / "data", "--json", env=env)
    assert r.code == 0, r.err
    ids.append(r.json()["snapshot"])
    return repo, tree, ids


def _copy(src: Path | str, dst: Path | str, *refs: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    r = run_process(
        "copy", "--from-repo", src, "--repo", dst, *refs, "--json", env={**BOTH, **(env or {})}
    )
    assert "Traceback" not in r.err, r.err
    return r


def _restored(repo: Path | str, snap: str, target: Path, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    r = run_process("restore", "--repo", repo, snap, "--target", target, env=env)
    assert r.code == 0, r.err
    return snapshot_tree(target)


def _snapshots(repo: Path | str, env: dict[str, str]) -> list[dict]:  # type: ignore[type-arg]
    r = run_process("snapshots", "--repo", repo, "--json", env=env)
    assert r.code == 0, r.err
    return r.json()  # type: ignore[no-any-return]


def _check_clean(repo: Path | str, env: dict[str, str]) -> None:
    r = run_process("check", "--repo", repo, "--read-data", env=env)
    assert r.code == 0, r.out + r.err


def test_copy_encrypted_to_plain_and_back_is_one_recovery_point(tmp_path: Path) -> None:
    src, _, ids = _source(tmp_path)
    plain = tmp_path / "plain"
    assert run_process("init", "--repo", plain).code == 0
    r = _copy(src, plain, "all")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["copied"] == 3 and doc["already_present"] == 0
    assert doc["stats"]["blobs_copied"] > 0
    # every copy restores to exactly the bytes and metadata of its source snapshot
    copies = {s["copy_of"]["snapshot"]: s for s in _snapshots(plain, {})}
    assert set(copies) == set(ids)
    source_snaps = {s["id"]: s for s in _snapshots(src, SRC_PW)}
    for sid, copy in copies.items():
        original = source_snaps[sid]
        for key in ("time", "job", "paths", "hostname", "tags"):
            assert copy[key] == original[key], key
        assert copy["original"] == sid
        want = _restored(src, sid, tmp_path / f"r-src-{sid[:8]}", SRC_PW)
        got = _restored(plain, copy["id"], tmp_path / f"r-dst-{sid[:8]}", {})
        assert got == want
    # the second ckpt snapshot's parent is the copy of the first
    assert copies[ids[1]]["parent"] == copies[ids[0]]["id"]
    _check_clean(plain, {})
    # `snapshots` says which are copies
    text = run_process("snapshots", "--repo", plain).out
    assert text.count("(copy of ") == 3 and ids[0][:8] in text

    # a rerun copies nothing and reads no data
    again = _copy(src, plain, "all").json()
    assert again["copied"] == 0 and again["already_present"] == 3
    assert again["stats"]["blobs_copied"] == 0 and again["stats"]["bytes_read"] == 0

    # copied back into the original (plain to encrypted): the same recovery points, no
    # duplicate snapshot
    r = run_process(
        "copy",
        "--from-repo",
        plain,
        "--repo",
        src,
        "all",
        "--json",
        env={"BCDR_PASSWORD": "source-pw"},
    )
    assert r.code == 0, r.err
    assert r.json()["copied"] == 0 and r.json()["already_present"] == 3
    assert len(_snapshots(src, SRC_PW)) == 3

    # into a third, encrypted repository from the copy: the recovery point keeps its name
    third = tmp_path / "third"
    assert run_process("init", "--repo", third, "--encrypt", env={"BCDR_PASSWORD": "t"}).code == 0
    r = run_process(
        "copy",
        "--from-repo",
        plain,
        "--repo",
        third,
        "latest",
        "--job",
        "ckpt",
        "--json",
        env={"BCDR_PASSWORD": "t"},
    )
    assert r.code == 0, r.err
    [snap] = _snapshots(third, {"BCDR_PASSWORD": "t"})
    assert snap["original"] == ids[1] and snap["job"] == "ckpt"
    _check_clean(third, {"BCDR_PASSWORD": "t"})


def test_copy_records_evidence_in_the_destination(tmp_path: Path) -> None:
    src, _, ids = _source(tmp_path)
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst).code == 0
    assert _copy(src, dst, "latest", "--job", "ckpt").code == 0
    r = run_process("evidence", "list", "--repo", dst, "--json")
    assert r.code == 0, r.err
    [record] = [x for x in r.json() if x["kind"] == "copy"]
    facts = record["facts"]
    assert [p["source_snapshot"] for p in facts["points"]] == [ids[1]]
    assert facts["points"][0]["recovery_point"] == ids[1]
    assert facts["bytes_copied"] > 0 and record["result"] == "ok"
    assert run_process("evidence", "verify", "--repo", dst).code == 0


def test_other_chunker_cuts_files_again_and_dedups_after(tmp_path: Path) -> None:
    src, tree, ids = _source(tmp_path)
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst, "--chunk-size", "8192,8192,65536").code == 0
    r = _copy(src, dst, "all")
    assert r.code == 0, r.err
    assert r.json()["stats"]["rechunked_files"] > 0
    [note] = r.json()["notes"]
    assert "cut files differently" in note and "--copy-chunker-params" in note
    copies = {s["copy_of"]["snapshot"]: s["id"] for s in _snapshots(dst, {})}
    for sid in ids:
        want = _restored(src, sid, tmp_path / f"a-{sid[:8]}", SRC_PW)
        assert _restored(dst, copies[sid], tmp_path / f"b-{sid[:8]}", {}) == want
    _check_clean(dst, {})
    # a rerun reads no data: the copy map keys whole files
    again = _copy(src, dst, "all").json()
    assert again["stats"]["bytes_read"] == 0 and again["stats"]["blobs_copied"] == 0
    # the files were cut as the destination cuts them: a backup of the same tree into it
    # stores nothing new but its trees
    r = run_process("backup", "--repo", dst, "--job", "ckpt", tree, "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["bytes_added"] < 20_000


def test_files_are_cut_again_as_a_backup_into_the_destination_cuts_them(
    tmp_path: Path,
) -> None:
    """Tensors of a safetensors file and region boundaries included: a backup of the same
    tree into the destination afterwards finds every chunk there."""
    rng = random.Random(4)
    tree = write_tree(tmp_path / "tree", {"plain.bin": rng.randbytes(300_000)})
    _safetensors(tree / "model.safetensors", 4, 60_000)  # 120 kB tensors, across regions
    src = tmp_path / "src"
    assert run_process("init", "--repo", src, "--chunk-size", SMALL_CHUNKS, env=SRC_PW).code == 0
    r = run_process("backup", "--repo", src, "--job", "j", tree, env=SRC_PW)
    assert r.code == 0, r.err
    dst = tmp_path / "dst"
    r = run_process(
        "init", "--repo", dst, "--chunk-size", "8192,8192,65536", "--region-size", 65536
    )
    assert r.code == 0, r.err
    r = _copy(src, dst, "all")
    assert r.code == 0, r.err
    assert r.json()["stats"]["rechunked_files"] == 2
    want = _restored(src, "latest", tmp_path / "a", SRC_PW)
    assert _restored(dst, "latest", tmp_path / "b", {}) == want
    r = run_process("backup", "--repo", dst, "--job", "j", tree, "--force-read", "--json")
    assert r.code == 0, r.err
    assert r.json()["stats"]["bytes_added"] < 20_000  # trees only: every chunk was there
    _check_clean(dst, {})


def test_copy_chunker_params_copies_chunks_as_they_are(tmp_path: Path) -> None:
    src, _, ids = _source(tmp_path)
    dst = tmp_path / "dst"
    r = run_process(
        "init",
        "--repo",
        dst,
        "--from-repo",
        src,
        "--copy-chunker-params",
        "--json",
        env={"BCDR_FROM_PASSWORD": "source-pw"},
    )
    assert r.code == 0, r.err
    src_cfg = json.loads((src / "config").read_bytes())
    assert r.json()["chunker"] == src_cfg["chunker"]
    r = _copy(src, dst, ids[0])
    assert r.code == 0, r.err
    assert r.json()["stats"]["rechunked_files"] == 0 and r.json()["notes"] == []
    first = r.json()["stats"]["bytes_copied"]
    # the second snapshot changed 20 kB of one file: little more is copied
    r = _copy(src, dst, ids[1])
    assert r.code == 0, r.err
    assert 0 < r.json()["stats"]["bytes_copied"] < first / 3
    assert r.json()["stats"]["blobs_skipped"] > 0
    # init refuses the flag without a source, and a source without the flag
    assert run_process("init", "--repo", tmp_path / "x", "--copy-chunker-params").code == 2
    r = run_process("init", "--repo", tmp_path / "y", "--from-repo", src)
    assert r.code == 2 and "--copy-chunker-params" in r.err


def test_source_password_is_its_own(tmp_path: Path) -> None:
    src, _, _ = _source(tmp_path)
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst, "--encrypt", env=SRC_PW).code == 0
    # BCDR_PASSWORD alone opens the destination, never the source
    r = run_process("copy", "--from-repo", src, "--repo", dst, "all", env=SRC_PW)
    assert r.code == 2
    assert "source repository" in r.err and "BCDR_FROM_PASSWORD" in r.err
    r = run_process(
        "copy",
        "--from-repo",
        src,
        "--repo",
        dst,
        "all",
        env={**SRC_PW, "BCDR_FROM_PASSWORD": "wrong"},
    )
    assert r.code == 1 and "source repository: wrong password" in r.err
    assert _snapshots(dst, SRC_PW) == []
    pw_file = tmp_path / "pw"
    pw_file.write_text("source-pw\n")
    pw_file.chmod(0o600)
    r = run_process(
        "copy",
        "--from-repo",
        src,
        "--repo",
        dst,
        "all",
        env={**SRC_PW, "BCDR_FROM_PASSWORD_FILE": str(pw_file)},
    )
    assert r.code == 0, r.err


def test_usage_errors(tmp_path: Path, cli: Cli) -> None:
    src, _, _ = _source(tmp_path)
    r = run_process("copy", "--from-repo", src, "--repo", src, "all", env=BOTH | SRC_PW)
    assert r.code == 2 and "same repository" in r.err
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst).code == 0
    r = _copy(src, dst)
    assert r.code == 2 and "name the snapshots" in r.err
    r = _copy(src, dst, "all", "latest")
    assert r.code == 2
    r = _copy(src, dst, "latest", "--job", "nope")
    assert r.code == 1 and "no snapshot of job 'nope'" in r.err
    r = _copy(src, dst, "ffffffff")
    assert r.code == 1 and "no snapshot with id" in r.err
    r = _copy(tmp_path / "nothing", dst, "all")
    assert r.code != 0 and "no repository here" in r.err
    assert _snapshots(dst, {}) == []


def _packs(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data").rglob("*") if p.is_file())


def test_missing_or_damaged_source_pack_commits_nothing(tmp_path: Path) -> None:
    src, _, _ = _source(tmp_path)
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst).code == 0
    packs = _packs(src)
    victim = max(packs, key=lambda p: p.stat().st_size)  # holds file data
    saved = victim.read_bytes()
    victim.unlink()
    r = _copy(src, dst, "all")
    assert r.code == 1
    assert victim.name[:12] in r.err and "missing" in r.err
    assert _snapshots(dst, {}) == []
    records = run_process("evidence", "list", "--repo", dst, "--json").json()
    assert [x["result"] for x in records if x["kind"] == "copy"] == ["failed"]
    # damaged: one byte flipped inside a blob
    damaged = bytearray(saved)
    damaged[100] ^= 0xFF
    victim.write_bytes(bytes(damaged))
    r = _copy(src, dst, "all")
    assert r.code == 1 and "Traceback" not in r.err
    assert _snapshots(dst, {}) == []
    # whole again: the copy goes through and checks clean
    victim.write_bytes(saved)
    assert _copy(src, dst, "all").code == 0
    _check_clean(dst, {})


def _copy_proc(src: Path, dst: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bcdr", "copy", "--from-repo", str(src), "--repo", str(dst), "all"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **BOTH},
    )


@pytest.mark.slow
def test_sigkill_at_random_points_then_a_rerun_finishes(tmp_path: Path) -> None:
    rng = random.Random(32)
    tree = write_tree(
        tmp_path / "tree", {f"shard-{i}.bin": rng.randbytes(1_500_000) for i in range(8)}
    )
    src = tmp_path / "src"
    r = run_process(
        "init",
        "--repo",
        src,
        "--encrypt",
        "--chunk-size",
        "16384,16384,131072",
        "--pack-size",
        "262144",
        env=SRC_PW,
    )
    assert r.code == 0, r.err
    for k in range(5):
        (tree / f"new-{k}.bin").write_bytes(rng.randbytes(3_000_000))
        assert run_process("backup", "--repo", src, "--job", "j", tree, env=SRC_PW).code == 0
    # how long a whole copy takes here: the kills land inside it
    scratch = tmp_path / "scratch"
    assert run_process("init", "--repo", scratch, "--pack-size", "262144").code == 0
    started = time.monotonic()
    assert _copy(src, scratch, "all").code == 0
    whole = time.monotonic() - started
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst, "--pack-size", "262144").code == 0
    copied_after_kill = []
    for _ in range(6):
        proc = _copy_proc(src, dst)
        time.sleep(rng.uniform(0.2, 0.6) * whole)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        snaps = dst / "snapshots"
        copied_after_kill.append(len(list(snaps.iterdir())) if snaps.exists() else 0)
    # the kills landed at different stages, at least two before the copy was done
    assert sum(n < 5 for n in copied_after_kill) >= 2, copied_after_kill
    r = _copy(src, dst, "all")
    assert r.code == 0, r.err
    copies = {s["copy_of"]["snapshot"]: s["id"] for s in _snapshots(dst, {})}
    assert len(copies) == len(_snapshots(dst, {})) == 5  # none twice, whatever the kills left
    for sid, cid in copies.items():
        want = _restored(src, sid, tmp_path / f"a-{sid[:8]}", SRC_PW)
        assert _restored(dst, cid, tmp_path / f"b-{cid[:8]}", {}) == want
    _check_clean(dst, {})
    _check_clean(src, SRC_PW)
    # the leftovers of killed runs go with the next prune, which keeps every copy whole
    r = run_process("prune", "--repo", dst, "--grace", "0")
    assert r.code == 0, r.err
    _check_clean(dst, {})


def test_a_prune_of_the_destination_after_forget_is_healed_by_the_next_copy(
    tmp_path: Path,
) -> None:
    """The copy map is a hint: a chunk it maps whose blob the destination pruned is copied
    again."""
    src, _, ids = _source(tmp_path)
    dst = tmp_path / "dst"
    assert run_process("init", "--repo", dst).code == 0
    assert _copy(src, dst, ids[0]).code == 0
    [copy] = _snapshots(dst, {})
    (dst / "snapshots" / copy["id"]).unlink()  # as a forget would
    r = run_process("prune", "--repo", dst, "--grace", "0")
    assert r.code == 0, r.err
    r = _copy(src, dst, "all")
    assert r.code == 0, r.err
    assert r.json()["copied"] == 3 and r.json()["stats"]["blobs_copied"] > 0
    _check_clean(dst, {})
    cid = {s["copy_of"]["snapshot"]: s["id"] for s in _snapshots(dst, {})}[ids[0]]
    want = _restored(src, ids[0], tmp_path / "a", SRC_PW)
    assert _restored(dst, cid, tmp_path / "b", {}) == want


# -- prunes at the same time --------------------------------------------------------------


def _paused_copy(tmp_path: Path, src: Path, dst: Path, snap: str) -> subprocess.Popen[str]:
    """Start tests.copy_pause_helper and wait until it has stopped itself, holding its
    locks (the copied packs uploaded, the snapshot not written)."""
    marker = tmp_path / "paused"
    cmd = [sys.executable, "-m", "tests.copy_pause_helper", str(src), str(dst), snap, str(marker)]
    return start_paused(cmd, marker, "copy")


def _plain_source(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """An unencrypted source: job ``old`` twice (the tree, then another), then job ``new``
    of the tree with one file more, which reuses every chunk of the first."""
    src = tmp_path / "src"
    assert run_process("init", "--repo", src, "--chunk-size", "4096,4096,32768").code == 0
    tree = write_tree(tmp_path / "tree", {f"f{i}": os.urandom(150_000) for i in range(6)})
    other = write_tree(tmp_path / "other", {"x": os.urandom(10_000)})
    ids = []
    for job, path in (("old", tree), ("old", other)):
        r = run_process("backup", "--repo", src, "--job", job, path, "--json")
        ids.append(r.json()["snapshot"])
    (tree / "new").write_bytes(os.urandom(5000))
    ids.append(
        run_process("backup", "--repo", src, "--job", "new", tree, "--json").json()["snapshot"]
    )
    return src, tree, ids


def _dest_with_old_copies(tmp_path: Path, src: Path, ids: list[str]) -> Path:
    dst = tmp_path / "dst"
    r = run_process(
        "init", "--repo", dst, "--pack-size", "65536", "--from-repo", src, "--copy-chunker-params"
    )
    assert r.code == 0, r.err
    assert _copy(src, dst, ids[0], ids[1]).code == 0
    return dst


def _copy_restores(tmp_path: Path, src: Path, dst: Path, sid: str) -> None:
    cid = {s["copy_of"]["snapshot"]: s["id"] for s in _snapshots(dst, {})}[sid]
    want = _restored(src, sid, tmp_path / f"want-{time.monotonic_ns()}", {})
    assert _restored(dst, cid, tmp_path / f"got-{time.monotonic_ns()}", {}) == want
    _check_clean(dst, {})


@pytest.mark.slow
def test_a_prune_of_the_destination_waits_for_a_running_copy(tmp_path: Path) -> None:
    src, _, ids = _plain_source(tmp_path)
    dst = _dest_with_old_copies(tmp_path, src, ids)
    proc = _paused_copy(tmp_path, src, dst, ids[2])
    try:
        r = run_process("forget", "--repo", dst, "--job", "old", "--keep-last", "1")
        assert r.code == 0, r.err
        r = run_process("prune", "--repo", dst, "--grace", "0", "--max-unused", "0", "--json")
        assert r.code == 0, r.err
        # the sweep waits for the copy instead of deleting what it reuses
        assert r.json()["packs_deleted"] == 0, r.json()
    finally:
        result = resume(proc)
    assert result["notes"] == []
    _copy_restores(tmp_path, src, dst, ids[2])
    r = run_process("prune", "--repo", dst, "--grace", "0", "--json")
    assert r.code == 0 and r.json()["marks_swept"], r.out + r.err
    _copy_restores(tmp_path, src, dst, ids[2])


@pytest.mark.slow
def test_commit_guard_copies_again_what_a_prune_swept_under_a_running_copy(
    tmp_path: Path,
) -> None:
    """The operator removes the copy's lock and prune sweeps the packs the copy reused (the
    copy map said the destination held them): the copy finds them gone before it commits,
    copies those chunks again from the source, and its snapshot restores."""
    src, _, ids = _plain_source(tmp_path)
    dst = _dest_with_old_copies(tmp_path, src, ids)
    proc = _paused_copy(tmp_path, src, dst, ids[2])
    try:
        assert run_process("unlock", "--repo", dst, "--remove-all").code == 0
        r = run_process("forget", "--repo", dst, "--job", "old", "--keep-last", "1")
        assert r.code == 0, r.err
        r = run_process("prune", "--repo", dst, "--grace", "0", "--max-unused", "0", "--json")
        assert r.code == 0 and r.json()["packs_deleted"], r.out + r.err
    finally:
        result = resume(proc)
    [note] = result["notes"]
    assert "no longer safely stored" in note and "pass 2" in note
    _copy_restores(tmp_path, src, dst, ids[2])


@pytest.mark.slow
def test_a_prune_of_the_source_cannot_sweep_under_a_running_copy(tmp_path: Path) -> None:
    src, _, ids = _plain_source(tmp_path)
    dst = _dest_with_old_copies(tmp_path, src, ids)
    proc = _paused_copy(tmp_path, src, dst, ids[2])
    try:
        r = run_process("forget", "--repo", src, "--job", "old", "--keep-last", "1")
        assert r.code == 0, r.err
        r = run_process(
            "prune",
            "--repo",
            src,
            "--grace",
            "0",
            "--max-unused",
            "0",
            "--json",
            env={"BCDR_LOCK_WAIT": "1"},
        )
        # the copy's read lock keeps the sweep out: nothing the copy reads is deleted
        assert "packs_deleted" not in r.out or r.json()["packs_deleted"] == 0, r.out + r.err
    finally:
        result = resume(proc)
    assert [s["copied"] for s in result["snapshots"]] == [True]
    _copy_restores(tmp_path, src, dst, ids[2])
    _check_clean(src, {})
