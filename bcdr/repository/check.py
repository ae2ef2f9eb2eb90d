"""Check a repository: structure always, data on request.

Structure: every index file parses and matches its name; every pack an index lists exists;
every snapshot parses; every tree of every snapshot loads; every chunk a file lists is indexed.
Data (``read_fraction`` > 0): packs are read whole (all, or a random sample), their name is
re-hashed, their header parsed, every blob opened, decompressed and re-hashed to its id, and
the header compared with the index.

Memory does not grow with objects per chunk: the index is loaded into the master index's
columns, each pack the index lists is remembered by a digest of its entries (to compare with
its header), and the chunks the snapshots reference are marked in one byte per index entry.

Problems are *errors* (a snapshot may not restore) or *leftovers* (unreferenced packs of an
interrupted backup, stale locks, temporary files): leftovers are harmless and prune or unlock
removes them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from bcdr.errors import BcdrError, CorruptObject, ObjectNotFound
from bcdr.memory import give_back
from bcdr.parallel import ordered_map
from bcdr.repository import immutability
from bcdr.repository.bounds import expanded_size
from bcdr.repository.hashing import new_object_hasher, object_name
from bcdr.repository.locks import READ, is_stale, list_locks
from bcdr.repository.masterindex import ENTRY_DTYPE, contains
from bcdr.repository.pack import (
    TRAILER,
    PackEntry,
    encode_entries,
    header_span,
    pack_key,
    read_header,
)
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, decode_tree
from bcdr.storage.base import LocalFolder
from bcdr.storage.wrap import Transfer


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    read_fraction: float = 0.0
    downloaded: Transfer | None = None
    evidence: str | None = None  # the evidence record of this check
    damaged_snapshots: list[str] = field(default_factory=list)  # ids that do not restore whole
    repairs: list[str] = field(default_factory=list)  # the commands that fix what was found
    # Azure immutability: are protected snapshots' objects protected as long as they are
    # (bcdr/repository/immutability.py ``Coverage``); None without immutability support
    immutability: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = self.ok
        d["downloaded"] = self.downloaded.to_dict() if self.downloaded else None
        return d


ProgressFn = Callable[[str, int, int], None]

#: check --read-data reads packs in sections of about this size (each worker holds one).
SECTION = 4 * 2**20
#: The first read of a pack's end: trailer and header (about 50 bytes per blob).
TAIL_READ = 64 * 1024
#: Chunk ids looked up in the index at once while walking a snapshot's trees (one search per
#: folder before; 4096 ids hold about 1 MiB of paths and ids).
CONTENT_BATCH = 4096
#: While another command holds a live lock, a temporary file written to in this many seconds
#: may be the one it is filling (a backup writes a pack there as it goes), not a leftover.
TEMP_BUSY = 600.0


@dataclass(frozen=True, slots=True)
class _Listed:
    """What the index lists for one pack, with no object per blob."""

    count: int
    need: int  # where its last blob ends: the pack is at least this long
    digest: bytes  # of its entries in a canonical order (:func:`_entries_digest`)


def _entries_digest(records: np.ndarray) -> bytes:
    """A digest of ENTRY records (``ENTRY_DTYPE``) that does not depend on their order:
    sorted by every field, offset first, then hashed. Equal digests, equal entries."""
    ids = records["id"]
    order = np.lexsort(
        (
            records["raw"],
            records["stored"],
            ids[:, 3],
            ids[:, 2],
            ids[:, 1],
            ids[:, 0],
            records["codec"],
            records["type"],
            records["offset"],
        )
    )
    return bytes.fromhex(object_name(records[order].tobytes()))


def _listed(records: np.ndarray) -> _Listed:
    ends = records["offset"].astype(np.uint64) + records["stored"]
    return _Listed(len(records), int(ends.max()) if len(records) else 0, _entries_digest(records))


class Checker:
    def __init__(self, repo: Repository, progress: ProgressFn | None = None):
        self.repo = repo
        self.report = CheckReport()
        self.progress = progress
        self._indexed: dict[str, _Listed] = {}
        self._stored: dict[str, int] = {}  # pack -> size, as listed
        self._missing_packs: set[str] = set()
        self._seen = np.zeros(0, dtype=bool)  # per index row: referenced by a snapshot
        self._lost_ids = np.empty(0, dtype="S32")  # every copy in a missing pack
        self._index_damage = False  # an index file or a listed pack is damaged or gone
        self._bad_manifests = 0
        self._bad_trees: set[bytes] = set()  # unreadable, or with a file whose chunks are lost
        self._subtrees: dict[bytes, list[bytes]] = {}
        self._entries: dict[bytes, int] = {}  # tree -> its own entry count
        self._roots: list[tuple[str, bytes]] = []  # (snapshot id, root tree)
        self._bad_marks: list[str] = []
        self._bad_packs = False  # --read-data found a damaged pack

    def run(self, read_fraction: float = 0.0, seed: int | None = None) -> CheckReport:
        self._check_index()
        packs = self._check_packs()
        if read_fraction > 0:
            # The snapshot walk (tree decoding: Python) runs in a thread beside the data read
            # (hashing, decryption, zstd: mostly outside the GIL), so neither waits for the
            # other; its findings are reported first, as if it had run alone.
            walk_errors: list[str] = []
            with ThreadPoolExecutor(1, thread_name_prefix="bcdr-check-trees") as pool:
                walk = pool.submit(self._check_snapshots, walk_errors)
                data_errors = self._read_data(packs, read_fraction, seed)
                walk.result()  # raises what the walk raised
            self.report.errors.extend(walk_errors)
            self.report.errors.extend(data_errors)
        else:
            self._check_snapshots(self.report.errors)
        self._name_damaged_snapshots()
        self._check_marks()
        self._check_leftovers()
        self._suggest_repairs()
        self._check_immutability()
        return self.report

    def _check_immutability(self) -> None:
        damaged = set(self.report.damaged_snapshots)
        snaps = [s for s in self.repo.list_snapshots() if s.id not in damaged]
        try:
            cov = immutability.coverage(self.repo, snaps)
        except BcdrError as exc:  # reading protections or trees failed: said, not fatal
            self.report.immutability = {"ok": False, "gaps": [f"not checked: {exc}"]}
            return
        if cov is not None and (cov.days or cov.protected or cov.held):
            self.report.immutability = cov.to_dict()

    def _name_damaged_snapshots(self) -> None:
        """Every snapshot that reaches a damaged tree is named, not only the first one walked
        (later ones share its trees and were not walked again)."""
        damaged: dict[bytes, bool] = {}

        def bad(tree: bytes) -> bool:
            stack, order = [tree], []
            while stack:  # iterative post-order: trees may nest deeper than the stack
                t = stack.pop()
                if t in damaged:
                    continue
                order.append(t)
                damaged[t] = t in self._bad_trees
                stack.extend(c for c in self._subtrees.get(t, ()) if c not in damaged)
            for t in reversed(order):
                damaged[t] = damaged[t] or any(
                    damaged.get(c, False) for c in self._subtrees.get(t, ())
                )
            return damaged[tree]

        def listing(tree: bytes) -> tuple[int, list[bytes]] | None:
            if tree not in self._entries:
                return None
            return self._entries[tree], self._subtrees.get(tree, [])

        for snap_id, root in self._roots:
            try:
                expanded_size(root, listing, f"snapshot {snap_id[:8]}")
            except CorruptObject as exc:  # a tree bomb: no walker will expand it
                self.report.errors.append(str(exc))
                self.report.damaged_snapshots.append(snap_id)
                continue
            if bad(root):
                self.report.damaged_snapshots.append(snap_id)
                if not any(snap_id[:8] in e for e in self.report.errors):
                    self.report.errors.append(
                        f"snapshot {snap_id[:8]}: shares damaged folders with a snapshot named "
                        "above; it does not restore whole"
                    )

    def _check_marks(self) -> None:
        from bcdr.repository.marks import list_marks

        for mark in list_marks(self.repo.storage, self.repo.cipher):
            if mark.damaged:
                self._bad_marks.append(mark.id)
                self.report.errors.append(
                    f"prune mark {mark.id} is damaged ({mark.damaged}); nobody relies on it"
                )

    def _suggest_repairs(self) -> None:
        url, fixes = self.repo.storage.url, self.report.repairs
        if self._index_damage:
            fixes.append(
                f"`bcdr repair index --repo {url}` drops the entries of missing packs and "
                "indexes the packs no index lists"
            )
        if self._bad_packs:
            fixes.append(
                "damaged packs: delete them, then `bcdr repair index`; the next backup of the "
                "same files stores their blobs again (docs/repair.md)"
            )
        count = len(self.report.damaged_snapshots) + self._bad_manifests
        if count:
            fixes.append(
                f"`bcdr repair snapshots --repo {url} --forget` rewrites {count} snapshot(s) "
                "without what is lost (run it after `repair index`)"
            )
        if self._bad_marks:
            fixes.append(f"`bcdr prune --repo {url}` discards the damaged prune mark(s)")

    def _check_index(self) -> None:
        names, capacity = self.repo.index_files()
        # Listed after the index files (a pack is written before the index naming it); a copy
        # of a blob in a pack that is gone is found after every other copy.
        self._stored = self.repo.stored_packs()

        def decoded() -> Iterator[list[tuple[str, np.ndarray]]]:
            for name in names:
                try:
                    packs = self.repo.read_index_records(name)
                except BcdrError as exc:
                    self.report.errors.append(f"index {name[:12]}: {exc}")
                    self._index_damage = True
                    continue
                for pack, records in packs:
                    if pack not in self._indexed:
                        self._indexed[pack] = _listed(records)
                    if pack not in self._stored:
                        self.repo.index.demote(pack)
                yield packs

        self.repo.index.load(decoded(), capacity)
        self.repo.index_loaded = True
        give_back()  # the decoded files and the sort's temporaries (bcdr/memory.py)

    def _check_packs(self) -> dict[str, int]:
        stored = self._stored
        self.report.packs = len(stored)
        for pack, listed in sorted(self._indexed.items()):
            if pack not in stored:
                self._index_damage = True
                self._missing_packs.add(pack)
                self.report.errors.append(
                    f"pack {pack[:12]} is listed in the index but missing "
                    f"({listed.count} blobs lost)"
                )
            elif stored[pack] < listed.need:
                self._index_damage = True
                self.report.errors.append(
                    f"pack {pack[:12]} is truncated: {stored[pack]} bytes, the index needs "
                    f"at least {listed.need}"
                )
        for pack in sorted(set(stored) - set(self._indexed)):
            self.report.leftovers.append(
                f"pack {pack[:12]} is not in any index (left by an interrupted backup; "
                "prune removes it)"
            )
        return stored

    def _check_snapshots(self, errors: list[str]) -> None:
        seen_trees: set[bytes] = set()
        index = self.repo.index
        self._seen = np.zeros(index.rows(), dtype=bool)
        # Blobs whose every copy is in a missing pack (a copy stored again elsewhere counts)
        self._lost_ids = index.only_in(self._missing_packs)
        for name in sorted(self.repo.snapshot_names()):
            try:
                snap = self.repo.load_snapshot(name)
            except CorruptObject as exc:  # its message names the snapshot
                errors.append(str(exc))
                self._bad_manifests += 1
                continue
            except (BcdrError, ObjectNotFound) as exc:
                errors.append(f"snapshot {name[:12]}: {exc}")
                continue
            self.report.snapshots += 1
            self._roots.append((snap.id, bytes.fromhex(snap.tree)))
            stack = [(bytes.fromhex(snap.tree), b"")]
            files: list[tuple[bytes, list[bytes], bytes]] = []
            ids = 0
            while stack:
                tree_id, path = stack.pop()
                if tree_id in seen_trees:
                    continue
                seen_trees.add(tree_id)
                try:
                    nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
                except BcdrError as exc:
                    errors.append(
                        f"snapshot {snap.short_id} {_show(path or b'/')}: tree unreadable: {exc}"
                    )
                    self._bad_trees.add(tree_id)
                    continue
                self.report.trees += 1
                self._entries[tree_id] = len(nodes)
                subtrees = self._subtrees.setdefault(tree_id, [])
                for node in nodes:
                    sub = path + b"/" + node.name
                    if node.type == DIR and node.subtree is not None:
                        stack.append((node.subtree, sub))
                        subtrees.append(node.subtree)
                    elif node.type == FILE and node.content:
                        files.append((sub, node.content, tree_id))
                        ids += len(node.content)
                if ids >= CONTENT_BATCH:  # one index search for many folders' files
                    self._check_content(snap.short_id, files, errors)
                    files, ids = [], 0
            self._check_content(snap.short_id, files, errors)
        self.report.blobs_referenced = int(self._seen.sum())

    def _check_content(
        self, snap: str, files: list[tuple[bytes, list[bytes], bytes]], errors: list[str]
    ) -> None:
        """Mark the chunks of ``files`` (of one or more folders) as referenced, with one index
        search for them all; report each file with chunks not indexed or in a pack that is
        gone."""
        if not files:
            return
        ids = [blob_id for _, content, _ in files for blob_id in content]
        rows = self.repo.index.rows_of(ids)
        bad = rows < 0
        if len(self._lost_ids):
            bad |= contains(self._lost_ids, np.frombuffer(b"".join(ids), dtype="S32"))
        self._seen[rows[~bad]] = True
        if not bad.any():
            return
        start = 0
        for path, content, tree_id in files:
            missing = int(bad[start : start + len(content)].sum())
            start += len(content)
            if missing:
                self._bad_trees.add(tree_id)
                errors.append(
                    f"snapshot {snap} {_show(path)}: {missing} chunk(s) missing "
                    "(not indexed, or their pack is gone)"
                )

    def _read_data(self, stored: dict[str, int], fraction: float, seed: int | None) -> list[str]:
        """Read and verify the chosen packs; return the problems found."""
        names = sorted(stored)
        count = len(names) if fraction >= 1 else math.ceil(len(names) * fraction)
        chosen = names if count >= len(names) else random.Random(seed).sample(names, count)
        self.report.read_fraction = fraction
        # Packs are downloaded and verified by a pool (hashing, decryption and zstd release
        # the GIL), section by section: a worker holds one section, not a pack.
        workers = max(2, self.repo.storage.concurrency)
        errors: list[str] = []
        results = ordered_map(self._read_pack, [(n, stored[n]) for n in sorted(chosen)], workers)
        for i, (size, found) in enumerate(results):
            if size >= 0:
                self.report.packs_read += 1
                self.report.bytes_read += size
            errors.extend(found)
            self._bad_packs = self._bad_packs or bool(found)
            if self.progress:
                self.progress("read-data", i, len(chosen))
        return errors

    def _read_pack(self, item: tuple[str, int]) -> tuple[int, list[str]]:
        """Download and verify one pack of ``size`` bytes, section by section (memory stays at
        about SECTION per worker, not a pack): (bytes read or -1, problems found)."""
        pack, size = item
        what = f"pack {pack[:12]}"
        storage, key = self.repo.storage, pack_key(pack)
        try:
            tail = storage.get(key, max(0, size - TAIL_READ))
            errors: list[str] = []
            entries: list[PackEntry] | None = None  # None: the header does not parse
            try:
                body_end = header_span(tail, size, what)
                if size - body_end > len(tail):  # a header longer than the first read
                    tail = storage.get(key, body_end)
                header = tail[len(tail) - (size - body_end) : len(tail) - TRAILER.size]
                entries = read_header(header, self.repo.cipher, body_end, what)
            except CorruptObject as exc:
                errors.append(str(exc))
                body_end = max(0, size - len(tail))  # still hash every byte for the name
            hasher = new_object_hasher()
            for start, end, blobs in _sections(entries or [], body_end):
                data = storage.get(key, start, end - start)
                if len(data) != end - start:
                    return size, [*errors, f"{what}: shorter than listed ({size} bytes)"]
                hasher.update(data)
                view = memoryview(data)  # blobs are opened in place, not copied out
                for e in blobs:
                    sealed = view[e.offset - start : e.offset - start + e.stored_len]
                    try:
                        self.repo.decode_blob(e.blob_id, e.codec, sealed, e.raw_len)
                    except CorruptObject as exc:
                        errors.append(f"{what}: {exc}")
            hasher.update(tail[len(tail) - (size - body_end) :])
        except BcdrError as exc:
            return -1, [f"{what}: cannot read: {exc}"]
        if hasher.hexdigest() != pack:
            errors.insert(0, f"{what}: content does not match its name (damaged)")
        listed = self._indexed.get(pack)
        if (
            entries is not None
            and listed is not None
            and listed.digest != _entries_digest(_records(entries))
        ):
            errors.append(f"{what}: header does not match the index")
        return size, errors

    def _check_leftovers(self) -> None:
        now = self.repo.clock.now()
        url = self.repo.storage.url
        writing = False  # another command holds a live lock: it may be writing
        for lock in list_locks(self.repo.storage):
            if is_stale(lock, now):
                self.report.leftovers.append(
                    f"stale {lock.describe()}; remove it with `bcdr unlock --repo {url}`"
                )
            elif lock.kind != READ:
                writing = True
        folder = self.repo.storage.capability(LocalFolder)
        if folder is not None:
            for name in folder.leftover_temp_files(TEMP_BUSY if writing else 0.0):
                self.report.leftovers.append(
                    f"temporary file tmp/{name} of an interrupted write; prune removes it "
                    "once nothing has written to it for a day"
                )


def _sections(
    entries: list[PackEntry], body_end: int
) -> Iterator[tuple[int, int, list[PackEntry]]]:
    """Cut a pack's blob area ``[0, body_end)`` into consecutive reads of about SECTION bytes
    that never split a blob: (start, end, the blobs starting inside). A read grows to the end
    of every blob that starts in it, so a blob is always whole in one read."""
    order = sorted(entries, key=lambda e: e.offset)
    i, start = 0, 0
    while start < body_end:
        end = min(body_end, start + SECTION)
        blobs = []
        while i < len(order) and order[i].offset < end:
            end = max(end, order[i].offset + order[i].stored_len)
            blobs.append(order[i])
            i += 1
        yield start, end, blobs
        start = end


def _records(entries: list[PackEntry]) -> np.ndarray:
    return np.frombuffer(encode_entries(entries), dtype=ENTRY_DTYPE)


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")
