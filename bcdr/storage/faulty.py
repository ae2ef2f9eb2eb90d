"""Fault injection as a Storage wrapper (tests and drills of the failure paths).

``FaultyStorage(inner, fail_after_puts=N)`` raises ``error`` on the (N+1)-th put and every one
after; ``kill_after_puts=N`` sends SIGKILL to this process right after the N-th put completes,
which is how a crash at an exact point of the write sequence is produced; ``kill_after_prefix``
does the same right after the first put of a key with that prefix (``snapshots/``).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

from bcdr.errors import StorageError
from bcdr.storage.base import ObjectInfo, Storage


class FaultyStorage:
    def __init__(
        self,
        inner: Storage,
        *,
        fail_after_puts: int | None = None,
        kill_after_puts: int | None = None,
        kill_after_prefix: str | None = None,
        error: StorageError | None = None,
    ):
        self.inner = inner
        self.fail_after_puts = fail_after_puts
        self.kill_after_puts = kill_after_puts
        self.kill_after_prefix = kill_after_prefix
        self.error = error or StorageError("injected storage failure")
        self.puts = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.inner.url

    def put(self, key: str, data: bytes) -> bool:
        with self._lock:
            if self.fail_after_puts is not None and self.puts >= self.fail_after_puts:
                raise self.error
            result = self.inner.put(key, data)
            self.puts += 1
            if (self.kill_after_puts is not None and self.puts >= self.kill_after_puts) or (
                self.kill_after_prefix is not None and key.startswith(self.kill_after_prefix)
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            return result

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
