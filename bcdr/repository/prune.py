"""Prune: delete the data no snapshot needs, in two phases, without ever stopping a backup.

1. **Mark.** Walk every snapshot's trees to the set of referenced blob ids; compare with the
   index; choose one copy of each referenced blob to keep. Packs without a kept copy are
   unused; when the unused share of the rest exceeds ``max_unused``, the packs with the most
   waste are *repacked* (their kept blobs copied, verified, into new packs and indexed). The
   unused, repacked and unindexed packs are written as a mark (``prune/<id>/packs``); the
   sessions of the repository locks held once the mark is visible follow (``ready``).
2. **Sweep** (this run with ``grace`` 0, else a later run). A mark is swept when its grace
   period has passed and no lock session it recorded is still live. Under a ``sweep`` lock
   (which waits out restores and checks, never backups), the referenced set is computed again
   from the snapshots as they are now; a marked pack that holds the only copy of a blob some
   snapshot refers to is kept. The index files naming the others are rewritten without them,
   then the packs are deleted, then the mark.

Memory: referenced ids and the index are numpy columns (32 bytes per referenced blob, 40 per
index entry); the only Python objects per item are per pack and per tree (directory).
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import numpy as np

from bcdr.errors import BcdrError, CorruptObject, LockConflict, ObjectNotFound, RepositoryError
from bcdr.parallel import ordered_map
from bcdr.repository import immutability
from bcdr.repository.index import without_packs
from bcdr.repository.locks import (
    PRUNE,
    SWEEP,
    LockInfo,
    is_stale,
    list_locks,
    remove_locks,
)
from bcdr.repository.marks import (
    Mark,
    list_marks,
    marked_packs,
    remove_mark,
    write_packs,
    write_ready,
)
from bcdr.repository.masterindex import MasterIndex, contains, decode_index_records
from bcdr.repository.pack import ENTRY, TREE, pack_key
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, decode_tree
from bcdr.repository.writer import BlobWriter
from bcdr.storage.base import LocalFolder

LogFn = Callable[[str], None]
HeldFn = Callable[[], Iterable[bytes]]
ID = np.dtype("S32")
#: A temporary file in ``tmp/`` nothing has written to for this long is a crashed writer's
#: (a backup writes its pack there as it fills it): prune removes it, whatever its grace.
TEMP_IDLE = 24 * 3600.0


class PruneRefused(RepositoryError):
    """Prune found something it cannot reason about safely, and deleted nothing."""


@dataclass
class PruneReport:
    dry_run: bool = False
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    blobs_missing: int = 0
    packs: int = 0
    bytes_stored: int = 0
    bytes_used: int = 0
    # this run's mark
    mark: str | None = None
    packs_unused: int = 0
    packs_unindexed: int = 0
    packs_repacked: int = 0
    bytes_marked: int = 0
    bytes_repacked: int = 0
    # sweeps
    marks_swept: list[str] = field(default_factory=list)
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_kept: list[str] = field(default_factory=list)  # marked, but a snapshot now needs it
    # marked and unneeded, but still protected by an immutability policy or a legal hold:
    # left in their mark for a later prune (docs/immutability.md)
    packs_waiting: int = 0
    waiting: str | None = None  # what waits, and until when
    immutability: dict[str, object] | None = None  # the policies this prune extended
    index_rewritten: int = 0
    postponed: list[str] = field(default_factory=list)
    pending: int = 0  # marks left for a later prune
    problems: list[str] = field(default_factory=list)
    stale_locks_removed: int = 0
    temp_files_removed: list[str] = field(default_factory=list)  # in tmp/ (local disk)
    # sharded runs (bcdr/actions/shard.py): removed (committed, or abandoned), and kept with
    # the chunks their shards stored (not committed yet)
    shard_runs_removed: int = 0
    shard_runs_kept: int = 0
    evidence: str | None = None
    uploaded: dict[str, float | int] | None = None
    downloaded: dict[str, float | int] | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class IdSet:
    """Accumulates 32-byte ids into one sorted, unique numpy array (no object per id)."""

    FLUSH = 1 << 18  # ids buffered (8 MiB) before they are merged

    def __init__(self) -> None:
        self._sorted = np.empty(0, dtype=ID)
        self._buf = bytearray()

    def add(self, blob_id: bytes) -> None:
        self._buf += blob_id
        self._maybe_flush()

    def extend(self, blob_ids: list[bytes]) -> None:
        self._buf += b"".join(blob_ids)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._buf) >= self.FLUSH * 32:
            self._flush()

    def _flush(self) -> None:
        if self._buf:
            new = np.frombuffer(bytes(self._buf), dtype=ID)
            self._buf = bytearray()
            self._sorted = np.unique(np.concatenate([self._sorted, new]))

    def result(self) -> np.ndarray:
        self._flush()
        return self._sorted


@dataclass
class Table:
    """Every index entry as columns, each pack once (the first index file naming it)."""

    packs: list[str]
    pack_no: dict[str, int]
    rows: dict[str, tuple[str, int, int]]  # pack -> (index file, first row, end row)
    files_of: dict[str, list[str]]  # pack -> every index file naming it
    ids: np.ndarray  # S32
    pack: np.ndarray  # u32
    stored: np.ndarray  # u64


class Pruner:
    def __init__(
        self,
        repo: Repository,
        *,
        max_unused: float = 10.0,
        grace: timedelta = timedelta(hours=1),
        dry_run: bool = False,
        log: LogFn | None = None,
        held: HeldFn | None = None,
    ):
        """``held``: the ids of blobs kept besides the snapshots' (what sharded runs not yet
        committed stored); asked at every mark and sweep, as the snapshots are."""
        self.held = held
        self.repo = repo
        self.max_unused = max_unused
        self.grace = grace
        self.dry_run = dry_run
        self.log = log or (lambda _msg: None)
        self.report = PruneReport(dry_run=dry_run)
        self.own_sessions: set[str] = set()

    # -- the run -----------------------------------------------------------------------------

    def run(self, own_session: str) -> PruneReport:
        """Sweep what earlier marks allow, mark anew, and sweep again at once when there is no
        grace period. The caller holds the ``prune`` lock (``own_session``)."""
        self.own_sessions.add(own_session)
        if not self.dry_run:  # what dead processes left: they never block, but clutter
            removed = remove_locks(self.repo.storage, self.repo.clock, remove_all=False)
            self.report.stale_locks_removed = len(removed)
        folder = self.repo.storage.capability(LocalFolder)
        if folder is not None:  # a crashed writer's half-written object, on a local disk
            self.report.temp_files_removed = folder.remove_temp_files(
                TEMP_IDLE, dry_run=self.dry_run
            )
        self.sweep()
        self.mark_unused()
        if not self.dry_run and self.grace <= timedelta(0) and self.report.mark:
            self.sweep()
        self.report.pending = sum(1 for _ in list_marks(self.repo.storage, self.repo.cipher))
        if not self.dry_run and immutability.capability(self.repo) is not None:
            marked = {pack_key(p) for p in marked_packs(self.repo.storage, self.repo.cipher)}
            ext = immutability.extend(
                self.repo, lambda key: not key.startswith("snapshots/") and key not in marked
            )
            self.report.immutability = ext.to_dict()
            if ext.failed:
                self.report.problems.append(ext.note() or "")
        return self.report

    # -- reading the repository ----------------------------------------------------------------

    def referenced(self) -> np.ndarray:
        """Every blob id (trees and chunks) reachable from a snapshot, sorted (``S32``).

        Refuses (PruneRefused) when a snapshot or tree cannot be read: what it refers to is
        then unknown, and deleting anything could destroy the only copy.
        """
        repo = self.repo
        # Snapshots first, then the index: a snapshot is written after the index files that
        # list its blobs, so every blob of a listed snapshot is in the index loaded next.
        names = repo.snapshot_names()
        repo.index = MasterIndex()
        repo.load_index(only_type=TREE)  # the walk reads trees only
        ids = IdSet()
        seen_trees: set[bytes] = set()
        snapshots = 0
        for n, name in enumerate(names):
            try:
                snap = repo.load_snapshot(name)
            except ObjectNotFound:
                continue  # forgotten while we listed
            except BcdrError as exc:
                raise PruneRefused(
                    f"snapshot {name[:12]} cannot be read ({exc}); nothing was deleted",
                    hint="run `bcdr check`; forget or repair the damaged snapshot first",
                ) from None
            snapshots += 1
            stack = [bytes.fromhex(snap.tree)]
            while stack:
                tree_id = stack.pop()
                if tree_id in seen_trees:
                    continue
                seen_trees.add(tree_id)
                ids.add(tree_id)
                try:
                    nodes = decode_tree(repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
                except BcdrError as exc:
                    raise PruneRefused(
                        f"snapshot {snap.short_id}: a tree cannot be read ({exc}); "
                        "nothing was deleted",
                        hint="run `bcdr check`; forget the damaged snapshot first",
                    ) from None
                for node in nodes:
                    if node.type == DIR and node.subtree is not None:
                        stack.append(node.subtree)
                    elif node.type == FILE:
                        ids.extend(node.content)
            if n % 100 == 99:
                self.log(f"marking: {n + 1}/{len(names)} snapshots read")
        if self.held is not None:
            ids.extend(list(self.held()))
        self.report.snapshots = snapshots
        self.report.trees = len(seen_trees)
        repo.index = MasterIndex()  # the walk is done: its memory goes before the table's
        return ids.result()

    def table(self) -> Table:
        repo = self.repo
        infos = list(repo.storage.list("index/"))
        names = sorted(info.key.removeprefix("index/") for info in infos)
        capacity = sum(info.size for info in infos) // ENTRY.size  # an upper bound
        ids = np.empty(capacity, dtype=ID)
        pack_col = np.empty(capacity, dtype=np.uint32)
        stored = np.empty(capacity, dtype=np.uint64)
        packs: list[str] = []
        pack_no: dict[str, int] = {}
        rows: dict[str, tuple[str, int, int]] = {}
        files_of: dict[str, list[str]] = {}
        n = 0
        fetched = ordered_map(self._fetch_index, names, repo.storage.concurrency)
        for name, decoded in zip(names, fetched, strict=True):
            for pack, records in decoded or ():
                files_of.setdefault(pack, []).append(name)
                if pack in pack_no:
                    continue  # also in an earlier index file (a rewrite was interrupted)
                pack_no[pack] = len(packs)
                packs.append(pack)
                end = n + len(records)
                rows[pack] = (name, n, end)
                ids[n:end] = records["id"].astype(">u8").view(ID).ravel()
                pack_col[n:end] = pack_no[pack]
                stored[n:end] = records["stored"]
                n = end
        return Table(packs, pack_no, rows, files_of, ids[:n], pack_col[:n], stored[:n])

    def _fetch_index(self, name: str) -> list[tuple[str, np.ndarray]] | None:
        try:
            data = self.repo._read_index_bytes(name)
        except ObjectNotFound:
            return None  # rewritten by an interrupted prune's sweep: its successor is listed
        return decode_index_records(data, self.repo.cipher, f"index {name[:12]}")

    def stored_packs(self) -> dict[str, int]:
        return {info.key.rsplit("/", 1)[-1]: info.size for info in self.repo.storage.list("data/")}

    # -- mark ----------------------------------------------------------------------------------

    def mark_unused(self) -> None:
        self.log("marking: reading every snapshot")
        # Packs are listed before the index is read: one listed here and in no index file read
        # below is a leftover (or an in-flight backup's, which the lock sessions protect).
        stored_packs = self.stored_packs()
        referenced = self.referenced()
        table = self.table()
        rep = self.report
        rep.blobs_referenced = len(referenced)
        rep.packs = len(stored_packs)
        rep.bytes_stored = sum(stored_packs.values())
        npk = len(table.packs)
        ref = contains(referenced, table.ids)
        distinct = len(np.unique(table.ids[ref]))
        rep.blobs_missing = len(referenced) - distinct
        del referenced
        if rep.blobs_missing:
            rep.problems.append(
                f"{rep.blobs_missing} referenced blob(s) are in no index: some snapshots do "
                "not restore completely; run `bcdr check`"
            )
        total = np.bincount(table.pack, weights=table.stored, minlength=npk)
        # One copy of each referenced blob is kept; without duplicates that is every one.
        keep = ref if distinct == int(ref.sum()) else self._keepers(table, ref, total)
        used = np.bincount(table.pack[keep], weights=table.stored[keep], minlength=npk)
        present = np.array([p in stored_packs for p in table.packs], dtype=bool)
        rep.bytes_used = int(used[present].sum())
        # a pack an earlier mark holds is left to that mark's sweep (one waiting for its
        # immutability to expire would otherwise be marked again by every prune)
        already = marked_packs(self.repo.storage, self.repo.cipher)
        unused = [
            table.packs[i]
            for i in np.flatnonzero(present & (used == 0))
            if table.packs[i] not in already
        ]
        unindexed = sorted(set(stored_packs) - set(table.pack_no) - already)
        repack = self._choose_repack(table, present, used, total)
        rep.packs_unused = len(unused)
        rep.packs_unindexed = len(unindexed)
        rep.packs_repacked = len(repack)
        candidates = sorted({*unused, *unindexed, *repack})
        rep.bytes_marked = sum(stored_packs[p] for p in candidates)
        self.log(
            f"marking: {len(unused)} unused, {len(unindexed)} unindexed, {len(repack)} to "
            f"repack of {len(stored_packs)} packs"
        )
        if self.dry_run or not candidates:
            return
        if repack:
            done = self._repack(table, keep, repack)
            candidates = sorted({*unused, *unindexed, *done})
            rep.packs_repacked = len(done)
        self._write_mark(candidates)

    def _keepers(self, table: Table, ref: np.ndarray, total: np.ndarray) -> np.ndarray:
        """One kept copy per referenced blob: in an unmarked pack if there is one, else in the
        pack that is most used."""
        npk = len(table.packs)
        used_all = np.bincount(table.pack[ref], weights=table.stored[ref], minlength=npk)
        pref = used_all / np.maximum(total, 1)
        marked = np.array([p in self.repo.marked for p in table.packs], dtype=bool)
        pref[marked] -= 2.0
        rows = np.flatnonzero(ref)
        order = np.lexsort((-pref[table.pack[rows]], table.ids[rows]))
        ranked = rows[order]
        first = np.ones(len(ranked), dtype=bool)
        first[1:] = table.ids[ranked[1:]] != table.ids[ranked[:-1]]
        keep = np.zeros(len(table.ids), dtype=bool)
        keep[ranked[first]] = True
        return keep

    def _choose_repack(
        self, table: Table, present: np.ndarray, used: np.ndarray, total: np.ndarray
    ) -> list[str]:
        live = present & (used > 0)
        waste = (total - used) * live
        budget = self.max_unused / 100 * float(total[live].sum())
        excess = float(waste.sum()) - budget
        chosen: list[str] = []
        if excess <= 0:
            return chosen
        share = waste / np.maximum(total, 1)
        for i in np.argsort(-share, kind="stable"):
            if excess <= 0 or waste[i] <= 0:
                break
            chosen.append(table.packs[i])
            excess -= float(waste[i])
        return chosen

    def _repack(self, table: Table, keep: np.ndarray, packs: list[str]) -> list[str]:
        """Copy the kept blobs of ``packs`` into new packs (verifying each), index them; return
        the packs that were copied completely."""
        repo = self.repo
        # Its own index: a kept blob is copied even though the master index knows it.
        writer = BlobWriter(repo.storage, repo.cipher, MasterIndex(), repo.config.pack_size)
        by_file: dict[str, list[str]] = {}
        for pack in packs:
            by_file.setdefault(table.rows[pack][0], []).append(pack)
        done = []
        try:
            for name, wanted in sorted(by_file.items()):
                decoded = dict(self._fetch_index(name) or ())
                for pack in wanted:
                    _, lo, hi = table.rows[pack]
                    records = decoded[pack][keep[lo:hi]]
                    if self._copy_pack(writer, pack, records):
                        done.append(pack)
                self.log(f"repacking: {len(done)}/{len(packs)} packs copied")
            writer.flush()
        except BaseException:
            writer.abort()
            raise
        writer.close()
        self.report.bytes_repacked = writer.bytes_added
        return done

    def _copy_pack(self, writer: BlobWriter, pack: str, records: np.ndarray) -> bool:
        repo = self.repo
        try:
            data = repo.storage.get(pack_key(pack))
        except ObjectNotFound:
            self.report.problems.append(f"pack {pack[:12]} vanished; not repacked")
            return False
        blobs = []
        for rec in records:
            blob_id = rec["id"].astype(">u8").tobytes()
            off, length = int(rec["offset"]), int(rec["stored"])
            sealed = data[off : off + length]
            try:
                repo.decode_blob(blob_id, int(rec["codec"]), sealed, int(rec["raw"]))
            except CorruptObject as exc:
                self.report.problems.append(
                    f"pack {pack[:12]} not repacked: {exc}; it stays until `bcdr check` "
                    "explains the damage"
                )
                return False
            blobs.append((blob_id, int(rec["type"]), int(rec["codec"]), int(rec["raw"]), sealed))
        for blob_id, blob_type, codec, raw_len, sealed in blobs:
            writer.add(blob_id, blob_type, codec, raw_len, sealed)
        return True

    def _write_mark(self, packs: list[str]) -> None:
        repo = self.repo
        mark_id = f"{repo.clock.now().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}"
        rep = self.report
        doc = {
            "created": repo.clock.now().isoformat(),
            "hostname": socket.gethostname(),
            "packs": packs,
            "stats": {
                "unused": rep.packs_unused,
                "unindexed": rep.packs_unindexed,
                "repacked": rep.packs_repacked,
                "bytes": rep.bytes_marked,
            },
        }
        write_packs(repo.storage, repo.cipher, mark_id, doc)
        # The sessions that might have read the index before the mark was visible. Listed
        # twice, so a lock refreshed (new object, old deleted) during one listing is seen.
        sessions = {lock.session for lock in self._live_locks()}
        sessions |= {lock.session for lock in self._live_locks()}
        write_ready(repo.storage, repo.cipher, mark_id, repo.clock.now(), sorted(sessions))
        rep.mark = mark_id
        self.log(f"marked {len(packs)} packs as mark {mark_id}")

    def _live_locks(self) -> list[LockInfo]:
        now = self.repo.clock.now()
        return [
            lock
            for lock in list_locks(self.repo.storage)
            if lock.session not in self.own_sessions and not is_stale(lock, now)
        ]

    # -- sweep -----------------------------------------------------------------------------

    def sweep(self) -> None:
        repo = self.repo
        due: list[Mark] = []
        now = repo.clock.now()
        for mark in list_marks(repo.storage, repo.cipher):
            if mark.damaged:
                # Nobody honours it (its packs are unknown), so it is never swept: discarded,
                # its packs are found unused again and marked afresh by this run.
                self.report.problems.append(
                    f"prune mark {mark.id} is damaged ({mark.damaged}): "
                    + ("would be discarded" if self.dry_run else "discarded; marked afresh")
                )
                if not self.dry_run:
                    remove_mark(repo.storage, mark.id)
                continue
            if mark.ready is None:
                # Its prune died while marking (we hold the prune lock: none is marking now).
                if not self.dry_run:
                    remove_mark(repo.storage, mark.id)
                continue
            if now < mark.ready + self.grace:
                self.report.postponed.append(
                    f"mark {mark.id}: grace period until {(mark.ready + self.grace).isoformat()}"
                )
                continue
            waiting = [lock for lock in self._live_locks() if lock.session in mark.sessions]
            if waiting:
                self.report.postponed.append(
                    f"mark {mark.id}: waiting for {waiting[0].describe()}"
                    + (f" and {len(waiting) - 1} more" if len(waiting) > 1 else "")
                )
                continue
            due.append(mark)
        if not due or self.dry_run:
            if due:
                self.report.postponed.extend(f"mark {m.id}: would be swept" for m in due)
            return
        try:
            lock = repo.lock(SWEEP)
        except LockConflict as exc:
            self.report.postponed.append(f"sweep postponed: {exc}")
            return
        self.own_sessions.add(lock.session)
        try:
            self._sweep(due)
        finally:
            lock.release()

    def _sweep(self, marks: list[Mark]) -> None:
        repo = self.repo
        self.log(f"sweeping {len(marks)} mark(s): re-reading every snapshot")
        candidates = {p for m in marks for p in m.packs}
        referenced = self.referenced()
        table = self.table()
        stored_packs = self.stored_packs()
        is_cand = np.array([p in candidates for p in table.packs], dtype=bool)
        # A copy in a pack another (not yet due) mark holds does not count: it may go too.
        marked = np.array([p in repo.marked or p in candidates for p in table.packs], dtype=bool)
        present = np.array([p in stored_packs for p in table.packs], dtype=bool)
        ref = contains(referenced, table.ids)
        cand_row = is_cand[table.pack]
        need = np.unique(table.ids[ref & cand_row])
        elsewhere = np.unique(table.ids[ref & ~marked[table.pack] & present[table.pack]])
        uncovered = need[~contains(elsewhere, need)]
        if len(uncovered):
            rows = np.flatnonzero(cand_row & contains(uncovered, table.ids))
            kept = sorted({table.packs[i] for i in np.unique(table.pack[rows])})
            self.report.packs_kept.extend(kept)
            candidates -= set(kept)
        # an immutability policy or a legal hold keeps a pack until it ends: it waits, in its
        # mark, for a later prune
        free, waiting = immutability.deletable(repo, [pack_key(p) for p in sorted(candidates)])
        if waiting.count:
            self.report.packs_waiting += waiting.count
            self.report.waiting = waiting.describe("unused pack(s)")
        waits = candidates - {key.rsplit("/", 1)[-1] for key in free}
        candidates -= waits
        self._drop_from_index(table, candidates)
        for pack in sorted(candidates):
            size = stored_packs.get(pack)
            if repo.storage.delete(pack_key(pack)):
                self.report.packs_deleted += 1
                self.report.bytes_deleted += size or 0
        for mark in marks:
            if waits & set(mark.packs):
                continue  # kept for its packs that wait; the ones deleted are gone from it
            remove_mark(repo.storage, mark.id)
            self.report.marks_swept.append(mark.id)
        self.log(
            f"swept: {self.report.packs_deleted} packs deleted, "
            f"{len(self.report.packs_kept)} kept because a snapshot needs them"
        )

    def _drop_from_index(self, table: Table, gone: set[str]) -> None:
        """Rewrite every index file that names a pack in ``gone`` without it: the new file
        first, then the old one is deleted (a crash between leaves duplicates, which are
        harmless)."""
        files = sorted({f for p in gone for f in table.files_of.get(p, ())})
        for name in files:
            without_packs(self.repo.storage, self.repo.cipher, name, gone)
            self.report.index_rewritten += 1


def prune_repository(
    repo: Repository,
    *,
    max_unused: float = 10.0,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    log: LogFn | None = None,
    held: HeldFn | None = None,
) -> PruneReport:
    """Run one prune under the repository's ``prune`` lock (one prune at a time)."""
    with repo.lock(PRUNE) as lock:
        pruner = Pruner(
            repo, max_unused=max_unused, grace=grace, dry_run=dry_run, log=log, held=held
        )
        return pruner.run(lock.session)
