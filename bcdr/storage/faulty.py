"""Fault injection as a Storage wrapper (tests and drills of the failure paths).

``FaultyStorage(inner, fail_after_puts=N)`` raises ``error`` on the (N+1)-th put and every one
after; ``kill_after_puts=N`` sends SIGKILL to this process right after the N-th put completes,
which is how a crash at an exact point of the write sequence is produced; ``kill_after_prefix``
does the same right after the first put of a key with that prefix (``snapshots/``).
``kill_after_writes=N`` counts deletes as well as puts (a prune mostly deletes).
``flaky_puts=N`` makes the first N puts raise :class:`TransientStorageError`; with
``flaky_lands=True`` each of them first stores the object, as when a connection breaks after the
server committed the write.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence

from bcdr.errors import StorageError, TransientStorageError
from bcdr.storage.base import Storage
from bcdr.storage.wrap import StorageWrapper


class FaultyStorage(StorageWrapper):
    def __init__(
        self,
        inner: Storage,
        *,
        fail_after_puts: int | None = None,
        kill_after_puts: int | None = None,
        kill_after_prefix: str | None = None,
        kill_after_writes: int | None = None,
        error: StorageError | None = None,
        flaky_puts: int = 0,
        flaky_lands: bool = False,
    ):
        super().__init__(inner)
        self.fail_after_puts = fail_after_puts
        self.kill_after_puts = kill_after_puts
        self.kill_after_prefix = kill_after_prefix
        self.error = error or StorageError("injected storage failure")
        self.flaky_puts = flaky_puts
        self.flaky_lands = flaky_lands
        self.kill_after_writes = kill_after_writes
        self.puts = 0
        self.writes = 0
        self._lock = threading.Lock()

    def _wrote(self) -> None:
        self.writes += 1
        if self.kill_after_writes is not None and self.writes >= self.kill_after_writes:
            os.kill(os.getpid(), signal.SIGKILL)

    def delete(self, key: str) -> bool:
        with self._lock:
            result = self.inner.delete(key)
            self._wrote()
            return result

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        return self.put(key, b"".join(parts))  # every fault applies to packs too

    def put(self, key: str, data: bytes) -> bool:
        with self._lock:
            if self.fail_after_puts is not None and self.puts >= self.fail_after_puts:
                raise self.error
            if self.flaky_puts > 0:
                self.flaky_puts -= 1
                if self.flaky_lands:
                    self.inner.put(key, data)
                raise TransientStorageError("injected transient failure")
            result = self.inner.put(key, data)
            self.puts += 1
            self._wrote()
            if (self.kill_after_puts is not None and self.puts >= self.kill_after_puts) or (
                self.kill_after_prefix is not None and key.startswith(self.kill_after_prefix)
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            return result
