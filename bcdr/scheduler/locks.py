"""Never two runs of one job at once, even across processes; at most ``max_parallel`` jobs of
one plan at once. Kernel file locks (``flock``) in the state directory: the kernel drops a
lock when its process dies, so a crash never keeps a job locked."""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path


class FileLock:
    """A non-blocking exclusive flock on ``path``; ``acquire`` says whether it was taken."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder(self) -> str:
        """The pid written by the last holder (for messages)."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


def _safe(name: str) -> str:
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
    return f"{clean}-{digest}"


def job_lock(state_dir: Path, plan: str, job: str) -> FileLock:
    return FileLock(state_dir / "locks" / f"{_safe(plan)}.{_safe(job)}.job")


def plan_slot(state_dir: Path, plan: str, max_parallel: int) -> FileLock | None:
    """One of the plan's ``max_parallel`` run slots, held; None when all are taken."""
    for i in range(max_parallel):
        lock = FileLock(state_dir / "locks" / f"{_safe(plan)}.slot{i}")
        if lock.acquire():
            return lock
    return None
