"""Work flows from the reader to worker threads (read, cut, hash, compress, seal) and back.

BLAKE3, zstd, AES-GCM and file reads release the GIL, so worker threads use every core while
the main thread walks the tree. Results are handled in this (the main) thread in submission
order, and work in flight is bounded by count and by bytes, so memory stays bounded.

Handing work between threads costs tens of microseconds (a futex wake and a GIL hand-off,
more in a VM): more than a small file's I/O. So small files travel in batches, one task per
batch, and a folder's tree is stored by a callback queued behind its files' tasks, so the walk
never waits for a folder to finish (see docs/performance.md).

Even batched, worker threads share one GIL with the walk: every syscall of a small file (open,
fstat, read, close) gives it up and waits to take it back. So on Linux the batches of small
files go to worker *processes*, forked when the walk starts: they read, cut, hash, compress and
seal in parallel with the walk, on their own copy of the repository state as it was then (a
blob stored later is at worst encoded twice; the writer keeps one). Results come back pickled,
in order, like a thread's.
``BCDR_WORKER_PROCESSES=0`` keeps them in threads.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from bcdr.errors import BcdrError
from bcdr.forked import ForkedPool, processes_enabled
from bcdr.repository.compression import Layout
from bcdr.repository.pack import DATA
from bcdr.repository.repo import Repository

INLINE_BELOW = 64 * 1024
#: Raw bytes handed to workers and not yet handled, beyond the task count bound (three 8 MiB
#: batches: one per worker on 2 cores and one ready; more only raised peak RSS).
MAX_INFLIGHT_BYTES = 24 * 1024 * 1024

Encoded = tuple[bytes, tuple[int, bytes] | None]
Done = Callable[[Any], None]


class ChunkPipeline:
    def __init__(
        self, repo: Repository, workers: int | None = None, *, fork_for: object | None = None
    ):
        """``fork_for``: the object whose methods :meth:`run_forked` calls (in worker
        processes forked by :meth:`start` if :func:`processes_enabled`, else in threads)."""
        self.repo = repo
        self.workers = workers or max(1, os.cpu_count() or 1)
        self._fork_for = fork_for
        self._procs: ForkedPool | None = None
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bcdr-chunk")
        # (future or None for a callback, its handler, raw bytes it holds)
        self._queue: deque[tuple[Future[Any] | None, Done, int]] = deque()
        self._tasks = 0
        self._bytes = 0
        self._max_tasks = 2 * self.workers + 2

    def start(self) -> None:
        """Fork the worker processes, once ``fork_for`` is complete and before this pipeline
        has started its threads or filled big buffers (the parent copies every page it
        touches after a fork). A child has only the forking thread: it works on its copy of
        ``fork_for`` and never takes a lock another thread may hold (storage, uploads and the
        repository lock stay with the parent)."""
        if self._procs is not None or self._fork_for is None:
            return
        if processes_enabled(self.workers):
            self._procs = ForkedPool.start(self._fork_for, self.workers)

    def encode(self, data: bytes | memoryview, layout: Layout | None = None) -> Encoded:
        """Content id, and the sealed blob unless it is already stored (any thread)."""
        blob_id = self.repo.content_id(data)
        if self.repo.has_blob(blob_id):
            return blob_id, None
        return blob_id, self.repo.encode_blob(blob_id, data, layout)

    def store(self, blob_id: bytes, encoded: tuple[int, bytes] | None, raw_len: int) -> None:
        """Add an encoded blob to the pack being written (main thread)."""
        if encoded is None:
            self.repo.note_reused(blob_id)
        else:
            codec, sealed = encoded
            self.repo.writer.add(blob_id, DATA, codec, raw_len, sealed)

    def submit(
        self, data: bytes | memoryview, sink: list[bytes], layout: Layout | None = None
    ) -> None:
        """Append the id of ``data`` to ``sink`` (at this position) once it is computed.
        ``layout`` marks a float-tensor chunk for byte-grouped compression."""
        pos = len(sink)
        sink.append(b"")
        if len(data) < INLINE_BELOW:
            self._stored(sink, pos, len(data), self.encode(data, layout))
            return
        self.run(partial(self.encode, data, layout), partial(self._stored, sink, pos, len(data)))

    def _stored(self, sink: list[bytes], pos: int, raw_len: int, result: Encoded) -> None:
        sink[pos] = result[0]
        self.store(result[0], result[1], raw_len)

    def run(self, fn: Callable[[], Any], done: Done, weight: int = 0) -> None:
        """Run ``fn()`` in a worker and ``done(result)`` in this thread, in submission order.
        ``weight``: the raw bytes the task holds (bounds memory)."""
        self._enqueue(self._pool.submit(fn), done, weight)

    def run_forked(self, method: str, args: tuple[Any, ...], done: Done, weight: int = 0) -> None:
        """:meth:`run` of ``fork_for.<method>(*args)``, in a worker process when there are
        (arguments and result travel pickled)."""
        if self._procs is None:
            self.run(partial(getattr(self._fork_for, method), *args), done, weight)
        else:
            self._enqueue(self._procs.submit(method, *args), done, weight)

    def _enqueue(self, fut: Future[Any], done: Done, weight: int) -> None:
        self._queue.append((fut, done, weight))
        self._tasks += 1
        self._bytes += weight
        while self._tasks > self._max_tasks or (
            self._bytes > MAX_INFLIGHT_BYTES and self._tasks > 1
        ):
            self._complete_one()

    def then(self, done: Callable[[], None]) -> None:
        """Call ``done()`` in this thread once everything submitted before it was handled."""
        if self._queue:
            self._queue.append((None, lambda _result: done(), 0))
        else:
            done()

    def _complete_one(self) -> None:
        fut, done, weight = self._queue.popleft()
        if fut is not None:
            self._tasks -= 1
            self._bytes -= weight
            try:
                result = fut.result()
            except BrokenProcessPool:
                raise BcdrError(
                    "a worker process of this backup ended unexpectedly (killed, or out of "
                    "memory); nothing was committed",
                    hint="run the backup again; BCDR_WORKER_PROCESSES=0 uses threads instead",
                ) from None
            done(result)
        else:
            done(None)
        while self._queue and self._queue[0][0] is None:  # callbacks now due
            self._queue.popleft()[1](None)

    def drain(self) -> None:
        while self._queue:
            self._complete_one()

    def close(self) -> None:
        for fut, *_ in self._queue:
            if fut is not None:
                fut.cancel()
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._procs is not None:
            self._procs.shutdown()
