"""Copying a snapshot's trees and blobs from one repository into another (``bcdr copy``).

Two repositories never share blob ids: a content id is keyed by the repository's own key
(DESIGN.md), so the same chunk has one id in the source and another in the destination, and
every tree that names chunks or subtrees is written anew with the destination's ids. Each
chunk is read from the source in runs of neighbours in a pack, opened and checked against its
source id, given its destination id, and sealed again with the destination's key; its
compressed bytes are kept as they are (no second compression), so a copy costs about what a
``check --read-data`` of the same bytes costs, plus the upload.

The destination keeps a *copy map* per source repository (``copies/<source repository id>/``
objects, sealed with the destination's key): source chunk id -> destination chunk id(s). A
later copy from the same source looks each chunk up there first, and a chunk whose
destination blob is indexed is not read at all: a rerun reads only the source's trees. The map
is a hint, never trusted alone: a mapped blob that the destination no longer holds (a prune
after a forget) is copied again.

When the two repositories cut files differently (other chunker sizes or seed), each file that
is not yet in the destination is read whole from the source and cut again with the
destination's chunker, so later backups into the destination deduplicate against it; the map
then keys the file's whole chunk list.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import struct
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from bcdr.archive.safetensors import ReadAt, file_segments
from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.parallel import ordered_map
from bcdr.repository.compression import Layout
from bcdr.repository.hashing import object_name
from bcdr.repository.index import BlobLocation
from bcdr.repository.pack import DATA, TREE
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, Node, decode_tree, encode_tree

PREFIX = "copies/"
MAP_AAD = b"copymap"
#: Neighbouring blobs of a pack read with one request: at most RUN_GAP apart, RUN_MAX a run.
RUN_GAP = 64 * 1024
RUN_MAX = 8 * 1024 * 1024
_RECORD = struct.Struct("<32sI")
#: A copy map key for a whole file (re-chunked): this prefix hashed with its chunk ids.
_FILE_KEY = b"bcdr-copy-file\0"

ProgressFn = Callable[["CopyStats", str], None]


@dataclass
class CopyStats:
    files: int = 0
    trees: int = 0
    blobs_copied: int = 0  # data blobs read from the source and stored in the destination
    blobs_skipped: int = 0  # data blobs the destination already held
    bytes_copied: int = 0  # their bytes as files have them (decoded)
    bytes_skipped: int = 0
    bytes_read: int = 0  # stored bytes read from the source
    rechunked_files: int = 0
    # progress only (not in results): the files' bytes handled so far, as a snapshot's
    # bytes_total counts them, and the bytes_total of every snapshot this run copies
    bytes_done: int = 0
    bytes_planned: int = 0

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if k not in PROGRESS_ONLY}


PROGRESS_ONLY = ("bytes_done", "bytes_planned")
#: How often a copy inside one tree (a large file) redraws its progress line, at most.
PROGRESS_EVERY_S = 0.2


class CopyMap:
    """Source id -> destination id(s) for one source repository, kept in the destination."""

    def __init__(self, dst: Repository, source_id: str):
        self.dst = dst
        self.folder = f"{PREFIX}{source_id}/"
        self._map: dict[bytes, bytes] = {}  # key -> destination ids, concatenated
        self._new: dict[bytes, bytes] = {}

    def load(self) -> int:
        """Read every map object of this source; how many entries. A damaged or unreadable
        one is skipped (its chunks are read from the source again)."""
        for info in self.dst.storage.list(self.folder):
            try:
                sealed = self.dst.storage.get(info.key)
                if object_name(sealed) != info.key.rsplit("/", 1)[-1]:
                    continue
                self._parse(self.dst.cipher.open(sealed, MAP_AAD, f"copy map {info.key}"))
            except (ObjectNotFound, CorruptObject):
                continue
        return len(self._map)

    def _parse(self, data: bytes | memoryview) -> None:
        view, pos = memoryview(data), 0
        while pos + _RECORD.size <= len(view):
            key, count = _RECORD.unpack_from(view, pos)
            pos += _RECORD.size
            ids = bytes(view[pos : pos + 32 * count])
            if len(ids) != 32 * count:
                return  # cut short: the rest is ignored
            pos += 32 * count
            self._map[key] = ids

    def get(self, key: bytes) -> list[bytes] | None:
        ids = self._new.get(key) or self._map.get(key)
        if ids is None:
            return None
        return [ids[i : i + 32] for i in range(0, len(ids), 32)]

    def put(self, key: bytes, ids: list[bytes]) -> None:
        joined = b"".join(ids)
        if self._map.get(key) != joined:
            self._new[key] = joined

    def save(self) -> int:
        """Write the entries added since the last save as one object; how many. Called after
        the blobs they name are indexed in the destination."""
        if not self._new:
            return 0
        body = b"".join(
            _RECORD.pack(key, len(ids) // 32) + ids for key, ids in sorted(self._new.items())
        )
        sealed = self.dst.cipher.seal(body, MAP_AAD)
        self.dst.storage.put(f"{self.folder}{object_name(sealed)}", sealed)
        count = len(self._new)
        self._map.update(self._new)
        self._new = {}
        return count


@dataclass
class _Decoded:
    """A source chunk made ready for the destination: its destination id and sealed bytes
    (None when only the plaintext is known: it is compressed anew), and the plaintext when
    it is to be cut again."""

    src_id: bytes
    dst_id: bytes
    codec: int
    raw_len: int
    sealed: bytes | None
    plain: bytes | memoryview | None = None
    layout: Layout | None = None  # a float tensor's, to compress it byte-grouped


@dataclass
class _Run:
    pack: str
    start: int
    end: int
    blobs: list[tuple[bytes, BlobLocation]] = field(default_factory=list)


class Copier:
    """Copies snapshot trees from ``src`` into ``dst`` (the destination's writer must be in
    use: :meth:`Repository.writing`); the caller saves the map and the snapshot."""

    def __init__(
        self,
        src: Repository,
        dst: Repository,
        cmap: CopyMap,
        *,
        progress: ProgressFn | None = None,
    ):
        self.src = src
        self.dst = dst
        self.map = cmap
        self.rechunk = src.config.chunker != dst.config.chunker
        self.stats = CopyStats()
        self.progress = progress
        self._trees: dict[bytes, bytes] = {}  # source tree -> destination tree, this pass
        self._workers = max(2, src.storage.concurrency)
        self._path = ""
        self._tree_bytes: dict[bytes, int] = {}  # source tree -> its files' bytes, this pass
        self._shown = 0.0

    # -- trees -------------------------------------------------------------------------------

    def copy_tree(self, tree_id: bytes) -> bytes:
        """The destination id of source tree ``tree_id``, copied with all it refers to."""
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 20000))
        try:
            return self._tree(tree_id, "/")
        finally:
            sys.setrecursionlimit(old)

    def _tree(self, tree_id: bytes, path: str) -> bytes:
        done = self._trees.get(tree_id)
        if done is not None:
            self.dst.note_reused(done)
            self.stats.bytes_done += self._tree_bytes[tree_id]
            return done
        what = f"tree {tree_id.hex()[:12]} ({path})"
        nodes = decode_tree(self.src.load_blob(tree_id), what)
        files = [n for n in nodes if n.type == FILE and n.content]
        self._path = path
        before = self.stats.bytes_done
        if self.rechunk:
            for node in files:
                node.content = self._rechunk_file(
                    node, f"{path}{node.name.decode(errors='replace')}"
                )
        else:
            translated = self._translate([c for n in files for c in n.content])
            for node in files:
                node.content = [translated[c] for c in node.content]
        self.stats.files += sum(1 for n in nodes if n.type == FILE)
        # exactly the files' bytes, whatever the chunks shared between them counted
        self.stats.bytes_done = before + sum(n.size for n in files)
        for node in nodes:
            if node.type == DIR and node.subtree is not None:
                name = node.name.decode(errors="replace")
                node.subtree = self._tree(node.subtree, f"{path}{name}/")
        new_id = self.dst.save_blob(TREE, encode_tree(nodes))
        self._trees[tree_id] = new_id
        self._tree_bytes[tree_id] = self.stats.bytes_done - before
        self.stats.trees += 1
        if self.progress is not None:
            self.progress(self.stats, path)
        return new_id

    # -- chunks, same chunker ----------------------------------------------------------------

    def _translate(self, src_ids: list[bytes]) -> dict[bytes, bytes]:
        """Source chunk id -> destination chunk id for ``src_ids``: looked up in the map (and
        found stored in the destination), else copied."""
        out: dict[bytes, bytes] = {}
        need: list[bytes] = []
        for sid in dict.fromkeys(src_ids):
            mapped = self.map.get(sid)
            if mapped is not None and len(mapped) == 1 and self.dst.has_blob(mapped[0]):
                out[sid] = mapped[0]
                self.dst.note_reused(mapped[0])
                self.stats.blobs_skipped += 1
                loc = self.src.index.lookup(sid)
                self.stats.bytes_skipped += loc.raw_len if loc is not None else 0
                self.stats.bytes_done += loc.raw_len if loc is not None else 0
            else:
                need.append(sid)
        for item in self._decoded(need):
            out[item.src_id] = item.dst_id
            self._store(item)
            self.map.put(item.src_id, [item.dst_id])
            self._advance(item.raw_len)
        return out

    def _advance(self, nbytes: int) -> None:
        """``nbytes`` of a file handled: the progress line moves inside a large file too."""
        self.stats.bytes_done += nbytes
        if self.progress is not None:
            now = time.monotonic()
            if now - self._shown >= PROGRESS_EVERY_S:
                self._shown = now
                self.progress(self.stats, self._path)

    def _store(self, item: _Decoded) -> None:
        """Store a decoded chunk in the destination unless it holds it already."""
        if self.dst.has_blob(item.dst_id):
            self.dst.note_reused(item.dst_id)
            self.stats.blobs_skipped += 1
            self.stats.bytes_skipped += item.raw_len
            return
        sealed = item.sealed
        codec = item.codec
        if sealed is None:
            assert item.plain is not None
            codec, sealed = self.dst.encode_blob(item.dst_id, item.plain, item.layout)
        self.dst.writer.add(item.dst_id, DATA, codec, item.raw_len, sealed)
        self.stats.blobs_copied += 1
        self.stats.bytes_copied += item.raw_len

    def _decoded(self, src_ids: list[bytes], *, plain: bool = False) -> Iterator[_Decoded]:
        """The chunks ``src_ids`` in the order given, read from the source in runs of
        neighbours (a file's chunks follow each other in its packs), each verified against its
        id; at most ``2 * workers`` runs are held at once."""
        if not src_ids:
            return
        locs = self.src.index.lookup_many(src_ids)
        missing = [sid for sid, loc in zip(src_ids, locs, strict=True) if loc is None]
        if missing:
            raise CorruptObject(
                f"chunk {missing[0].hex()[:12]} of {self._path} is not in the source's index"
                + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""),
                where=self.src.storage.url,
                hint="run `bcdr check` on the source; nothing of this snapshot was committed",
            )
        runs = _runs([(sid, loc) for sid, loc in zip(src_ids, locs, strict=True) if loc])
        for decoded, nread in ordered_map(
            lambda run: self._decode_run(run, plain), runs, self._workers
        ):
            self.stats.bytes_read += nread  # counted here: the runs are decoded in threads
            yield from decoded

    def _decode_run(self, run: _Run, plain: bool) -> tuple[list[_Decoded], int]:
        """(a worker thread) Read one run of a pack and make each of its blobs ready for the
        destination. A run that cannot be read whole is read blob by blob (another copy of a
        blob stored twice may serve)."""
        try:
            data = self.src.read_pack_range(run.pack, run.start, run.end - run.start)
        except ObjectNotFound:
            data = b""
        out = []
        for sid, loc in run.blobs:
            a, b = loc.offset - run.start, loc.offset - run.start + loc.stored_len
            try:
                if len(data) < b:
                    raise CorruptObject(f"pack {loc.pack[:12]} is missing or cut short")
                out.append(self._reseal(sid, loc, memoryview(data)[a:b], plain))
            except CorruptObject:  # any other stored copy of the blob, else the error
                content = self.src.read_blob(sid)  # raises CorruptObject naming the pack
                dst_id = self.dst.content_id(content)
                out.append(_Decoded(sid, dst_id, 0, len(content), None, content))
        return out, len(data)

    def _reseal(self, sid: bytes, loc: BlobLocation, sealed: memoryview, plain: bool) -> _Decoded:
        what = f"blob {sid.hex()[:12]} (pack {loc.pack[:12]})"
        stored = self.src.cipher.open(sealed, sid, what)
        content = self.src.compressor.decompress(loc.codec, stored, loc.raw_len, what)
        if self.src.content_id(content) != sid:
            raise CorruptObject(
                f"{what}: content does not match its id",
                where=self.src.storage.url,
                hint="run `bcdr check --read-data` on the source",
            )
        dst_id = self.dst.content_id(content)
        resealed = self.dst.cipher.seal(bytes(stored), dst_id)
        return _Decoded(sid, dst_id, loc.codec, loc.raw_len, resealed, content if plain else None)

    # -- whole files, cut again --------------------------------------------------------------

    def _rechunk_file(self, node: Node, path: str) -> list[bytes]:
        """A file's destination chunk ids when the chunkers differ: from the map when every
        one is stored, else the file is read from the source and cut again."""
        key = hashlib.sha256(_FILE_KEY + b"".join(node.content)).digest()
        mapped = self.map.get(key)
        if mapped is not None and all(self.dst.has_blob(i) for i in mapped):
            for i in mapped:
                self.dst.note_reused(i)
            self.stats.blobs_skipped += len(mapped)
            self.stats.bytes_skipped += node.size
            return mapped
        self._path = path
        params = self.dst.chunker.params
        segs = file_segments(
            node.name, self._reader_of(node), node.size, params.min_size, params.region
        )
        stream = _Stream(item.plain for item in self._decoded(node.content, plain=True))
        ids: list[bytes] = []
        for seg in segs:  # cut as a backup into the destination would cut the file
            part = _Bounded(stream, seg.end - seg.start)
            pos = seg.start
            for chunk in self.dst.chunker.chunks(part, seg.end - seg.start):
                data = bytes(chunk)
                layout = (seg.elsize, (seg.start - pos) % seg.elsize) if seg.elsize else None
                pos += len(data)
                dst_id = self.dst.content_id(data)
                self._store(_Decoded(b"", dst_id, 0, len(data), None, data, layout))
                ids.append(dst_id)
                self._advance(len(data))
        if stream.total != node.size:
            raise CorruptObject(
                f"{path}: its chunks add up to {stream.total} bytes, the file has {node.size}",
                where=self.src.storage.url,
            )
        self.stats.rechunked_files += 1
        self.map.put(key, ids)
        return ids

    def _reader_of(self, node: Node) -> ReadAt:
        """``read_at`` over a source file's bytes, decoding the chunks that hold them (for a
        safetensors header: the first chunk or two)."""
        locs = self.src.index.lookup_many(node.content)
        starts = list(itertools.accumulate((loc.raw_len if loc else 0 for loc in locs), initial=0))

        def read_at(length: int, offset: int) -> bytes:
            out = b""
            i = max(0, bisect.bisect_right(starts, offset) - 1)
            while len(out) < length and i < len(node.content):
                data = self.src.read_blob(node.content[i], locs[i])
                lo = max(0, offset + len(out) - starts[i])
                out += bytes(data[lo : lo + length - len(out)])
                i += 1
            return out

        return read_at


class _Bounded:
    """The next ``size`` bytes of a stream, as a stream."""

    def __init__(self, stream: _Stream, size: int):
        self._stream, self._left = stream, size

    def read(self, n: int = -1, /) -> bytes:
        data = self._stream.read(self._left if n < 0 else min(n, self._left))
        self._left -= len(data)
        return data


class _Stream:
    """A readable stream over an iterator of byte strings."""

    def __init__(self, parts: Iterable[bytes | memoryview | None]):
        self._parts = iter(parts)
        self._buf = b""
        self.total = 0

    def read(self, n: int = -1, /) -> bytes:
        while n < 0 or len(self._buf) < n:
            part = next(self._parts, None)
            if part is None:
                break
            self._buf += bytes(part)
            self.total += len(part)
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _runs(blobs: list[tuple[bytes, BlobLocation]]) -> list[_Run]:
    """Blobs, in the order given, grouped into runs of neighbours in a pack (one read each)."""
    runs: list[_Run] = []
    for sid, loc in blobs:
        end = loc.offset + loc.stored_len
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.pack == loc.pack
            and last.end <= loc.offset <= last.end + RUN_GAP
            and end - last.start <= RUN_MAX
        ):
            last.end = end
            last.blobs.append((sid, loc))
        else:
            runs.append(_Run(loc.pack, loc.offset, end, [(sid, loc)]))
    return runs


def same_chunker_note(src: Repository, dst: Repository) -> str | None:
    """What the user is told when files are cut again (None when the chunkers agree)."""
    if src.config.chunker == dst.config.chunker:
        return None
    return (
        "the repositories cut files differently (chunker sizes or seed): files are read whole "
        "and cut again for the destination, which takes longer than copying chunks; a "
        "destination made with `bcdr init --copy-chunker-params --from-repo SOURCE` avoids it"
    )
