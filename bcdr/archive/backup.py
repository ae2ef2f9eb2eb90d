"""Scan file trees and store them as trees and chunks, reusing the parent snapshot's work.

The snapshot's root tree mirrors the absolute paths backed up (``/data/ckpt`` becomes
``data`` -> ``ckpt`` -> ...), as restic and borg do, so several paths fit in one snapshot.
A file whose size, mtime, ctime and inode match the parent snapshot's node keeps its chunk list
without being read (unless ``force_read``).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import BinaryIO, TypedDict

from bcdr.archive.layout import Layout, plan_layout
from bcdr.archive.patterns import PathMatcher
from bcdr.archive.pipeline import ChunkPipeline
from bcdr.archive.safetensors import SAFETENSORS, Segment, file_segments
from bcdr.archive.statahead import Stat, StatAhead
from bcdr.archive.xattrs import Xattrs, read_xattrs
from bcdr.errors import CorruptObject
from bcdr.memory import big_buffers_ahead
from bcdr.repository.chunker import Readable
from bcdr.repository.hashing import RegionFingerprint, fingerprint, new_file_fingerprint
from bcdr.repository.pack import TREE
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import SkippedPath
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree

#: Small files are read in batches of this many files or bytes, whichever comes first.
BATCH_FILES = 64
BATCH_BYTES = 8 * 1024 * 1024
#: Files up to this size are read by the worker processes, where per-file Python work is
#: spread over the cores. Larger ones are read by the walk, their chunks compressed in threads
#: (native code that releases the GIL): a worker holding an 8 MiB dataset shard whole, with its
#: compressed and sealed copies, raised each worker by about 12 MiB. Bench corpus, initial
#: backup, 9 alternating runs: peak memory, workers counted, median 151 -> 136 MiB; wall
#: unchanged (medians 4.3 and 4.2 s).
WORKER_FILE_MAX = 1024 * 1024
CHANGED_WHILE_READ = "changed while it was read; the stored copy may be torn"
#: A file listed as small that had grown past what a worker reads whole when it was opened:
#: read again in chunks (a shard's part is left to the commit), never whole into memory.
GREW = "grew past a small file's size since it was listed"


@dataclass
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    bytes_unchanged: int = 0  # of files taken from the parent as they were (not read)
    bytes_added: int = 0
    blobs_added: int = 0
    packs_written: int = 0
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class ScanProblems:
    skipped: list[SkippedPath] = field(default_factory=list)  # errors: exit 3
    warnings: list[SkippedPath] = field(default_factory=list)  # special files, changed files

    def error(self, path: bytes, reason: str) -> None:
        self.skipped.append(SkippedPath(os.fsdecode(path), reason))

    def warn(self, path: bytes, reason: str) -> None:
        self.warnings.append(SkippedPath(os.fsdecode(path), reason))


ProgressFn = Callable[[BackupStats, bytes], None]


class Archiver:
    def __init__(
        self,
        repo: Repository,
        *,
        parent_tree: bytes | None = None,
        excludes: PathMatcher | None = None,
        force_read: bool = False,
        progress: ProgressFn | None = None,
        workers: int | None = None,
        prepared: Prepared | None = None,
        one_file_system: bool = False,
    ):
        """``prepared(path, lstat)``: a file's chunks and digest read by another process
        (a shard of a sharded backup) for exactly this version of it, or None (it is read
        here). ``one_file_system``: a folder on another device than the path given that
        holds it is kept as an empty folder (a mount point), its contents not read."""
        self.one_file_system = one_file_system
        self._devices: set[int] = set()  # of the paths given (one_file_system)
        self._stats = StatAhead()  # threads made only on a network filesystem, after the fork
        self.repo = repo
        self.prepared = prepared
        self.parent_tree = parent_tree
        self.excludes = excludes or PathMatcher([])
        self.force_read = force_read
        self.progress = progress
        self.stats = BackupStats()
        self.problems = ScanProblems()
        self._pipeline = ChunkPipeline(repo, workers, fork_for=self)
        self._batch: list[tuple[bytes, Node, bool]] = []
        self._batch_bytes = 0
        self._part_batch: list[tuple[bytes, PartRead]] = []  # a shard's small files
        self._part_batch_bytes = 0
        self._dropped: set[int] = set()  # id() of nodes whose file could not be read
        self._hardlinks: dict[tuple[int, int], Node] = {}
        self._last_progress = 0.0
        self._started = time.monotonic()
        self._repo_folder = folder_id(repo.local_folder)

    def run(self, paths: list[bytes]) -> bytes:
        """Back up ``paths`` (absolute, existing); return the root tree id."""
        started = time.monotonic()
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, 20000))
        root = Node(b"", DIR)
        for path in paths if self.one_file_system else ():
            try:
                self._devices.add(os.lstat(path).st_dev)
            except OSError:
                pass  # the walk says why
        try:
            big_buffers_ahead()  # workers forked next set their own, leaner heap
            self._pipeline.start()
            self._save_virtual(b"/", plan_layout(paths), self._children(self.parent_tree), root)
            self._flush_batch()
            self._pipeline.drain()
        finally:
            sys.setrecursionlimit(old_limit)
            self._stats.close()
            self._pipeline.close()
        self._started = started
        assert root.subtree
        return root.subtree

    def finish_stats(self) -> BackupStats:
        """Fill in what the writer knows; call after the repository was flushed."""
        w = self.repo.writer
        self.stats.bytes_added = w.bytes_added
        self.stats.blobs_added = w.blobs_added
        self.stats.packs_written = w.packs_written
        self.stats.duration_s = time.monotonic() - self._started
        return self.stats

    # -- trees -------------------------------------------------------------------------------

    def _children(self, tree_id: bytes | None, path: bytes = b"/") -> dict[bytes, Node]:
        """The parent snapshot's entries of a folder. A folder whose tree cannot be read (lost
        pack, damaged blob, deleted index file) has no parent: its files are read again, so
        one damaged snapshot does not stop every later backup of its job."""
        if tree_id is None:
            return {}
        try:
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        except CorruptObject as exc:
            self.problems.warn(path, f"unreadable in the parent snapshot ({exc}); read in full")
            self.repo.distrust(tree_id)  # its tree, saved again, must not dedup against it
            return {}
        return {n.name: n for n in nodes}

    def _parent_children(self, pnode: Node | None, path: bytes) -> dict[bytes, Node]:
        if pnode is None or pnode.type != DIR:
            return {}
        return self._children(pnode.subtree, path)

    def _save_tree(
        self,
        into: Node,
        nodes: list[Node],
        parent: dict[bytes, Node] | None = None,
        pnode: Node | None = None,
    ) -> None:
        """Store the tree of ``nodes`` as ``into.subtree`` once their files are read: queued
        behind their tasks, so the walk goes on meanwhile. Files that could not be read are
        left out then."""

        def save() -> None:
            kept = [n for n in nodes if id(n) not in self._dropped]
            if parent is not None and self._same_as_parent(kept, parent, pnode):
                assert pnode is not None
                into.subtree = pnode.subtree
                return
            into.subtree = self.repo.save_blob(TREE, encode_tree(kept))
            self.stats.packs_written = self.repo.writer.packs_written

        self._flush_batch()
        self._pipeline.then(save)

    def _save_virtual(
        self, path: bytes, layout: Layout, parent: dict[bytes, Node], into: Node
    ) -> None:
        """The folders above the backed-up paths; ``into.subtree`` is filled in when the
        pipeline reaches it."""
        nodes = []
        for name, sub in sorted(layout.items()):
            full = os.path.join(path, name)
            if sub is None:
                node = self._save_path(full, name, parent.get(name))
            else:
                node = _dir_node(name, os.lstat(full), None)
                self._save_virtual(full, sub, self._parent_children(parent.get(name), full), node)
            if node is not None:
                nodes.append(node)
        self._save_tree(into, nodes)

    # -- entries -----------------------------------------------------------------------------

    def _save_path(
        self,
        path: bytes,
        name: bytes,
        pnode: Node | None,
        ahead: Stat | None = None,
        xattrs: Xattrs | None = None,
    ) -> Node | None:
        """``ahead``, ``xattrs``: the path's ``lstat`` (or its error) and extended
        attributes, when taken already (bcdr/archive/statahead.py)."""
        try:
            if ahead is None:
                st = os.lstat(path)
            elif isinstance(ahead, OSError):
                raise ahead
            else:
                st = ahead
        except FileNotFoundError:
            self._skip(path, "vanished before it was read")
            return None
        except OSError as exc:
            self._skip(path, f"cannot stat: {exc.strerror}")
            return None
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._save_file(path, name, st, pnode, xattrs)
        if stat.S_ISDIR(mode):
            if (st.st_dev, st.st_ino) == self._repo_folder:
                self.problems.warn(path, "the repository itself: not backed up into itself")
                return None
            return self._save_dir(path, name, st, pnode, xattrs)
        if stat.S_ISLNK(mode):
            return self._save_symlink(path, name, st, xattrs)
        kind = "socket" if stat.S_ISSOCK(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device"
        self.problems.warn(path, f"{kind} skipped (special files are not backed up)")
        return None

    def _save_dir(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        pnode: Node | None,
        xattrs: Xattrs | None = None,
    ) -> Node | None:
        if self.one_file_system and self._devices and st.st_dev not in self._devices:
            mount = _dir_node(name, st, None)
            self._save_tree(mount, [], {}, None)
            self.stats.dirs += 1
            return mount
        try:
            names = sorted(e.name for e in os.scandir(path))
        except FileNotFoundError:
            self._skip(path, "vanished before it was read")
            return None
        except OSError as exc:
            self._skip(path, f"cannot list directory: {exc.strerror}")
            return None
        parent = self._parent_children(pnode, path)
        nodes = []
        prefix = path if path.endswith(b"/") else path + b"/"
        if self.excludes:
            names = [c for c in names if not self.excludes.matches(prefix + c)]
        fulls = [prefix + child for child in names]
        # a network filesystem: the entries' stats taken ahead, and in a folder no parent
        # snapshot holds (every entry's attributes are read) their attributes too
        ahead = self._stats.slow(path, st.st_dev)
        stats = self._stats.lstats(fulls, ahead)
        attrs = self._stats.xattrs(fulls) if ahead and not parent else None
        for full, child, its_stat in zip(fulls, names, stats, strict=True):
            its_attrs = next(attrs) if attrs is not None else None
            node = self._save_path(full, child, parent.get(child), its_stat, its_attrs)
            if node is not None:
                nodes.append(node)
        self.stats.dirs += 1
        node = _dir_node(name, st, None)
        node.xattrs = read_xattrs(path) if xattrs is None else xattrs
        self._save_tree(node, nodes, parent, pnode)
        return node

    def _same_as_parent(
        self, nodes: list[Node], parent: dict[bytes, Node], pnode: Node | None
    ) -> bool:
        """The no-change path: a folder whose entries all equal the parent snapshot's (same
        metadata, same content ids, same subtrees, nothing added or removed) keeps the parent's
        tree id, without encoding and hashing the tree again. Entries still being read have no
        content yet, so they never compare equal; and a tree only a prune's mark still holds
        is never reused (it may be swept)."""
        if pnode is None or pnode.subtree is None or len(nodes) != len(parent):
            return False
        if any(a is not b and a != b for a, b in zip(nodes, parent.values(), strict=True)):
            return False
        return self.repo.reusable([pnode.subtree])

    def _save_symlink(
        self, path: bytes, name: bytes, st: os.stat_result, xattrs: Xattrs | None = None
    ) -> Node | None:
        try:
            target = os.readlink(path)
        except OSError as exc:
            self._skip(path, f"cannot read link: {exc.strerror}")
            return None
        self.stats.symlinks += 1
        attrs = read_xattrs(path) if xattrs is None else xattrs
        return Node(name, SYMLINK, **_meta(st), target=target, xattrs=attrs)

    def _save_file(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        pnode: Node | None,
        xattrs: Xattrs | None = None,
    ) -> Node | None:
        self.stats.bytes_total += st.st_size
        link_key = (st.st_dev, st.st_ino)
        if (
            pnode is not None
            and st.st_nlink == 1
            and not self.force_read
            and identical(pnode, st)
            and self.repo.reusable(pnode.content)
        ):
            # The no-change path: every recorded field is the same, so the parent's node is
            # this file's node (no new object; the folder's comparison is an identity check).
            self.stats.files_unchanged += 1
            self.stats.bytes_unchanged += st.st_size
            if self.progress is not None:
                self._tick(path)
            return pnode
        node = _file_node(name, st)
        node.xattrs = read_xattrs(path) if xattrs is None else xattrs
        if st.st_nlink > 1 and link_key in self._hardlinks:
            first = self._hardlinks[link_key]
            node.content, node.digest = first.content, first.digest
            self.stats.files_unchanged += 1
            return node
        if self._take_prepared(path, st, node, pnode is None):
            if st.st_nlink > 1:
                self._hardlinks[link_key] = node
            return node
        if (
            pnode is not None
            and not self.force_read
            and same_content(pnode, st)
            and self.repo.reusable(pnode.content)
        ):
            node.content, node.digest = list(pnode.content), pnode.digest
            self.stats.files_unchanged += 1
            self.stats.bytes_unchanged += st.st_size
        elif self._small(path, st.st_size) and st.st_nlink == 1:
            self._queue_file(path, node, pnode is None)
        elif self._read_file(path, node):
            self._count_read(pnode is None)
        else:
            return None
        if st.st_nlink > 1:
            self._hardlinks[link_key] = node
        return node

    def _take_prepared(self, path: bytes, st: os.stat_result, node: Node, new: bool) -> bool:
        """Fill ``node`` from what another process read of this very file, if it did and its
        chunks may be built on."""
        found = self.prepared(path, st) if self.prepared is not None else None
        if found is None or not self.repo.reusable(found[0]):
            return False
        node.content, node.digest = found
        self._count_read(new)
        return True

    def _small(self, path: bytes, size: int) -> bool:
        """Is the file read whole in a worker, batched with others (a few chunks at most)?"""
        region = self.repo.chunker.params.region
        return (
            size <= min(WORKER_FILE_MAX, self.repo.chunker.whole_max)
            and (not region or size <= region)
            and not path.endswith(SAFETENSORS)
        )

    def read_small(self, path: bytes, size: int) -> PartRead | None:
        """(a shard) :meth:`read_part` of a whole small file of ``size`` bytes as planned,
        read in a worker batched with others as a backup reads them; None when the file is
        not small. Read at another size, it is told as changed while read."""
        if not self._small(path, size):
            return None
        part = PartRead(path, 0, size)
        self._part_batch.append((path, part))
        self._part_batch_bytes += size
        if len(self._part_batch) >= BATCH_FILES or self._part_batch_bytes >= BATCH_BYTES:
            self._flush_parts()
        return part

    def _flush_parts(self) -> None:
        batch, self._part_batch, weight = self._part_batch, [], self._part_batch_bytes
        self._part_batch_bytes = 0
        if batch:
            paths = [path for path, _ in batch]
            self._pipeline.run_forked(
                "_read_batch", (paths,), partial(self._parts_read, batch), weight
            )

    def _parts_read(self, batch: list[tuple[bytes, PartRead]], results: list[WholeFile]) -> None:
        """(main thread) Fill in the parts of a batch and store their chunks, in order."""
        for (_, part), res in zip(batch, results, strict=True):
            error, size, mtime_ns, ctime_ns, digest, changed, chunks, inode = res
            if error is not None:
                part.error = error
                continue
            for blob_id, encoded, raw_len in chunks:
                part.content.append(blob_id)
                self._pipeline.store(blob_id, encoded, raw_len)
            part.meta = (size, mtime_ns, ctime_ns, inode)
            part.digest = digest
            if changed or size != part.end:
                part.error = CHANGED_WHILE_READ
            self.stats.bytes_read += size

    def read_part(self, path: bytes, start: int, end: int) -> PartRead:
        """(a shard of a sharded backup; between :meth:`begin` and :meth:`end`) Read, cut and
        store bytes ``[start, end)`` of the file ``path``, cut exactly as a whole pass cuts
        them (``start`` and ``end`` are region boundaries, or the file's ends). Its chunk
        ids fill ``PartRead.content`` once the pipeline is drained."""
        part = PartRead(path, start, end)
        opened = _open_source(path)
        if isinstance(opened, str):
            part.error = opened
            return part
        fd, before = opened
        region = self.repo.chunker.params.region
        try:
            with os.fdopen(fd, "rb", buffering=0) as f:
                part.meta = (before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino)
                hasher = new_file_fingerprint(region)
                pos = start
                for seg, reader in self._segments(path, f, before.st_size):
                    if seg.end <= start or seg.start >= end:
                        continue
                    if (seg.start, seg.end) != (max(seg.start, start), min(seg.end, end)):
                        part.error = "its layout changed since the run was planned"
                        return part
                    if not isinstance(reader, RangeReader):
                        reader = RangeReader(fd, seg.start, seg.end)
                    # a segment read whole is handed on as views of its buffer (as a backup)
                    keep = self.repo.chunker.read_whole(seg.end - seg.start)
                    for chunk in self.repo.chunker.chunks(reader, seg.end - seg.start):
                        layout = (
                            (seg.elsize, (seg.start - pos) % seg.elsize) if seg.elsize else None
                        )
                        hasher.update(chunk)
                        pos += len(chunk)
                        self._pipeline.submit(chunk if keep else bytes(chunk), part.content, layout)
                        self.stats.bytes_read += len(chunk)
                after = os.fstat(fd)
        except OSError as exc:
            part.error = f"read error: {exc.strerror}"
            return part
        if pos != end or _changed(before, after, before.st_size):
            part.error = CHANGED_WHILE_READ
        if start == 0 and end == before.st_size and (not region or end <= region):
            part.digest = hasher.hexdigest()  # the whole file, of one region at most
        elif isinstance(hasher, RegionFingerprint):
            part.regions = hasher.region_digests()
        else:
            part.error = "a part of a file in a repository without regions"
        return part

    def begin(self, *, processes: bool = True) -> None:
        """Start the pipeline for :meth:`read_part` calls (a shard's run); ``processes``:
        fork the worker processes (a shard with few small files does without: its threads
        read them)."""
        big_buffers_ahead()
        if processes:
            self._pipeline.start()

    def reads_small(self, path: bytes, size: int) -> bool:
        """Is a whole file of ``size`` bytes read by :meth:`read_small` (in a worker)?"""
        return self._small(path, size)

    def end(self) -> None:
        """Wait for every chunk :meth:`read_part` submitted, then stop the pipeline."""
        try:
            self._flush_parts()
            self._pipeline.drain()
        finally:
            self._pipeline.close()

    def _queue_file(self, path: bytes, node: Node, new: bool) -> None:
        """Read and store a file of at most a few chunks in a worker, batched with others."""
        self._batch.append((path, node, new))
        self._batch_bytes += node.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        batch, self._batch, weight, self._batch_bytes = self._batch, [], self._batch_bytes, 0
        if batch:
            paths = [path for path, _, _ in batch]
            self._pipeline.run_forked(
                "_read_batch", (paths,), partial(self._batch_read, batch), weight
            )

    def _read_batch(self, paths: list[bytes]) -> list[WholeFile]:
        """(worker process or thread) Read, cut and encode each file."""
        return [self._read_whole(path) for path in paths]

    def _read_whole(self, path: bytes) -> WholeFile:
        opened = _open_source(path)
        if isinstance(opened, str):
            return (opened, 0, 0, 0, "", False, [], 0)
        fd, before = opened
        limit = min(WORKER_FILE_MAX, self.repo.chunker.whole_max)
        try:
            data = _read_to_end(fd, before.st_size, limit) if before.st_size <= limit else None
            if data is None:  # grew since it was listed: not into a worker's memory whole
                return (GREW, 0, 0, 0, "", False, [], 0)
            after = os.fstat(fd)
        except OSError as exc:
            return (f"read error: {exc.strerror}", 0, 0, 0, "", False, [], 0)
        finally:
            os.close(fd)
        chunks: list[ChunkOut] = []
        if len(data) <= self.repo.chunker.params.min_size:  # at most one chunk: no cut, no copy
            if data:
                chunks.append((*self._pipeline.encode(data), len(data)))
        else:
            for view in self.repo.chunker.chunks_of(data):  # views: encode copies what it keeps
                chunks.append((*self._pipeline.encode(view), len(view)))
        changed = _changed(before, after, len(data))
        return (
            None,
            len(data),
            before.st_mtime_ns,
            before.st_ctime_ns,
            fingerprint(data),
            changed,
            chunks,
            before.st_ino,
        )

    def _batch_read(self, batch: list[tuple[bytes, Node, bool]], results: list[WholeFile]) -> None:
        """(main thread) Fill in the nodes of a batch and store the new chunks, in order."""
        for (path, node, new), res in zip(batch, results, strict=True):
            error, size, mtime_ns, ctime_ns, digest, changed, chunks, _ = res
            if error == GREW:  # read here in chunks, as a large file is (or skipped: told)
                if self._read_file(path, node, inline=True):
                    self._count_read(new)
                    self._tick(path)
                else:
                    self._dropped.add(id(node))
                continue
            if error is not None:
                self._skip(path, error)
                self._dropped.add(id(node))
                continue
            for blob_id, encoded, raw_len in chunks:
                node.content.append(blob_id)
                self._pipeline.store(blob_id, encoded, raw_len)
            node.size, node.mtime_ns, node.ctime_ns, node.digest = size, mtime_ns, ctime_ns, digest
            if changed:
                self.problems.error(path, CHANGED_WHILE_READ)
            self.stats.bytes_read += size
            self._count_read(new)
            self._tick(path)

    def _count_read(self, new: bool) -> None:
        if new:
            self.stats.files_new += 1
        else:
            self.stats.files_changed += 1

    def _read_file(self, path: bytes, node: Node, *, inline: bool = False) -> bool:
        """Chunk the file into ``node``; False (and recorded) if it could not be read.
        ``inline``: each chunk encoded and stored here before the next is read, for a call
        from a task's callback: chunks queued then would come after the folder's tree,
        which is queued behind that task and would be written before their ids."""
        opened = _open_source(path)
        if isinstance(opened, str):
            self._skip(path, opened)
            return False
        fd, before = opened
        try:
            with os.fdopen(fd, "rb", buffering=0) as f:
                digest = new_file_fingerprint(self.repo.chunker.params.region)
                total = 0
                for seg, reader in self._segments(path, f, before.st_size):
                    # A segment read whole is handed on as views of its buffer (no copy:
                    # a tensor of up to 32 MiB is held once, not twice)
                    keep = self.repo.chunker.read_whole(seg.end - seg.start)
                    for chunk in self.repo.chunker.chunks(reader, seg.end - seg.start):
                        layout = (
                            (seg.elsize, (seg.start - total) % seg.elsize) if seg.elsize else None
                        )
                        digest.update(chunk)
                        total += len(chunk)
                        if inline:
                            blob_id, encoded = self._pipeline.encode(chunk, layout)
                            node.content.append(blob_id)
                            self._pipeline.store(blob_id, encoded, len(chunk))
                        else:
                            data = chunk if keep else bytes(chunk)
                            self._pipeline.submit(data, node.content, layout)
                        self.stats.bytes_read += len(chunk)
                        self._tick(path)
                after = os.fstat(fd)
        except OSError as exc:
            self._skip(path, f"read error: {exc.strerror}")
            return False
        if _changed(before, after, total):
            self.problems.error(path, CHANGED_WHILE_READ)
        node.size = total
        node.mtime_ns = before.st_mtime_ns
        node.ctime_ns = before.st_ctime_ns
        node.digest = digest.hexdigest()
        return True

    def _segments(self, path: bytes, f: BinaryIO, size: int) -> Iterator[tuple[Segment, Readable]]:
        """The byte ranges to chunk separately: tensors of a safetensors file, else one; each
        cut again at the repository's region boundaries (bcdr/repository/chunker.py)."""
        fd = f.fileno()
        params = self.repo.chunker.params
        segs = file_segments(path, partial(_pread, fd), size, params.min_size, params.region)
        if len(segs) == 1:  # the whole file, read as it comes
            yield segs[0], f
            return
        for seg in segs:
            yield seg, RangeReader(fd, seg.start, seg.end)

    def _skip(self, path: bytes, reason: str) -> None:
        self.stats.skipped += 1
        self.problems.error(path, reason)

    def _tick(self, path: bytes) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now - self._last_progress >= 0.2:
            self._last_progress = now
            self.stats.bytes_added = self.repo.writer.bytes_added
            self.progress(self.stats, path)


@dataclass
class PartRead:
    """What a shard read of one file: bytes ``[start, end)``, the file's (size, mtime_ns,
    ctime_ns, inode) when it was read, its chunk ids, and its fingerprint (``digest``) or,
    for a file cut in regions, its regions' digests (``regions``); ``error`` if not read."""

    path: bytes
    start: int
    end: int
    meta: tuple[int, int, int, int] = (0, 0, 0, 0)
    content: list[bytes] = field(default_factory=list)
    digest: str | None = None
    regions: list[bytes] = field(default_factory=list)
    error: str | None = None


#: ``Archiver(prepared=...)``: (chunk ids, digest) of a file read elsewhere, or None.
Prepared = Callable[[bytes, os.stat_result], "tuple[list[bytes], str] | None"]


#: A new chunk of a file read by a worker: id, sealed blob (None if already stored), raw length.
ChunkOut = tuple[bytes, tuple[int, bytes] | None, int]
#: A file read whole by a worker: (why it could not be read or None, size, mtime_ns, ctime_ns,
#: fingerprint, changed while read, chunks, inode). A plain tuple: results cross a pipe in batches,
#: and a tuple pickles 5x faster than a dataclass (1.3 against 6.5 us a file).
WholeFile = tuple[str | None, int, int, int, str, bool, list[ChunkOut], int]


class RangeReader:
    """A read-only stream over ``[start, end)`` of a file descriptor (positioned reads)."""

    def __init__(self, fd: int, start: int, end: int):
        self._fd, self._pos, self._end = fd, start, end

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        data = os.pread(self._fd, left if n < 0 else min(n, left), self._pos)
        self._pos += len(data)
        return data

    def readinto(self, buf: memoryview) -> int:
        view = memoryview(buf)[: max(0, self._end - self._pos)]
        got = os.preadv(self._fd, [view], self._pos) if len(view) else 0
        self._pos += got
        return got


def _pread(fd: int, length: int, offset: int) -> bytes:
    return os.pread(fd, length, offset)


def _read_to_end(fd: int, size: int, limit: int) -> bytes | None:
    """All of ``fd`` from its position, expected to be ``size`` bytes: one read (and no file
    object) when it is; reads on to the end when it grew, shrank or a read came back short,
    but None once past ``limit`` bytes. 10 us a file less than ``os.fdopen(...).readall()``."""
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    parts, total = [data], len(data)
    while total <= limit and (part := os.read(fd, max(size, 1 << 20))):
        parts.append(part)
        total += len(part)
    return b"".join(parts) if total <= limit else None


def _open_source(path: bytes) -> tuple[int, os.stat_result] | str:
    """A descriptor of the regular file to back up and its stat, or why it cannot be read.
    Opened without waiting (``O_NONBLOCK``): a file swapped for a FIFO since it was seen
    would otherwise block the open until a writer came, which may be never; it is refused
    as no longer a regular file, and the descriptor set back to blocking reads."""
    try:
        fd = _open_noatime(path)
    except FileNotFoundError:
        return "vanished before it was read"
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return "no longer a regular file"
        os.set_blocking(fd, True)
    except OSError as exc:
        os.close(fd)
        return f"cannot open: {exc.strerror}"
    return fd, st


def _changed(before: os.stat_result, after: os.stat_result, read: int) -> bool:
    """Did the file change while it was read (``read`` bytes between two fstat calls)?"""
    return read != before.st_size or (after.st_mtime_ns, after.st_size, after.st_ctime_ns) != (
        before.st_mtime_ns,
        before.st_size,
        before.st_ctime_ns,
    )


def _open_noatime(path: bytes) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass  # O_NOATIME needs ownership; fall back
        except OSError as exc:
            if exc.errno != errno.EPERM:
                raise
    return os.open(path, flags)


def folder_id(path: str | None) -> tuple[int, int] | None:
    """(device, inode) of a local repository's folder, or None (not local, not there)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def identical(pnode: Node, st: os.stat_result) -> bool:
    """Would a node made from ``st`` equal ``pnode``? (Names are equal by lookup.)"""
    return (
        same_content(pnode, st)
        and pnode.mode == st.st_mode & 0o7777
        and pnode.uid == st.st_uid
        and pnode.gid == st.st_gid
        and pnode.dev == st.st_dev
        and pnode.nlink == st.st_nlink
    )


def same_content(pnode: Node, st: os.stat_result) -> bool:
    """Is the file ``st`` describes the very version ``pnode`` recorded, so that its content
    can be the node's? (Its other metadata may differ: a hardlinked file's node is made anew,
    since its link count and other names are the walk's to record.)"""
    return (
        pnode.type == FILE
        and pnode.size == st.st_size
        and pnode.mtime_ns == st.st_mtime_ns
        and pnode.ctime_ns == st.st_ctime_ns
        and pnode.inode == st.st_ino
    )


class _Meta(TypedDict):
    mode: int
    uid: int
    gid: int
    mtime_ns: int


def _meta(st: os.stat_result) -> _Meta:
    """The metadata every node records."""
    return {
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime_ns": st.st_mtime_ns,
    }


def _file_node(name: bytes, st: os.stat_result) -> Node:
    # Positional, one call: built once per file on every backup, the no-change path included.
    return Node(
        name,
        FILE,
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_size,
    )


def _dir_node(name: bytes, st: os.stat_result, subtree: bytes | None) -> Node:
    return Node(name, DIR, **_meta(st), subtree=subtree)
