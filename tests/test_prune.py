"""Prune: frees what no snapshot needs, never what one does, while backups run; survives a
kill at any moment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.check import check
from bcdr.actions.restore import restore
from bcdr.clock import FakeClock
from bcdr.errors import LockLost, ObjectNotFound
from bcdr.repository.locks import BACKUP, RepoLock
from bcdr.repository.marks import list_marks, marked_packs
from bcdr.repository.prune import prune_repository
from bcdr.repository.repo import INDEX_LOAD_ATTEMPTS, Repository, SnapshotFields
from bcdr.repository.tree import DIR, FILE, decode_tree
from bcdr.storage.local import LocalStorage
from tests.conftest import (
    init_small,
    restored_root,
    run_process,
    snapshot_tree,
    temp_files,
    write_tree,
)
from tests.prune_helper import tree_digests

CHUNKS = "16384,16384,131072"
PACK = 65536


def _repo(path: Path, clock: FakeClock | None = None) -> Repository:
    return Repository.open(LocalStorage(path), clock=clock)


def _backup(path: Path, src: Path, job: str, clock: FakeClock | None = None) -> str:
    repo = _repo(path, clock)
    try:
        return run_backup(repo, BackupRequest(paths=(str(src),), job=job)).snapshot.id
    finally:
        repo.close()


def _blobs(repo: Repository, snap_id: str) -> set[bytes]:
    """Every blob (trees and chunks) a snapshot refers to."""
    repo.load_index()
    out, stack = set(), [bytes.fromhex(repo.load_snapshot(snap_id).tree)]
    while stack:
        tree = stack.pop()
        out.add(tree)
        for node in decode_tree(repo.load_blob(tree), "tree"):
            if node.type == DIR and node.subtree:
                stack.append(node.subtree)
            elif node.type == FILE:
                out.update(node.content)
    return out


def _restores(repo_path: Path, snap_id: str, src_digests: dict[str, str], out: Path) -> None:
    result = restore(str(repo_path), snap_id, str(out))
    assert result.ok, result.stats.errors
    roots = [p for p in out.rglob("*") if p.is_dir() and tree_digests(p) == src_digests]
    assert roots, f"snapshot {snap_id[:8]} did not restore to its source content"


@pytest.fixture
def two_generations(tmp_path: Path) -> tuple[Path, Path, str, str]:
    """A repository with an old snapshot (to forget) and a new one sharing half its files."""
    repo = tmp_path / "repo"
    init_small(repo, CHUNKS, PACK)
    import random

    rng = random.Random(5)
    src = write_tree(tmp_path / "src", {f"f{i}": rng.randbytes(150_000) for i in range(8)})
    old = _backup(repo, src, "j")
    for i in range(4):
        (src / f"f{i}").write_bytes(rng.randbytes(150_000))
    new = _backup(repo, src, "j")
    return repo, src, old, new


def test_forget_then_prune_frees_space_and_kept_snapshot_restores(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo, src, old, new = two_generations
    before = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    r = run_process("forget", "--repo", repo, "--keep-last", "1", "--dry-run")
    assert r.code == 0 and f"would remove  {old[:8]}" in r.out and "nothing changed" in r.out
    assert (repo / "snapshots" / old).exists()
    r = run_process("forget", "--repo", repo, "--keep-last", "1", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["removed"] == [old]
    r = run_process("prune", "--repo", repo, "--grace", "0", "--json")
    assert r.code == 0, r.err
    rep = json.loads(r.out)
    assert rep["packs_deleted"] > 0 and rep["pending"] == 0 and rep["packs_kept"] == []
    after = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    # Four of eight 150 kB files were replaced: 600 kB belonged to the old snapshot only; all but
    # the unused share prune may leave in partly used packs (10%) is freed.
    assert before - after > 600_000 - 0.1 * before
    report = check(str(repo), read_data=True)
    assert report.ok and not report.leftovers, (report.errors, report.leftovers)
    out = tmp_path / "out"
    assert restore(str(repo), new, str(out)).ok
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_prune_repacks_partly_used_packs_and_refuses_nothing_it_needs(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo, src, old, new = two_generations
    (repo / "snapshots" / old).unlink()
    r = run_process("prune", "--repo", repo, "--grace", "0", "--max-unused", "0", "--json")
    rep = json.loads(r.out)
    assert r.code == 0 and rep["packs_repacked"] > 0 and rep["bytes_repacked"] > 0
    # Nothing unused is left: a second prune finds nothing to mark.
    rep2 = json.loads(run_process("prune", "--repo", repo, "--grace", "0", "--json").out)
    assert rep2["packs_unused"] == rep2["packs_repacked"] == rep2["packs_unindexed"] == 0
    assert rep2["bytes_used"] == rep2["bytes_stored"] - _index_overhead(repo)
    out = tmp_path / "out"
    assert restore(str(repo), new, str(out)).ok
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def _index_overhead(repo: Path) -> int:
    """Bytes of packs that are not blobs (padding, headers, trailers)."""
    from bcdr.repository.pack import parse_pack

    cipher = _repo(repo).cipher
    total = 0
    for p in (repo / "data").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            total += len(data) - sum(e.stored_len for e in parse_pack(data, cipher, "pack"))
    return total


def test_mark_waits_for_grace_period_then_sweeps(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo_path, _, old, new = two_generations
    (repo_path / "snapshots" / old).unlink()
    clock = FakeClock(datetime.now(UTC))
    first = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert first.mark and first.packs_deleted == 0 and first.pending == 1
    clock.advance(timedelta(minutes=30))
    second = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert second.packs_deleted == 0 and any("grace period until" in p for p in second.postponed)
    clock.advance(timedelta(minutes=31))
    third = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert third.marks_swept == [first.mark] and third.packs_deleted > 0
    assert check(str(repo_path)).ok


def test_sweep_waits_for_a_backup_that_started_before_the_mark(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo_path, _, old, _ = two_generations
    (repo_path / "snapshots" / old).unlink()
    storage = LocalStorage(repo_path)
    # A backup that loaded the index before the mark existed may reuse any blob in it.
    running = RepoLock(storage, FakeClock(datetime.now(UTC)), kind=BACKUP, url="r").acquire()
    try:
        rep = prune_repository(_repo(repo_path), grace=timedelta(0))
        assert rep.mark and rep.packs_deleted == 0
        assert any("waiting for backup lock" in p for p in rep.postponed), rep.postponed
    finally:
        running.release()
    rep = prune_repository(_repo(repo_path), grace=timedelta(0))
    assert rep.packs_deleted > 0 and rep.pending == 0


def _marked_orphan(tmp_path: Path, seed: int, size: int):  # type: ignore[no-untyped-def]
    """A repository whose only snapshot was forgotten and whose data a prune just marked
    (grace 1h): (repo path, source, open repository, the forgotten manifest, clock)."""
    import random

    repo_path = tmp_path / "repo"
    init_small(repo_path, CHUNKS, PACK)
    src = write_tree(tmp_path / "src", {"a": random.Random(seed).randbytes(size)})
    gone = _backup(repo_path, src, "old")
    repo = _repo(repo_path)
    manifest = repo.load_snapshot(gone)
    (repo_path / "snapshots" / gone).unlink()
    clock = FakeClock(datetime.now(UTC))
    rep = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert rep.mark and rep.packs_unused > 0
    return repo_path, src, repo, manifest, clock


def test_backup_after_mark_never_builds_on_marked_data(tmp_path: Path) -> None:
    """The dangerous case: a snapshot committed after the mark (by a backup that started
    before it) refers to marked blobs; a later backup of the same job must not reuse them,
    because that snapshot may be forgotten and the marked packs swept while it runs."""
    repo_path, src, repo, manifest, clock = _marked_orphan(tmp_path, 1, 300_000)
    # What a backup that started before the mark commits: the same tree, now job "b".
    late = repo.save_snapshot(replace(manifest, job="b", time=datetime.now(UTC).isoformat()))
    marked = marked_packs(LocalStorage(repo_path), repo.cipher)
    newer = _backup(repo_path, src, "b")  # parent: `late`; file "a" looks unchanged
    check_repo = _repo(repo_path)
    check_repo.load_index()
    for blob in _blobs(check_repo, newer):
        loc = check_repo.index.lookup(blob)
        assert loc is not None and loc.pack not in marked, "reused a marked-only blob"
    (repo_path / "snapshots" / late.id).unlink()  # `late` forgotten; then the sweep
    clock.advance(timedelta(hours=2))
    rep = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert rep.packs_deleted > 0
    _restores(repo_path, newer, tree_digests(src), tmp_path / "out")


def test_snapshot_written_during_grace_keeps_its_packs(tmp_path: Path) -> None:
    repo_path, src, repo, manifest, clock = _marked_orphan(tmp_path, 2, 200_000)
    late = repo.save_snapshot(replace(manifest, job="b"))  # an in-flight backup's commit
    clock.advance(timedelta(hours=2))
    rep = prune_repository(_repo(repo_path, clock), grace=timedelta(hours=1))
    assert rep.packs_kept and rep.packs_deleted == 0
    _restores(repo_path, late.id, tree_digests(src), tmp_path / "out")
    assert not list(list_marks(LocalStorage(repo_path), repo.cipher))


def test_prune_refuses_when_a_snapshot_cannot_be_read(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo_path, _, old, new = two_generations
    (repo_path / "snapshots" / old).write_bytes(b"garbage")
    r = run_process("prune", "--repo", repo_path, "--grace", "0")
    assert r.code == 1 and f"snapshot {old[:12]} cannot be read" in r.err
    assert "nothing was deleted" in r.err and "Traceback" not in r.err


def test_backups_and_prunes_concurrently_every_snapshot_restores(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_small(repo, CHUNKS, PACK)
    stop, totals = tmp_path / "stop", tmp_path / "totals.json"
    py = [sys.executable, "-m", "tests.prune_helper"]
    pruner = subprocess.Popen([*py, "prunes", str(repo), str(stop), str(totals)])
    workers = [
        subprocess.Popen(
            [
                *py,
                "backups",
                str(repo),
                str(tmp_path / f"src{w}"),
                str(w),
                "12",
                str(tmp_path / f"made{w}.json"),
            ]
        )
        for w in range(2)
    ]
    try:
        for p in workers:
            assert p.wait(timeout=300) == 0
    finally:
        stop.write_text("")
        assert pruner.wait(timeout=300) == 0
    made: dict[str, dict[str, str]] = {}
    for w in range(2):
        made.update(json.loads((tmp_path / f"made{w}.json").read_text()))
    stats = json.loads(totals.read_text())
    assert stats["sweeps"] > 0 and stats["deleted"] > 0, stats  # prunes really deleted data
    assert len(made) == 24
    # Every snapshot still in the repository restores to exactly what was backed up.
    final = prune_repository(_repo(repo), grace=timedelta(0), max_unused=0)
    assert final.pending == 0 and not final.problems
    kept = {p.name for p in (repo / "snapshots").iterdir()}
    assert len(kept) == 4  # retention: last 2 of each worker's job
    report = check(str(repo), read_data=True)
    assert report.ok and not report.leftovers, (report.errors, report.leftovers)
    for i, snap in enumerate(sorted(kept)):
        _restores(repo, snap, made[snap], tmp_path / f"out{i}")


def test_prune_killed_at_any_moment_leaves_a_repository_that_restores(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo, src, old, new = two_generations
    (repo / "snapshots" / old).unlink()
    py = [sys.executable, "-m", "tests.prune_helper", "prune"]
    probe = tmp_path / "probe"
    shutil.copytree(repo, probe)
    done = subprocess.run([*py, str(probe), "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    writes = int(done.stdout.split()[-1])  # puts and deletes of a complete prune
    assert writes > 10
    step = max(1, writes // 40)  # every write when there are few, else 40 spread evenly
    points = sorted({*range(1, writes, step), writes - 1})
    for k in points:
        trial = tmp_path / f"kill{k}"
        shutil.copytree(repo, trial)
        killed = subprocess.run([*py, str(trial), str(k)], capture_output=True, timeout=120)
        assert killed.returncode == -9, (k, killed.stderr)
        report = check(str(trial))
        assert report.ok, (k, report.errors)
        _restores(trial, new, tree_digests(src), tmp_path / f"out{k}")
        # The next prune finishes the work: nothing pending, nothing left over.
        rep = prune_repository(_repo(trial), grace=timedelta(0), max_unused=0)
        assert rep.pending == 0, (k, rep)
        after = check(str(trial), read_data=True)
        assert after.ok and not after.leftovers, (k, after.errors, after.leftovers)
        _restores(trial, new, tree_digests(src), tmp_path / f"again{k}")


def test_plan_applies_retention_after_each_backup_and_runs_prune_jobs(tmp_path: Path) -> None:
    import random
    import time

    rng = random.Random(3)
    data = write_tree(tmp_path / "data", {"a": rng.randbytes(100_000)})
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """\
version: 1
name: keep
repositories:
  local: {url: repo}
backups:
  ckpt:
    paths: [data]
    repository: local
    schedule: daily
    retention: {keep_last: 2}
prunes:
  gc:
    repository: local
    schedule: weekly
    max_unused: 0%
    grace: 1s
"""
    )
    state = {"BCDR_STATE_DIR": str(tmp_path / "state")}
    for _ in range(4):
        (data / "a").write_bytes(rng.randbytes(100_000))
        r = run_process("run", plan, "--job", "ckpt", "--json", env=state)
        assert r.code == 0, r.err
    job = json.loads(r.out)["jobs"][0]
    assert any("retention (last 2): kept 2, forgot 1" in n for n in job["notes"]), job["notes"]
    assert len(list((tmp_path / "repo" / "snapshots").iterdir())) == 2
    # The forget decisions are evidence: policy, and each snapshot kept or removed, and why.
    repo = _repo(tmp_path / "repo")
    from bcdr.compliance.evidence import read_records
    from bcdr.compliance.records import ForgetFacts, typed

    records = typed(read_records(repo, "forget"), ForgetFacts)
    assert len(records) == 4  # one per run, also when it removed nothing
    assert [len(r.facts.removed) for r in records] == [0, 0, 1, 1]
    assert all(r.plan == "keep" and r.job == "ckpt" and r.plan_digest for r in records)
    decisions = records[-1].facts.groups[0].decisions
    assert [d.reasons for d in decisions] == [["newest", "last #1"], ["last #2"], []]
    first = run_process("run", plan, "--job", "gc", "--json", env=state)
    assert first.code == 0, first.err
    time.sleep(1.2)  # the grace period
    second = run_process("run", plan, "--job", "gc", "--json", env=state)
    assert second.code == 0, second.err
    job = json.loads(second.out)["jobs"][0]
    assert job["prune"]["packs_deleted"] > 0 and job["prune"]["pending"] == 0, job
    result = restore(str(tmp_path / "repo"), "latest", str(tmp_path / "out"))
    assert result.ok
    assert snapshot_tree(restored_root(tmp_path / "out", data)) == snapshot_tree(data)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["forget", "--keep-daily", "0"], "this retention policy keeps nothing"),
        (["forget", "--keep-daily", "-1"], "must not be negative"),
        (["forget", "--keep-within", "soon"], "is not a duration"),
        (["forget", "--keep-last", "1", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["prune", "--max-unused", "150"], "between 0 and 100"),
        (["prune", "--grace", "-5"], "is not a duration"),
    ],
)
def test_forget_and_prune_refuse_bad_input_clearly(
    tmp_path: Path, repo: str, args: list[str], message: str
) -> None:
    r = run_process(*args, "--repo", repo)
    assert r.code == 2, (r.code, r.err)
    assert message in r.err and "Traceback" not in r.err


def test_prune_job_before_the_first_backup_and_in_a_dry_run(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nname: p\nrepositories:\n  local: {url: repo}\n"
        "prunes:\n  gc: {repository: local, schedule: weekly}\n"
    )
    state = {"BCDR_STATE_DIR": str(tmp_path / "state")}
    r = run_process("run", plan, "--dry-run", env=state)
    assert r.code == 0 and "would prune repository 'local'" in r.out, r.out + r.err
    r = run_process("run", plan, env=state)
    assert r.code == 0 and "does not exist yet: nothing to prune" in r.out, r.out + r.err
    assert not (tmp_path / "repo").exists()


def test_backup_whose_lock_expired_does_not_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path = tmp_path / "repo"
    init_small(repo_path, CHUNKS, PACK)
    src = write_tree(tmp_path / "src", {"a": b"x" * 50_000})
    clock = FakeClock(datetime.now(UTC))
    repo = _repo(repo_path, clock)
    fields = repo.new_snapshot_fields

    def suspended() -> SnapshotFields:  # the process slept past the lock's expiry
        clock.advance(timedelta(minutes=31))
        return fields()

    monkeypatch.setattr(repo, "new_snapshot_fields", suspended)
    with pytest.raises(LockLost):
        run_backup(repo, BackupRequest(paths=(str(src),), job="j"))
    assert not list(LocalStorage(repo_path).list("snapshots/"))


def test_index_file_replaced_while_loading_is_reloaded(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str]
) -> None:
    repo_path = two_generations[0]

    class Rewritten(LocalStorage):
        """The first read of an index file finds it gone, as when a sweep replaced it."""

        missed = 0

        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            if key.startswith("index/") and not Rewritten.missed:
                Rewritten.missed += 1
                raise ObjectNotFound(key)
            return super().get(key, offset, length)

    repo = Repository.open(Rewritten(repo_path))
    repo.load_index()
    assert Rewritten.missed == 1
    assert len(repo.index) == len(
        _blobs(_repo(repo_path), two_generations[3]) | _blobs(_repo(repo_path), two_generations[2])
    )


@pytest.mark.parametrize("misses", [INDEX_LOAD_ATTEMPTS - 1, INDEX_LOAD_ATTEMPTS])
def test_index_replaced_load_after_load_is_retried_then_reported(
    tmp_path: Path, two_generations: tuple[Path, Path, str, str], misses: int
) -> None:
    """A prune running round after round can replace an index file under several loads in a
    row (it made a concurrent backup fail with three attempts): the loader backs off and
    retries, and names the file once it has tried INDEX_LOAD_ATTEMPTS times."""
    repo_path = two_generations[0]
    missed: list[str] = []

    class Rewritten(LocalStorage):
        def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
            if key.startswith("index/") and len(missed) < misses:
                missed.append(key)
                raise ObjectNotFound(f"not found: {key}")
            return super().get(key, offset, length)

    repo = Repository.open(Rewritten(repo_path))
    if misses < INDEX_LOAD_ATTEMPTS:
        repo.load_index()
        assert len(missed) == misses and len(repo.index) > 0
    else:
        with pytest.raises(ObjectNotFound, match="index/"):
            repo.load_index()


def test_bad_lock_wait_is_a_clear_error(tmp_path: Path, repo: str) -> None:
    r = run_process("check", "--repo", repo, env={"BCDR_LOCK_WAIT": "soon"})
    assert r.code == 2 and "BCDR_LOCK_WAIT='soon'" in r.err and "Traceback" not in r.err


def test_prune_removes_temporary_files_of_writes_interrupted_a_day_ago(
    tmp_path: Path, repo: str
) -> None:
    """A crashed backup leaves the pack it was filling in tmp/ (nothing refers to it). Prune
    removes such files once nothing has written to them for a day; a file being written by
    a live backup is seconds old and stays, whatever the grace period."""
    src = write_tree(tmp_path / "src", {"f": b"data" * 1000})
    assert run_process("backup", "--repo", repo, src).code == 0
    fresh, old = temp_files(repo, "staged.3d4e5f.tmp", "staged.0a1b2c.tmp", timedelta(days=2))

    r = run_process("prune", "--repo", repo, "--dry-run")
    assert r.code == 0 and "would remove 1 temporary file(s) in tmp/" in r.out, r.out + r.err
    assert old.exists() and fresh.exists()
    r = run_process("prune", "--repo", repo, "--grace", "0")
    assert r.code == 0 and "removed 1 temporary file(s) in tmp/" in r.out, r.out + r.err
    assert not old.exists() and fresh.exists()
    r = run_process("check", "--repo", repo)
    assert "temporary file tmp/staged.3d4e5f.tmp" in r.out and "0a1b2c" not in r.out
    r = run_process("prune", "--repo", repo, "--json")
    assert r.code == 0 and json.loads(r.out)["temp_files_removed"] == []
