"""Property: over random sequences of backup, forget, prune, failed backups and lost objects,
every snapshot `snapshots` lists either restores byte for byte or is named by `check`; a new
backup always restores; and after `repair index` and `repair snapshots --forget` every listed
snapshot restores, holding exactly the original's files minus what the repair says was lost.
"""

from __future__ import annotations

import os
import random
import shutil
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.check import check
from bcdr.actions.forget import forget
from bcdr.actions.prune import prune
from bcdr.actions.repair import repair_index_action, repair_snapshots_action
from bcdr.actions.restore import restore
from bcdr.errors import BcdrError, StorageError
from bcdr.repository.prune import PruneRefused
from bcdr.repository.repo import Repository
from bcdr.retention import Policy
from bcdr.storage.faulty import FaultyStorage
from bcdr.storage.local import LocalStorage
from tests.conftest import init_small

Files = dict[str, bytes]

STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("backup"), st.integers(0, 2**16)),
        st.tuples(st.just("forget"), st.integers(1, 3)),
        st.tuples(st.just("prune"), st.just(0)),
        st.tuples(st.just("failed-backup"), st.integers(1, 6)),
        st.tuples(st.just("lose-pack"), st.integers(0, 2**16)),
        st.tuples(st.just("lose-index"), st.integers(0, 2**16)),
    ),
    min_size=2,
    max_size=8,
)


def _change(src: Path, files: Files, seed: int) -> None:
    """Add, rewrite or delete a few files (a checkpoint folder evolving)."""
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        name = f"d{rng.randrange(3)}/f{rng.randrange(6)}"
        if name in files and rng.random() < 0.3:
            (src / name).unlink()
            del files[name]
            continue
        data = rng.randbytes(rng.randrange(0, 40_000))
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
        files[name] = data


def _restored(repo: str, snap: str, src: Path, target: Path) -> Files | None:
    """The files a snapshot restores (None if the restore fails)."""
    shutil.rmtree(target, ignore_errors=True)
    try:
        result = restore(repo, snap, str(target))
    except BcdrError:
        return None
    if not result.ok:
        return None
    root = target / str(src).lstrip("/")
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _backup(repo: str, src: Path, storage: LocalStorage | FaultyStorage | None = None) -> str:
    rp = Repository.open(storage or LocalStorage(repo))
    try:
        return run_backup(rp, BackupRequest(paths=(str(src),), job="j")).snapshot.id
    finally:
        rp.close()


def _listed(repo: str) -> list[str]:
    rp = Repository.open(LocalStorage(repo))
    return [s.id for s in rp.list_snapshots()]


def _objects(repo: Path, folder: str) -> list[Path]:
    return sorted(p for p in (repo / folder).rglob("*") if p.is_file())


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("BCDR_PROP_EXAMPLES", "15")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=STEPS)
def test_every_listed_snapshot_restores_or_is_named_and_repair_restores_all(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]]
) -> None:
    base = tmp_path_factory.mktemp("prop")
    repo_path, src, scratch = base / "repo", base / "src", base / "out"
    init_small(repo_path, "4096,4096,32768", 65536)
    repo = str(repo_path)
    src.mkdir()
    files: Files = {}
    expected: dict[str, Files] = {}  # snapshot id -> its files

    for op, arg in steps:
        if op == "backup":
            _change(src, files, arg)
            snap = _backup(repo, src)
            expected[snap] = dict(files)
            # a new backup restores, whatever was lost before it
            assert _restored(repo, snap, src, scratch) == files, (op, snap)
        elif op == "failed-backup":
            _change(src, files, arg)
            faulty = FaultyStorage(LocalStorage(repo), fail_after_puts=arg)
            try:
                expected[_backup(repo, src, faulty)] = dict(files)
            except StorageError:
                pass  # stopped mid-way: its packs are leftovers
        elif op == "forget" and _listed(repo):
            forget(repo, Policy(last=arg), UTC, job="j")
        elif op == "prune":
            try:
                prune(repo, grace=timedelta(0), max_unused=0)
            except PruneRefused:
                pass  # a snapshot or tree cannot be read: prune deletes nothing
        elif op == "lose-pack" and _objects(repo_path, "data"):
            packs = _objects(repo_path, "data")
            packs[arg % len(packs)].unlink()
        elif op == "lose-index" and _objects(repo_path, "index"):
            index = _objects(repo_path, "index")
            index[arg % len(index)].unlink()
        # The invariant: every listed snapshot restores as it was, or check names it.
        report = check(repo)
        for snap in _listed(repo):
            if snap not in report.damaged_snapshots:
                assert _restored(repo, snap, src, scratch) == expected[snap], (op, snap)

    repair_index_action(repo)
    result, _ = repair_snapshots_action(repo, forget=True)
    lost_in = {item.new: item for item in result.repaired if item.new}
    rp = Repository.open(LocalStorage(repo))
    for kept in rp.list_snapshots():
        got = _restored(repo, kept.id, src, scratch)
        assert got is not None, kept.id
        if kept.id in lost_in:
            original = expected[lost_in[kept.id].snapshot]
            assert kept.repaired and kept.repaired["from"] == lost_in[kept.id].snapshot
            # what is left is exactly the original's, file for file, and every file that is
            # not there is one the repair says it lost (itself, or a folder above it)
            assert all(original[name] == data for name, data in got.items())
            lost = [p.split(" (")[0].rstrip("/") for p in lost_in[kept.id].lost]
            for name in set(original) - set(got):
                full = f"{src}/{name}"
                assert any(full == p or full.startswith(p + "/") for p in lost), (name, lost)
        else:
            assert got == expected[kept.id], kept.id
    assert check(repo).ok
