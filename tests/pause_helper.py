"""A backup that stops itself mid-way: ``python -m tests.pause_helper REPO SRC JOB MARKER``.

It backs up SRC (job JOB) through a storage that, on the first index write (its packs are
uploaded, its snapshot not yet written), writes MARKER and stops with SIGSTOP: the test then
acts on the repository (forget, prune, delete packs) while the backup holds its lock, and
continues it with SIGCONT. Prints the backup's result as JSON.

:func:`start_paused` and :func:`resume` drive such a helper (this one, or
``tests.copy_pause_helper``) from a test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

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


def start_paused(cmd: list[str], marker: Path, what: str) -> subprocess.Popen[str]:
    """Start a helper that stops itself once it wrote ``marker``; return once it has."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=Path(__file__).parent.parent,
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the {what} did not reach its pause: {proc.communicate()}")
        time.sleep(0.05)
    time.sleep(0.2)  # it stops itself right after the marker
    return proc


def resume(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Continue a paused helper; its result (the JSON it printed last)."""
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    repo_path, src, job, marker = sys.argv[1:5]
    repo = Repository.open(PauseStorage(LocalStorage(repo_path), Path(marker)))
    result = run_backup(repo, BackupRequest(paths=(src,), job=job))
    repo.close()
    print(json.dumps({"snapshot": result.snapshot.id, "notes": result.notes}))
