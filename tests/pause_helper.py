"""A backup that stops itself mid-way: ``python -m tests.pause_helper REPO SRC JOB MARKER``.

It backs up SRC (job JOB) through a storage that, on the first index write (its packs are
uploaded, its snapshot not yet written), writes MARKER and stops with SIGSTOP: the test then
acts on the repository (forget, prune, delete packs) while the backup holds its lock, and
continues it with SIGCONT. Prints the backup's result as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from bcdr.storage.wrap import StorageWrapper


class PauseStorage(StorageWrapper):
    def __init__(self, inner: LocalStorage, marker: Path):
        super().__init__(inner)
        self.marker = marker
        self.paused = False

    def put(self, key: str, data: bytes) -> bool:
        if key.startswith("index/") and not self.paused:
            self.paused = True
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGSTOP)
        return self.inner.put(key, data)


if __name__ == "__main__":
    repo_path, src, job, marker = sys.argv[1:5]
    repo = Repository.open(PauseStorage(LocalStorage(repo_path), Path(marker)))
    result = run_backup(repo, BackupRequest(paths=(src,), job=job))
    repo.close()
    print(json.dumps({"snapshot": result.snapshot.id, "notes": result.notes}))
