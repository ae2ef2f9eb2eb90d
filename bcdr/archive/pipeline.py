"""Chunks flow from the reader to worker threads (hash, compress, seal) and on to the writer.

BLAKE3, zstd and AES-GCM release the GIL, so worker threads use every core while the main
thread reads. Results are consumed in submission order; at most ``max_inflight`` chunks are
held in memory at once.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

from bcdr.repository.compression import Layout
from bcdr.repository.pack import DATA
from bcdr.repository.repo import Repository

INLINE_BELOW = 64 * 1024

Encoded = tuple[bytes, tuple[int, bytes] | None]


class ChunkPipeline:
    def __init__(self, repo: Repository, workers: int | None = None):
        self.repo = repo
        self.workers = workers or max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bcdr-chunk")
        self._inflight: deque[tuple[Future[Encoded], list[bytes], int, int]] = deque()
        self._max_inflight = 2 * self.workers + 2

    def _encode(self, data: bytes, layout: Layout | None) -> Encoded:
        blob_id = self.repo.content_id(data)
        if self.repo.has_blob(blob_id):
            return blob_id, None
        return blob_id, self.repo.encode_blob(blob_id, data, layout)

    def submit(self, data: bytes, sink: list[bytes], layout: Layout | None = None) -> None:
        """Append the id of ``data`` to ``sink`` (at this position) once it is computed.
        ``layout`` marks a float-tensor chunk for byte-grouped compression."""
        pos = len(sink)
        sink.append(b"")
        if len(data) < INLINE_BELOW:
            self._store(self._encode(data, layout), sink, pos, len(data))
            return
        fut = self._pool.submit(self._encode, data, layout)
        self._inflight.append((fut, sink, pos, len(data)))
        while len(self._inflight) > self._max_inflight:
            self._complete_one()

    def _store(self, result: Encoded, sink: list[bytes], pos: int, raw_len: int) -> None:
        blob_id, encoded = result
        sink[pos] = blob_id
        if encoded is not None:
            codec, sealed = encoded
            self.repo.writer.add(blob_id, DATA, codec, raw_len, sealed)

    def _complete_one(self) -> None:
        fut, sink, pos, raw_len = self._inflight.popleft()
        self._store(fut.result(), sink, pos, raw_len)

    def drain(self) -> None:
        while self._inflight:
            self._complete_one()

    def close(self) -> None:
        for fut, *_ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
