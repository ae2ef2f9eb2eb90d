"""Parallel, verified file restore.

Chunks are fetched, opened, verified and written by a pool of threads with positioned writes
(``pwrite``), so many small files and one huge file both use every core and overlap I/O.
Every chunk is verified against its content id when it is opened. A file's chunks are written
in file order (decoded in parallel, written in turn), so its xxh3-128 digest is computed as
they are written, over the very bytes handed to the kernel: no second pass reads the file
back. The thread that completes a file's last piece finalises it: it compares that digest and
the size with the tree's record, sets owner and mode, and only then renames the temporary
file into place. A file with any error is removed, never renamed. (A drill reads every
restored file back from the disk on its own: docs/drills.md.)
In-flight chunks are bounded, so memory stays at about ``2 * workers`` pieces (or batches).
Larger files are started by a feeder thread, up to one per worker at once, their pieces
handed out in turn: the kernel serialises buffered writes to one file, so workers writing
two files write faster than workers writing one, and each file's pieces are written one at
a time (a waiting thread sleeps rather than spinning on the kernel's lock).

Files of one chunk, the common case, go to the workers in batches (BATCH_FILES or
BATCH_BYTES), each verified in memory and written straight to its name: a hand-off between
threads costs more than such a file's I/O. From a local repository on Linux the batches go to
worker processes forked when the restore starts (bcdr/forked.py): threads would wait for the
GIL behind each other at every syscall of every small file (two restore threads were only
1.1-1.2x as fast as one). Larger files stay with the threads.

Blobs are read in runs of neighbours in a pack (backup stores a folder's files, and a file's
chunks, side by side): one request per run of a small-file batch, and per *piece* of a larger
file (its consecutive chunks that lie side by side, up to PIECE_MAX), instead of one per blob:
fewer syscalls on a disk, far fewer GETs on Azure.

Files of DIRECT_MIN bytes or more are written around the page cache (``O_DIRECT``): their
bytes, already in file order, are gathered into page-aligned buffers of DIRECT_BUFFER bytes,
each written whole by one of DIRECT_WRITERS writer threads while the workers go on decoding
(the file is given its size first, so that these writes do not extend it and may run side by
side), and reused; the last block is padded and the file cut to its size. A
restore of a checkpoint of hundreds of GiB then runs at the disk's speed without first
filling the machine's memory with dirty pages and evicting what it had cached (a training
job's dataset), and costs less CPU: the kernel copies nothing. A filesystem that refuses
``O_DIRECT`` (at ``open`` or at a write) gets the same bytes buffered. Only files on a local
block-device filesystem (DIRECT_FILESYSTEMS; looked up once per device met) are written
direct: on NFS, SMB, Lustre or FUSE a direct write is a synchronous round trip, and tmpfs has
no device to write to.
``direct=False`` (``bcdr restore --buffered``) writes every file through the page cache. See
docs/decisions.md.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import itertools
import mmap
import operator
import os
import queue
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bcdr.archive.beneath import Beneath, FolderCache, split_path
from bcdr.archive.filewrite import (
    DIRECT_BUFFER,
    DIRECT_MIN,
    DIRECT_WRITERS,
    HOLE_BLOCK,
    O_DIRECT,
    DirectOut,
    direct_suits,
    is_zero,
    set_direct,
    write_sparse,
)
from bcdr.archive.xattrs import apply_xattrs, count_skipped
from bcdr.errors import BcdrError
from bcdr.forked import ForkedPool, processes_enabled
from bcdr.repository.hashing import fingerprint, fingerprint_for, region_of
from bcdr.repository.index import BlobLocation
from bcdr.repository.repo import Repository
from bcdr.repository.tree import Node
from bcdr.storage.base import Forkable, Transfers

READ_BACK = 8 * 1024 * 1024
#: One-chunk files are restored in batches of this many files or bytes, whichever comes first.
BATCH_FILES = 256
BATCH_BYTES = 8 * 1024 * 1024
#: A batch's blobs are read in runs: neighbours in a pack at most RUN_GAP apart, RUN_MAX a run.
RUN_GAP = 64 * 1024
RUN_MAX = 8 * 1024 * 1024
#: A larger file's consecutive chunks are read in pieces of at most this many bytes (each
#: piece is held until its chunks are written; 2 per worker are in flight).
PIECE_MAX = 4 * 1024 * 1024
#: Larger files the walk may queue ahead of the one whose pieces are being started.
LARGE_QUEUED = 256
#: Files of a batch restored side by side, by each worker, where the target's filesystem
#: answers every create, write and rename over the network (bcdr/archive/statahead.py).
FILES_AHEAD = 8
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


#: Consecutive chunks of a file read at once: (id, location, offset in the file) each.
_Piece = list[tuple[bytes, BlobLocation, int]]


def _pieces(content: list[bytes], locs: list[BlobLocation]) -> list[_Piece]:
    """A file's chunks (id, location, offset in the file) cut into pieces of consecutive
    chunks that follow each other in one pack, at most RUN_GAP apart and PIECE_MAX in all:
    each piece is one read."""
    pieces: list[_Piece] = []
    offset = 0
    for blob_id, loc in zip(content, locs, strict=True):
        if pieces:
            first, last = pieces[-1][0][1], pieces[-1][-1][1]
            last_end = last.offset + last.stored_len
            if (
                loc.pack == last.pack
                and last_end <= loc.offset <= last_end + RUN_GAP
                and loc.offset + loc.stored_len - first.offset <= PIECE_MAX
            ):
                pieces[-1].append((blob_id, loc, offset))
                offset += loc.raw_len
                continue
        pieces.append([(blob_id, loc, offset)])
        offset += loc.raw_len
    return pieces


_UNNAMED_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_RDWR | os.O_CLOEXEC

#: The names of files being restored, before they are renamed into place.
TEMP_PREFIX = b".bcdr-restore-"


def remove_leftover_temps(folder_fd: int) -> int:
    """Remove the temporary files a killed restore left in the folder ``folder_fd`` can list
    (regular files named TEMP_PREFIX..., by name in that folder); how many."""
    removed = 0
    prefix = os.fsdecode(TEMP_PREFIX)
    try:
        names = [e.name for e in os.scandir(folder_fd) if e.name.startswith(prefix)]
    except OSError:
        return 0
    for name in names:
        try:
            if stat.S_ISREG(os.stat(name, dir_fd=folder_fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=folder_fd)
                removed += 1
        except FileNotFoundError:
            pass
    return removed


def _create(path: bytes, dir_fd: int | None = None) -> int:
    """A new file (never one that exists, nor through a link), relative to ``dir_fd``."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600, dir_fd=dir_fd)


def file_digest(fd: int, size: int, like: str | None = None) -> str:
    """The fingerprint of the file ``fd`` (``size`` bytes read back), in the form of the digest
    ``like`` (a tree's: by regions or not; bcdr/repository/hashing.py)."""
    digest = fingerprint_for(like)
    pos = 0
    while pos < size:
        block = os.pread(fd, min(READ_BACK, size - pos), pos)
        if not block:
            break
        digest.update(block)
        pos += len(block)
    return digest.hexdigest()


def _digest_like(data: bytes | memoryview, like: str | None) -> str:
    """The fingerprint of a file held whole, in the form of the digest ``like``."""
    if not region_of(like):
        return fingerprint(data)  # the common case, in one call
    hasher = fingerprint_for(like)
    hasher.update(data)
    return hasher.hexdigest()


@dataclass
class _Job:
    node: Node
    dest: bytes
    snap_path: bytes
    tmp: bytes
    fd: int
    remaining: int
    folder: bytes  # dest's folder, and its name and the temporary file's in it
    name: bytes
    tmp_name: bytes
    error: str | None = None
    digest: str | None = None  # of the bytes written, computed from memory
    end: int = 0  # end of the last non-hole write
    direct: bool = False  # written with O_DIRECT
    dir_fd: int = -1  # its folder, opened beneath the target (bcdr/archive/beneath.py)
    unnamed: bool = False  # an O_TMPFILE file, linked to its name once whole
    xattrs_skipped: list[bytes] = field(default_factory=list)  # attributes not set here

    def __reduce__(self) -> tuple[Callable[..., _Job], tuple[Any, ...]]:
        """Pickled as its fields and its node's, in order: a third less time than a
        dataclass's way, paid twice per small file a worker process restores."""
        return _unpickle_job, (_NODE_FIELDS(self.node), *_JOB_FIELDS(self))


def _unpickle_job(node: tuple[Any, ...], *fields: Any) -> _Job:
    return _Job(Node(*node), *fields)


_NODE_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Node)))
_JOB_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(_Job)[1:]))


@dataclass
class _InOrder:
    """A larger file's pieces are written in file order: ``written`` of them so far, the
    digest of their bytes in ``hasher``; ``turn`` wakes the piece whose turn it is;
    ``direct``, if the file is written with ``O_DIRECT``, gathers its bytes."""

    written: int = 0
    direct: DirectOut | None = None
    hasher: Any = field(default_factory=lambda: fingerprint_for(None))
    turn: threading.Condition = field(default_factory=threading.Condition)

    def await_turn(self, index: int) -> None:
        with self.turn:
            while self.written < index:
                self.turn.wait()


@dataclass
class _Tally:
    """What one task restored, merged into the totals under the lock once per task."""

    files: int = 0
    bytes_total: int = 0
    bytes_written: int = 0
    bytes_direct: int = 0
    first_byte_s: float | None = None
    done: dict[tuple[int, int], bytes] = field(default_factory=dict)
    errors: list[tuple[bytes, str]] = field(default_factory=list)
    transfers: Any = None  # a forked worker's (uploaded, downloaded) meters
    xattrs_skipped: dict[str, int] = field(default_factory=dict)  # name -> files

    def wrote(self, wrote: bool, n: int, started: float) -> None:
        self.bytes_written += n
        if wrote and self.first_byte_s is None:
            self.first_byte_s = time.monotonic() - started

    def add(self, other: _Tally) -> None:
        """Count in what another task of the same batch restored."""
        self.files += other.files
        self.bytes_total += other.bytes_total
        self.bytes_written += other.bytes_written
        self.bytes_direct += other.bytes_direct
        theirs = other.first_byte_s
        if theirs is not None:
            mine = self.first_byte_s
            self.first_byte_s = theirs if mine is None else min(mine, theirs)
        self.done.update(other.done)
        self.errors.extend(other.errors)
        for name, n in other.xattrs_skipped.items():
            self.xattrs_skipped[name] = self.xattrs_skipped.get(name, 0) + n


class FileRestorer:
    """Restores files; ``on_done(snap_path, error_or_None, job)`` is called per file."""

    def __init__(
        self,
        repo: Repository,
        workers: int | None = None,
        *,
        direct: bool = True,
        mode_mask: int = 0o7777,
        root: bytes | None = None,
    ):
        """``direct``: files of DIRECT_MIN bytes or more on a local disk are written with
        ``O_DIRECT`` (:meth:`_direct_here`). ``mode_mask``: the mode bits restored (without
        0o6000, setuid and setgid are not)."""
        self.repo = repo
        self._mode_mask = mode_mask
        # every file is created, renamed and removed in a folder opened beneath the target
        self._beneath = Beneath(root) if root is not None else None
        self._folders = FolderCache(self._beneath) if self._beneath is not None else None
        self._unnamed_ok = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self.direct = direct and bool(O_DIRECT)
        self._direct_on: dict[int, bool] = {}  # st_dev -> whether its files get O_DIRECT
        self._buffers: list[memoryview] = []  # DIRECT_BUFFER each, reused (their pages warm)
        # On a local disk more threads than cores only add kernel contention on directory
        # locks; a remote storage needs one per connection to hide its latency.
        self.workers = workers or max(1, os.cpu_count() or 1, repo.storage.concurrency)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bcdr-restore")
        self._slots = threading.BoundedSemaphore(2 * self.workers)
        # O_DIRECT writes, off the workers: each file being written fills one buffer while
        # up to 2 per writer are on their way to the disk (enough that a file whose turn it
        # is never waits for a buffer held by a file that waits for a worker)
        self._writers = ThreadPoolExecutor(DIRECT_WRITERS, thread_name_prefix="bcdr-write")
        self._buffer_slots = threading.BoundedSemaphore(self.workers + 2 * DIRECT_WRITERS)
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.files = 0
        self.bytes_written = 0
        # bytes written by this process's threads so far, file by file as they go (for a
        # progress line; not under the lock: an estimate that only moves forward)
        self.live_bytes = 0
        self.bytes_direct = 0
        self.bytes_total = 0
        self.first_byte_s: float | None = None
        self.errors: list[tuple[bytes, str]] = []
        self.xattrs_skipped: dict[str, int] = {}  # attribute name -> files it was not set on
        self.done: dict[tuple[int, int], bytes] = {}  # hardlink key -> restored path
        self._tmp_prefix = TEMP_PREFIX + b"%d-%s-" % (os.getpid(), secrets.token_hex(4).encode())
        self._seq = itertools.count(1)  # next() is atomic: the walk and the feeder both call
        self._small: list[tuple[Node, bytes, bytes]] = []
        self._small_bytes = 0
        self._uid, self._gid = (os.geteuid(), os.getegid()) if AS_ROOT else (-1, -1)
        self._procs: ForkedPool | None = None
        self._broken = False  # a worker process died
        self._large: queue.Queue[tuple[Node, bytes, bytes, list[BlobLocation]] | None] = (
            queue.Queue(LARGE_QUEUED)
        )
        self._feeder: threading.Thread | None = None
        # a batch's files FILES_AHEAD at a time: the target's filesystem answers each create,
        # write and rename over the network (set by the caller, before :meth:`start`)
        self.side_by_side = False
        self._batch_pool: ThreadPoolExecutor | None = None  # made where it is used

    def start(self) -> bool:
        """Fork the worker processes for batches of small files, before this restorer has
        started a thread, when the storage can be used from a forked child (a local disk:
        the Azure SDK's connection pool must not cross a fork, and there the threads' work
        is mostly waiting for the network). Whether there are workers."""
        if (
            self._procs is None
            and processes_enabled(self.workers)
            and self.repo.storage.capability(Forkable) is not None
        ):
            self._procs = ForkedPool.start(self, self.workers)
        return self._procs is not None

    def after_fork(self) -> None:
        """(a forked worker) Locks the parent's threads may have held are made anew."""
        self._lock = threading.Lock()
        self._batch_pool = None  # threads do not cross a fork
        storage = self.repo.storage.capability(Forkable)
        if storage is not None:
            storage.after_fork()

    def submit(self, node: Node, dest: bytes, snap_path: bytes) -> None:
        """Start restoring ``node`` to ``dest`` (main thread). Files of at most one chunk are
        gathered into batches: one task, one index search and one lock per batch instead of
        per file, since handing work between threads costs more than a small file's I/O."""
        if len(node.content) <= 1:
            self._small.append((node, dest, snap_path))
            self._small_bytes += node.size
            if len(self._small) >= BATCH_FILES or self._small_bytes >= BATCH_BYTES:
                self._flush_small()
            return
        locs = self._located(node, snap_path, self.repo.index.lookup_many(node.content))
        if locs is None:
            return
        if self._feeder is None:
            self._feeder = threading.Thread(target=self._feed, name="bcdr-restore-feed")
            self._feeder.start()
        self._large.put((node, dest, snap_path, locs))

    def _feed(self) -> None:
        """(the feeder thread) Start the larger files queued by :meth:`submit`, up to one per
        worker at a time, and hand out their pieces in turn, one file's then the next's, as
        slots free up. Buffered writes to one file are serialised by the kernel (the inode's
        lock, ext4 and tmpfs alike), and on this VM a write into the page cache costs about
        2.5 ms/MiB of kernel time: two workers writing two files write twice as fast as two
        writing one. The walk goes on meanwhile, so small files are restored beside them."""
        active: collections.deque[tuple[_Job, _InOrder, Iterator[tuple[int, _Piece]]]] = (
            collections.deque()
        )
        ended = False
        while active or not ended:
            while not ended and len(active) < self.workers:
                try:
                    item = self._large.get(block=not active)
                except queue.Empty:
                    break
                if item is None:
                    ended = True
                    break
                try:
                    started = self._start_large(*item)
                except BaseException as exc:  # noqa: BLE001 (a bug: told for the file, not lost)
                    self._fail(item[2], f"not restored: {exc!r}")
                    continue
                if started is not None:
                    active.append(started)
            if not active:
                continue
            job, order, pieces = active.popleft()
            piece = next(pieces, None)
            if piece is None:
                continue
            self._slots.acquire()
            self._pool.submit(self._piece, job, order, *piece)
            active.append((job, order, pieces))

    def _start_large(
        self, node: Node, dest: bytes, snap_path: bytes, locs: list[BlobLocation]
    ) -> tuple[_Job, _InOrder, Iterator[tuple[int, _Piece]]] | None:
        """Create a larger file's temporary file: (job, the order of its writes, its pieces
        numbered in file order), or None (and recorded) if it cannot be created."""
        job = self._job(node, dest, snap_path)
        try:
            job.fd = self._create_tmp(job)
        except OSError as exc:
            self._close_dir(job)
            self._fail(snap_path, exc.strerror or str(exc))
            return None
        except BcdrError as exc:
            self._close_dir(job)
            self._fail(snap_path, str(exc))
            return None
        pieces = _pieces(node.content, locs)
        job.remaining = len(pieces)
        order = _InOrder(hasher=fingerprint_for(node.digest))
        if node.size >= DIRECT_MIN and self._direct_here(job) and set_direct(job.fd):
            order.direct = DirectOut(
                self._take_buffer, self._give_buffer, self._writers.submit, order.hasher
            )
            job.direct = True
            try:  # writes inside the file run side by side; beyond it they extend it
                os.ftruncate(job.fd, node.size)
            except OSError:
                pass  # a size the filesystem refuses fails at the write, told for the file
        return job, order, enumerate(pieces)

    def _create_tmp(self, job: _Job, *, unnamed: bool = False) -> int:
        """Create ``job``'s temporary file: by its name in its folder, opened beneath the
        target (raises BcdrError when that folder leads out of it), or by path when this
        restore has no target root. ``unnamed``: a file with no name at all (``O_TMPFILE``,
        where the filesystem has it), linked to its name when whole (:meth:`_name_unnamed`):
        a killed restore leaves nothing, and a small file costs no rename."""
        if self._folders is None:
            return _create(job.tmp)
        job.dir_fd = self._folders.acquire(job.folder)
        if unnamed and self._unnamed_ok:
            try:
                fd = os.open(b".", _UNNAMED_FLAGS, 0o600, dir_fd=job.dir_fd)
                job.unnamed = True
                return fd
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._unnamed_ok = False  # this filesystem has no O_TMPFILE: named ones
        return _create(job.tmp_name, job.dir_fd)

    def close_root(self) -> None:
        """Close this process's descriptors of the target and its folders (workers' end
        with them)."""
        if self._folders is not None:
            self._folders.close()
        if self._beneath is not None:
            self._beneath.close()

    def _close_dir(self, job: _Job) -> None:
        if job.dir_fd >= 0 and self._folders is not None:
            self._folders.release(job.folder)
        job.dir_fd = -1

    def _take_buffer(self) -> memoryview:
        """A DIRECT_BUFFER-sized page-aligned buffer: one a finished write gave back, or new;
        waits while as many as may be are filled or in flight."""
        self._buffer_slots.acquire()
        with self._lock:
            if self._buffers:
                return self._buffers.pop()
        return memoryview(mmap.mmap(-1, DIRECT_BUFFER))

    def _give_buffer(self, buffer: memoryview) -> None:
        with self._lock:
            self._buffers.append(buffer)
        self._buffer_slots.release()

    def _direct_here(self, job: _Job) -> bool:
        """(the feeder thread) Whether ``job``'s file is on a filesystem that gets
        ``O_DIRECT``: a folder under the target may be another mount than the target."""
        if not self.direct:
            return False
        dev = os.fstat(job.fd).st_dev
        found = self._direct_on.get(dev)
        if found is None:
            found = self._direct_on[dev] = direct_suits(job.folder)
        return found

    def _located(
        self, node: Node, snap_path: bytes, locs: list[BlobLocation | None]
    ) -> list[BlobLocation] | None:
        """The index entries of ``node``'s chunks, or None (and recorded) if one is missing
        or they do not add up to the file's size."""
        found = []
        for blob_id, loc in zip(node.content, locs, strict=True):
            if loc is None:
                self._fail(snap_path, f"chunk {blob_id.hex()[:12]} is not in the index")
                return None
            found.append(loc)
        total = sum(loc.raw_len for loc in found)
        if total != node.size:
            self._fail(snap_path, f"chunks add up to {total} bytes, the file has {node.size}")
            return None
        return found

    def _job(self, node: Node, dest: bytes, snap_path: bytes) -> _Job:
        folder, name = split_path(dest)
        tmp_name = b"%s%d" % (self._tmp_prefix, next(self._seq))
        tmp = folder + tmp_name if folder in (b"", b"/") else folder + b"/" + tmp_name
        return _Job(node, dest, snap_path, tmp, -1, len(node.content), folder, name, tmp_name)

    def _flush_small(self) -> None:
        files, self._small, self._small_bytes = self._small, [], 0
        if not files:
            return
        found = iter(self.repo.index.lookup_many([b for n, _, _ in files for b in n.content]))
        batch: list[tuple[_Job, BlobLocation | None]] = []
        for node, dest, snap_path in files:  # each of at most one chunk
            loc = next(found) if node.content else None
            if (loc is None or loc.raw_len != node.size) and self._located(
                node, snap_path, [loc] if node.content else []
            ) is None:
                continue  # told why
            batch.append((self._job(node, dest, snap_path), loc))
        if batch:
            self._slots.acquire()
            if self._procs is not None:
                fut = self._procs.submit("_forked_batch", batch)  # a dead worker: in its result
                fut.add_done_callback(partial(self._forked_batch_done, batch))
            else:
                self._pool.submit(self._small_batch, batch)

    def _small_batch(self, batch: list[tuple[_Job, BlobLocation | None]]) -> None:
        """(a thread) Restore a batch of one-chunk files; counters and errors are merged
        once."""
        tally = _Tally()
        try:
            self._restore_batch(batch, tally)
        finally:
            self._slots.release()
            self._merge(tally)

    def _restore_batch(self, batch: list[tuple[_Job, BlobLocation | None]], tally: _Tally) -> None:
        """Restore a batch of one-chunk files: one after another, or FILES_AHEAD at a time
        where each create, write and rename waits for a server (``side_by_side``)."""
        sealed = self._read_runs([loc for _, loc in batch if loc is not None])
        items = [
            (job, loc, sealed.get((loc.pack, loc.offset)) if loc is not None else None)
            for job, loc in batch
        ]
        if len(items) < 2 or not self.side_by_side:
            for job, loc, view in items:
                self._small_file(job, loc, tally, view)
            return
        with self._lock:
            if self._batch_pool is None:  # in this process: a forked worker makes its own
                self._batch_pool = ThreadPoolExecutor(FILES_AHEAD, thread_name_prefix="bcdr-file")
            pool = self._batch_pool
        for done in pool.map(self._one_small_file, items):
            tally.add(done)

    def _one_small_file(self, item: tuple[_Job, BlobLocation | None, memoryview | None]) -> _Tally:
        tally = _Tally()
        self._small_file(item[0], item[1], tally, item[2])
        return tally

    def _forked_batch(self, batch: list[tuple[_Job, BlobLocation | None]]) -> _Tally:
        """(a forked worker) :meth:`_small_batch`, the tally and the transfers sent back."""
        tally = _Tally()
        self._restore_batch(batch, tally)
        meter = self.repo.storage.capability(Transfers)
        tally.transfers = meter.take_transfers() if meter is not None else None
        return tally

    def _forked_batch_done(
        self, batch: list[tuple[_Job, BlobLocation | None]], fut: Future[_Tally]
    ) -> None:
        """(the process pool's thread) Merge what a worker restored. A worker that died
        (killed, out of memory) fails the restore: see :meth:`wait`."""
        try:
            tally = fut.result()
        except BrokenProcessPool:
            self._broken = True
            tally = _Tally(errors=[(j.snap_path, "not restored: a worker died") for j, _ in batch])
        except BaseException as exc:  # noqa: BLE001 (a bug: told per file, not lost)
            tally = _Tally(errors=[(j.snap_path, f"not restored: {exc!r}") for j, _ in batch])
        finally:
            self._slots.release()
        if tally.transfers is not None:
            meter = self.repo.storage.capability(Transfers)
            if meter is not None:
                meter.add_transfers(*tally.transfers)
        self._merge(tally)

    def _read_runs(self, locs: list[BlobLocation]) -> dict[tuple[str, int], memoryview]:
        """Read the sealed blobs ``locs`` with one request per run of neighbouring blobs in a
        pack. A run that cannot be read whole is left out: its blobs are then read one by
        one, and the error is told for its own file."""
        out: dict[tuple[str, int], memoryview] = {}
        by_pack: dict[str, list[BlobLocation]] = {}
        for loc in locs:
            by_pack.setdefault(loc.pack, []).append(loc)
        for pack, found in by_pack.items():
            found.sort(key=lambda loc: loc.offset)
            runs: list[tuple[int, int, list[BlobLocation]]] = []  # start, end, blobs
            for loc in found:
                end = loc.offset + loc.stored_len
                if runs and loc.offset <= runs[-1][1] + RUN_GAP and end - runs[-1][0] <= RUN_MAX:
                    start, run_end, blobs = runs[-1]
                    runs[-1] = (start, max(run_end, end), blobs)
                    blobs.append(loc)
                else:
                    runs.append((loc.offset, end, [loc]))
            for start, end, blobs in runs:
                try:
                    data = self.repo.read_pack_range(pack, start, end - start)
                except BcdrError:
                    continue
                if len(data) != end - start:
                    continue
                view = memoryview(data)
                for r in blobs:
                    out[(pack, r.offset)] = view[r.offset - start : r.offset - start + r.stored_len]
        return out

    def _small_file(
        self,
        job: _Job,
        loc: BlobLocation | None,
        tally: _Tally,
        sealed: memoryview | None = None,
    ) -> None:
        """A file of at most one chunk, the common case: the chunk is read and verified in
        memory before anything is created, then written to a temporary name and renamed into
        place, as every file is: a restore killed at any moment leaves no file at its final
        name with other bytes than the snapshot's (the next restore removes the temporary
        file), and an existing file (``--overwrite``) is never lost to a failed restore."""
        node = job.node
        data: bytes | memoryview
        try:
            if not node.content:
                data = b""
            elif sealed is not None and loc is not None:
                data = self.repo.decode_blob(node.content[0], loc.codec, sealed, loc.raw_len)
            else:
                data = self.repo.read_blob(node.content[0], loc)
            job.digest = _digest_like(data, node.digest)
            if job.digest != node.digest:
                raise BcdrError(
                    f"verification failed: restored digest {job.digest}, expected {node.digest}"
                )
            job.fd = self._create_tmp(job, unnamed=True)
            if data:
                tally.wrote(self._write_chunk(job, data, 0), len(data), self.started)
                self.live_bytes += len(data)
        except BcdrError as exc:
            job.error = str(exc)
        except OSError as exc:
            job.error = exc.strerror or str(exc)
        self._finalize(job, tally)

    def _write_chunk(self, job: _Job, data: bytes | memoryview, offset: int) -> bool:
        """Write a verified chunk at ``offset`` (holes stay holes); whether bytes were written."""
        wrote = write_sparse(job.fd, data, offset)
        if wrote and not is_zero(data[-HOLE_BLOCK:]):
            job.end = max(job.end, offset + len(data))
        return wrote

    def _piece(self, job: _Job, order: _InOrder, index: int, piece: _Piece) -> None:
        """Restore piece ``index`` of a file: consecutive chunks (id, location, offset in the
        file), read with one request when they lie side by side. Pieces are decoded in
        parallel but written in file order, one at a time, and the file's digest is updated
        with each chunk as it is written. A piece whose turn has come writes each chunk as
        it is decoded; one ahead of its turn holds its chunks until then (at most a piece).
        The kernel takes the file's lock for each buffered write anyway (ext4), and a thread
        waiting for it there spins on a core (11% of the restore's CPU, `perf`), where one
        waiting here sleeps. Every piece takes its turn, failed or not, so none waits for
        ever: the pool runs pieces in the order they were handed out, so the one before is
        always running or done."""
        tally = _Tally()
        held: list[tuple[bytes | memoryview, int]] = []
        try:
            sealed = self._read_runs([loc for _, loc, _ in piece]) if len(piece) > 1 else {}
            for blob_id, loc, offset in piece:
                if job.error is not None:
                    break
                view = sealed.get((loc.pack, loc.offset))
                if view is not None:
                    data = self.repo.decode_blob(blob_id, loc.codec, view, loc.raw_len)
                else:
                    data = self.repo.read_blob(blob_id, loc)
                held.append((data, offset))
                if order.written == index:  # its turn (only this thread moves it on)
                    self._write_held(job, order, held, tally)
            order.await_turn(index)
            self._write_held(job, order, held, tally)
        except BcdrError as exc:
            job.error = str(exc)
        except OSError as exc:
            job.error = exc.strerror or str(exc)
        except BaseException as exc:  # noqa: BLE001 (a bug: told for the file, which is removed)
            job.error = f"not restored: {exc!r}"
        finally:
            order.await_turn(index)
            with order.turn:
                order.written = index + 1
                order.turn.notify_all()
            self._slots.release()
            with self._lock:
                job.remaining -= 1
                last = job.remaining == 0
        if last:
            if order.direct is not None:
                self._end_direct(job, order.direct)
            job.digest = order.hasher.hexdigest()
            self._finalize(job, tally)
        self._merge(tally)

    def _end_direct(self, job: _Job, out: DirectOut) -> None:
        """(the file's last piece) Write the rest of a file written with ``O_DIRECT``
        (padded: :meth:`_finalize` cuts it to its size) and wait for its writes in flight;
        its buffers go back for the next file."""
        try:
            if job.error is None:
                out.end(job.fd)
        except OSError as exc:
            job.error = exc.strerror or str(exc)
        finally:
            out.close()

    def _write_held(
        self, job: _Job, order: _InOrder, held: list[tuple[bytes | memoryview, int]], tally: _Tally
    ) -> None:
        """(in the piece's turn) Write the chunks held, in order, into the file and its
        digest."""
        for data, offset in held:
            if job.error is not None:
                break
            if order.direct is not None:  # its digest is computed from its buffer
                order.direct.add(job.fd, data)
                tally.wrote(True, len(data), self.started)
            else:
                order.hasher.update(data)
                tally.wrote(self._write_chunk(job, data, offset), len(data), self.started)
            self.live_bytes += len(data)
        held.clear()

    def _finalize(self, job: _Job, tally: _Tally) -> None:
        self._complete(job)
        if not job.unnamed:  # an unnamed file is already at its name, or never named
            self._place(job)
        self._close_dir(job)
        self._tally_file(job, tally)

    def _complete(self, job: _Job) -> None:
        """Cut the file to its size, check its digest, set its metadata, name it if it is
        unnamed; then close it. A problem is kept in ``job.error``."""
        node = job.node
        try:
            if job.error is None:
                if job.end != node.size:  # ends in a hole, is empty, or was padded (direct)
                    os.ftruncate(job.fd, node.size)
                if job.digest != node.digest:
                    job.error = (
                        f"verification failed: restored digest {job.digest}, expected {node.digest}"
                    )
            if job.error is None:
                if AS_ROOT and (node.uid, node.gid) != (self._uid, self._gid):
                    os.fchown(job.fd, node.uid, node.gid)
                if node.xattrs:  # after the owner: a chown clears security.capability
                    job.xattrs_skipped = apply_xattrs(
                        job.fd, node.xattrs, privileged=bool(self._mode_mask & 0o6000)
                    )
                os.fchmod(job.fd, node.mode & self._mode_mask)
                os.utime(job.fd, ns=(node.mtime_ns, node.mtime_ns))
            if job.error is None and job.unnamed:
                self._name_unnamed(job)
        except OSError as exc:
            job.error = exc.strerror or str(exc)
        except (OverflowError, ValueError) as exc:  # a crafted tree's out-of-range field
            job.error = f"cannot set metadata: {exc}"
        finally:
            if job.fd >= 0:
                os.close(job.fd)

    @staticmethod
    def _place(job: _Job) -> None:
        """Rename the temporary file to its name, or remove it after a problem."""
        tmp, dest, dir_fd = job.tmp, job.dest, None
        if job.dir_fd >= 0:  # single names in the folder opened beneath the target
            tmp, dest, dir_fd = job.tmp_name, job.name, job.dir_fd
        if job.error is None:
            try:
                # fails on a directory in the way
                os.replace(tmp, dest, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except IsADirectoryError:
                job.error = "a directory is in the way of this file"
            except OSError as exc:
                job.error = exc.strerror or str(exc)
        if job.error is not None and job.fd >= 0:  # only a file this restore created
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except FileNotFoundError:
                pass

    def _name_unnamed(self, job: _Job) -> None:
        """Give the unnamed file of ``job`` (``O_TMPFILE``, whole and verified) its name: a
        link appears at once with every byte; an existing file (``--overwrite``) is replaced
        through a temporary name, as named temporary files are."""
        proc = f"/proc/self/fd/{job.fd}"
        name = job.name
        try:
            os.link(proc, name, dst_dir_fd=job.dir_fd, follow_symlinks=True)
        except FileExistsError:
            tmp = job.tmp_name
            os.link(proc, tmp, dst_dir_fd=job.dir_fd, follow_symlinks=True)
            try:
                os.replace(tmp, name, src_dir_fd=job.dir_fd, dst_dir_fd=job.dir_fd)
            except OSError:
                os.unlink(tmp, dir_fd=job.dir_fd)
                raise
        except IsADirectoryError:
            job.error = "a directory is in the way of this file"

    @staticmethod
    def _tally_file(job: _Job, tally: _Tally) -> None:
        node = job.node
        if job.error is not None:
            tally.errors.append((job.snap_path, job.error))
            return
        tally.files += 1
        tally.bytes_total += node.size
        count_skipped(tally.xattrs_skipped, job.xattrs_skipped)
        if job.direct:
            tally.bytes_direct += node.size
        if node.nlink > 1:
            tally.done[(node.dev, node.inode)] = job.dest

    def _merge(self, tally: _Tally) -> None:
        with self._lock:
            self.files += tally.files
            self.bytes_total += tally.bytes_total
            self.bytes_written += tally.bytes_written
            self.bytes_direct += tally.bytes_direct
            if self.first_byte_s is None:
                self.first_byte_s = tally.first_byte_s
            self.done.update(tally.done)
            self.errors.extend(tally.errors)
            for name, n in tally.xattrs_skipped.items():
                self.xattrs_skipped[name] = self.xattrs_skipped.get(name, 0) + n

    def _fail(self, snap_path: bytes, error: str) -> None:
        with self._lock:
            self.errors.append((snap_path, error))

    def wait(self, tick: Callable[[], None] | None = None) -> None:
        """Wait for every file submitted; ``tick()`` is called every 0.2 s meanwhile, from a
        thread of its own (a progress line keeps moving while large files are written; the
        waiting itself is the same with or without it)."""
        done = threading.Event()
        ticker = None
        if tick is not None:
            beat = tick

            def ticking() -> None:
                while not done.wait(0.2):
                    beat()

            ticker = threading.Thread(target=ticking, name="bcdr-restore-tick", daemon=True)
            ticker.start()
        try:
            self._flush_small()
            if self._feeder is not None:
                self._large.put(None)
                self._feeder.join()
            self._pool.shutdown(wait=True)
            if self._batch_pool is not None:
                self._batch_pool.shutdown(wait=True)
        finally:
            done.set()
            if ticker is not None:
                ticker.join()
        self._writers.shutdown(wait=True)
        if self._procs is not None:
            self._procs.shutdown(cancel=False)  # every batch submitted is restored
        if self._broken:
            raise BcdrError(
                "a worker process of this restore ended unexpectedly (killed, or out of "
                "memory): files it was writing may be incomplete",
                hint="run the restore again with --overwrite; BCDR_WORKER_PROCESSES=0 "
                "restores with threads instead",
            )
