"""Writing blobs: packs are filled, uploaded in the background, then indexed.

Write order (DESIGN.md): packs, then the index that lists them, then (by the caller) the
snapshot. A crash before the index is written leaves only unreferenced packs, which check
reports as leftovers and prune collects.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from bcdr.repository.crypto import Cipher
from bcdr.repository.index import encode_index
from bcdr.repository.pack import PackBuilder, PackEntry, Spool, pack_key
from bcdr.storage.base import Staged, Storage

if TYPE_CHECKING:
    from bcdr.repository.masterindex import MasterIndex

PACKS_PER_INDEX = 64


class BlobWriter:
    """Collects encoded blobs into packs. Call only from one thread; ``has`` is thread-safe."""

    def __init__(
        self,
        storage: Storage,
        cipher: Cipher,
        index: MasterIndex,
        pack_size: int,
        known: Callable[[bytes], bool] | None = None,
    ):
        """``known(id)``: the blob is already stored where it may be used (default: in
        ``index``); a blob only in packs a pending prune marked is not, and is stored again."""
        self._storage = storage
        self._known = known or index.__contains__
        self._cipher = cipher
        self._index = index
        self._pack_size = pack_size
        # Packs are written as they are filled (Storage.stage), by a spool thread: on the
        # local disk straight into a temporary file, so neither the pack being filled nor
        # those waiting for their commit are held in memory (a backup's peak, workers
        # counted, median 144 -> 106 MiB on the bench corpus); Azure holds them until sent.
        self._spool = Spool()
        self._builder = self._new_builder()
        self._pending: set[bytes] = set()
        self._uploads: deque[tuple[Future[tuple[str, list[PackEntry]]], Staged]] = deque()
        self._unindexed: dict[str, list[PackEntry]] = {}
        # As many uploads as the storage wants in flight (2 on a local disk, one per connection
        # on Azure), the pack being built waiting for one: on Azure memory is bounded by N + 1
        # packs; the local disk holds none (they are in tmp/).
        self._max_in_flight = storage.concurrency
        self._pool = ThreadPoolExecutor(storage.concurrency, thread_name_prefix="bcdr-upload")
        self.bytes_added = 0
        self.blobs_added = 0
        self.packs_written = 0
        self.index_files: list[str] = []
        self.packs: set[str] = set()  # the packs this writer committed
        self.bytes_committed = 0  # their blobs' stored bytes
        # Set by an upload thread whose commit failed: the next add raises at once, rather
        # than after as many more packs as are in flight (minutes of uploads thrown away).
        self._failed = threading.Event()
        self.index_of: dict[str, str] = {}  # pack -> the index file that lists it

    def forget_pending(self) -> None:
        """After a flush: stop treating what this writer stored as stored (the commit guard
        found some of it gone); whatever is indexed in a pack still there stays known."""
        self._pending.clear()

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._pending

    def add(self, blob_id: bytes, blob_type: int, codec: int, raw_len: int, sealed: bytes) -> None:
        if self._failed.is_set():
            self._raise_failure()
        if blob_id in self._pending or self._known(blob_id):
            return
        self._builder.add(blob_id, blob_type, codec, raw_len, sealed)
        self._pending.add(blob_id)
        self.bytes_added += len(sealed)
        self.blobs_added += 1
        if self._builder.size >= self._pack_size:
            self._finish_pack()

    def _finish_pack(self) -> None:
        if not len(self._builder):
            return
        entries = self._builder.entries
        name, staged = self._builder.finish()
        self._builder = self._new_builder()
        self._uploads.append((self._pool.submit(self._upload, name, staged, entries), staged))
        while len(self._uploads) > self._max_in_flight:
            self._complete_upload()

    def _raise_failure(self) -> None:
        """Complete the uploads in order up to the one that failed, which raises."""
        while self._uploads:
            self._complete_upload()

    def _new_builder(self) -> PackBuilder:
        return PackBuilder(self._cipher, self._storage.stage, self._spool)

    def _upload(
        self, named: Future[str], staged: Staged, entries: list[PackEntry]
    ) -> tuple[str, list[PackEntry]]:
        """(an upload thread) Once the spool has written it, commit the pack: on the local
        disk fsync its temporary file and link it into place; on Azure send it."""
        try:
            name = named.result()  # a write's error, or cancelled by abort
        except BaseException:
            staged.discard()
            raise
        try:
            staged.commit(pack_key(name))
        except BaseException:
            self._failed.set()
            raise
        return name, entries

    def _complete_upload(self) -> None:
        name, entries = self._uploads.popleft()[0].result()
        self._unindexed[name] = entries
        self.packs.add(name)
        self.packs_written += 1
        self.bytes_committed += sum(e.stored_len for e in entries)
        if len(self._unindexed) >= PACKS_PER_INDEX:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        name, data = encode_index(self._unindexed, self._cipher)
        self._storage.put(f"index/{name}", data)
        self.index_files.append(name)
        for pack, entries in self._unindexed.items():
            self.index_of[pack] = name
            self._index.add_pack(pack, entries)
            for e in entries:
                if self._known(e.blob_id):  # a re-stored marked blob stays pending: in use
                    self._pending.discard(e.blob_id)
        self._unindexed = {}

    def flush(self) -> None:
        """Write the partial pack, wait for every upload, and index all written packs."""
        self._finish_pack()
        while self._uploads:
            self._complete_upload()
        self._write_index()

    def abort(self) -> None:
        """Stop without indexing: what was uploaded stays unreferenced (collected by prune);
        packs not committed are discarded (no temporary file is left behind). The spool
        stops first: nothing is discarded while it may still write into it."""
        self._spool.stop()
        self._builder.discard()
        for fut, staged in self._uploads:
            if fut.cancel():
                staged.discard()
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fut, _ in self._uploads:  # committed after all: kept for the next backup
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                name, entries = fut.result()
                self.packs.add(name)
                self.bytes_committed += sum(e.stored_len for e in entries)
        self._uploads.clear()

    def close(self) -> None:
        self._spool.stop()
        self._builder.discard()  # a pack started but neither flushed nor aborted
        self._pool.shutdown(wait=True)
