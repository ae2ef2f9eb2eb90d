"""Processes for the prune tests.

``python -m tests.prune_helper prune REPO KILL_AFTER_WRITES``
    one prune (grace 0, max-unused 0) through FaultyStorage; SIGKILL after that many puts and
    deletes (0: never). Prints the number of writes when it completes.
``python -m tests.prune_helper backups REPO SRC WORKER ROUNDS OUT``
    ROUNDS backups of a changing tree as job w<WORKER>, each followed by retention (keep last 2);
    writes {snapshot id: {relative path: sha256}} of every snapshot it made to OUT.
``python -m tests.prune_helper prunes REPO STOP OUT``
    prunes (grace 0, max-unused 0) until the file STOP exists; writes the totals to OUT.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.forget import apply_retention
from bcdr.repository.prune import prune_repository
from bcdr.repository.repo import Repository
from bcdr.retention import Policy
from bcdr.storage.faulty import FaultyStorage
from bcdr.storage.local import LocalStorage


def tree_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def one_prune(repo_path: str, kill_after: int) -> None:
    storage = FaultyStorage(LocalStorage(repo_path), kill_after_writes=kill_after or None)
    repo = Repository.open(storage)
    prune_repository(repo, grace=timedelta(0), max_unused=0)
    print(storage.writes)


def backups(repo_path: str, src: str, worker: int, rounds: int, out: str) -> None:
    rng = random.Random(worker)
    shared = random.Random(99)
    base = Path(src)
    made: dict[str, dict[str, str]] = {}
    for r in range(rounds):
        # Some files stay, some change, one is shared by every worker (dedup across jobs).
        for i in range(6):
            path = base / f"d{i % 2}" / f"f{i}"
            if r == 0 or rng.random() < 0.4:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(rng.randbytes(rng.randrange(20_000, 120_000)))
        (base / "shared").write_bytes(shared.randbytes(60_000 + r * 1000))
        repo = Repository.open(LocalStorage(repo_path))
        try:
            result = run_backup(repo, BackupRequest(paths=(src,), job=f"w{worker}"))
            made[result.snapshot.id] = tree_digests(base)
            apply_retention(repo, Policy(last=2), UTC, job=f"w{worker}")
        finally:
            repo.close()
    Path(out).write_text(json.dumps(made))


def prunes(repo_path: str, stop: str, out: str) -> None:
    totals = {"runs": 0, "marks": 0, "sweeps": 0, "deleted": 0, "repacked": 0, "kept": 0}
    while not Path(stop).exists():
        repo = Repository.open(LocalStorage(repo_path))
        try:
            rep = prune_repository(repo, grace=timedelta(0), max_unused=0)
        finally:
            repo.close()
        totals["runs"] += 1
        totals["marks"] += rep.mark is not None
        totals["sweeps"] += len(rep.marks_swept)
        totals["deleted"] += rep.packs_deleted
        totals["repacked"] += rep.packs_repacked
        totals["kept"] += len(rep.packs_kept)
        time.sleep(0.05)
    Path(out).write_text(json.dumps(totals))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prune":
        one_prune(args[0], int(args[1]))
    elif cmd == "backups":
        backups(args[0], args[1], int(args[2]), int(args[3]), args[4])
    elif cmd == "prunes":
        prunes(*args)
    else:
        raise SystemExit(f"unknown command {cmd}")
