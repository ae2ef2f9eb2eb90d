"""Run one backup through FaultyStorage: ``python -m tests.crash_helper REPO SRC KILL_AFTER``.

KILL_AFTER is a put count (0: never), or a key prefix such as ``snapshots/``.

Prints the number of puts when it was not killed."""

from __future__ import annotations

import sys

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.repository.repo import Repository
from bcdr.storage.faulty import FaultyStorage
from bcdr.storage.local import LocalStorage

if __name__ == "__main__":
    repo_path, src, kill_after = sys.argv[1], sys.argv[2], sys.argv[3]
    if kill_after.isdigit():
        storage = FaultyStorage(LocalStorage(repo_path), kill_after_puts=int(kill_after) or None)
    else:
        storage = FaultyStorage(LocalStorage(repo_path), kill_after_prefix=kill_after)
    repo = Repository.open(storage)
    run_backup(repo, BackupRequest(paths=(src,), job="crash"))
    print(storage.puts)
