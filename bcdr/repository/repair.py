"""Repair a damaged repository: the index from the packs, and snapshots around what is lost.

``repair_index``: the index is made to match the packs that exist. Entries of packs that are
gone are dropped (their index files rewritten, new file first); packs no index lists are
indexed from their own headers; index files that do not open or match their name are removed
once the packs they listed are indexed again from their headers. A pack whose header does not
open stays unindexed (prune collects it). Nothing is lost that was not lost already.

``repair_snapshots``: every snapshot is walked; a file with a chunk that is not indexed in a
pack that exists is left out, and so is a folder whose tree cannot be read. A snapshot that
lost something is written again with the rest and a ``repaired`` record (what was lost, from
which snapshot); the original is kept unless ``forget``. Snapshot manifests that cannot be
read are only named (``forget`` removes them). Run ``repair_index`` first: a blob that a lost
index file listed is then found again.

Both take ``dry_run``: they say what they would do and write nothing. docs/repair.md gives the
order to run them in and what each loses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.repository.index import encode_index, without_packs
from bcdr.repository.pack import TREE, PackEntry
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, Node, decode_tree, encode_tree
from bcdr.repository.writer import PACKS_PER_INDEX

#: The first read of a pack's end for its header (about 50 bytes a blob); longer ones re-read.
#: Lost paths a repaired snapshot names (the count is always whole).
LOST_LISTED = 1000


@dataclass
class IndexRepair:
    dry_run: bool = False
    packs: int = 0  # in storage
    missing_packs: list[str] = field(default_factory=list)  # listed, gone: entries dropped
    truncated_packs: list[str] = field(default_factory=list)  # shorter than listed: dropped
    damaged_index_files: list[str] = field(default_factory=list)  # removed
    packs_indexed: list[str] = field(default_factory=list)  # read from their headers
    unreadable_packs: list[str] = field(default_factory=list)  # header does not open
    index_files_written: int = 0
    index_files_removed: int = 0

    @property
    def changed(self) -> bool:
        return bool(
            self.missing_packs
            or self.truncated_packs
            or self.damaged_index_files
            or self.packs_indexed
        )

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "changed": self.changed}


def _index_listing(
    repo: Repository, rep: IndexRepair
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Every pack the index files name, with the files naming it and the length its entries
    need; index files that do not open are added to ``rep.damaged_index_files``."""
    listed: dict[str, list[str]] = {}  # pack -> index files naming it
    need: dict[str, int] = {}  # pack -> the length its entries need
    names, _ = repo.index_files()
    for name in names:
        try:
            packs = repo.read_index_records(name)
        except CorruptObject:
            rep.damaged_index_files.append(name)
            continue
        except ObjectNotFound:
            continue  # replaced while we listed
        for pack, records in packs:
            listed.setdefault(pack, []).append(name)
            ends = records["offset"].astype("u8") + records["stored"]
            need[pack] = max(need.get(pack, 0), int(ends.max()) if len(records) else 0)
    return listed, need


def repair_index(repo: Repository, *, dry_run: bool = False) -> IndexRepair:
    """Make the index match the packs in storage (see the module's docstring)."""
    rep = IndexRepair(dry_run=dry_run)
    listed, need = _index_listing(repo, rep)
    stored = repo.stored_packs()
    rep.packs = len(stored)
    rep.missing_packs = sorted(set(listed) - set(stored))
    rep.truncated_packs = sorted(p for p in listed if p in stored and stored[p] < need[p])
    dropped = set(rep.missing_packs) | set(rep.truncated_packs)
    recovered: dict[str, list[PackEntry]] = {}
    for pack in sorted(set(stored) - (set(listed) - dropped)):
        if pack in rep.missing_packs:
            continue
        try:
            recovered[pack] = repo.pack_header(pack, stored[pack])
        except CorruptObject:
            rep.unreadable_packs.append(pack)
        except ObjectNotFound:
            continue  # deleted while we read (a prune's sweep)
    rep.packs_indexed = sorted(p for p in recovered if p not in rep.truncated_packs)
    if dry_run:
        return rep
    # New index files first, then the rewritten ones, then the damaged ones go: a crash at
    # any point leaves every pack that was indexed still indexed (at worst twice).
    items = [(p, recovered[p]) for p in rep.packs_indexed]
    for start in range(0, len(items), PACKS_PER_INDEX):
        name, data = encode_index(dict(items[start : start + PACKS_PER_INDEX]), repo.cipher)
        repo.storage.put(f"index/{name}", data)
        rep.index_files_written += 1
    touched = sorted({f for p in dropped for f in listed.get(p, ())})
    for name in touched:
        if without_packs(repo.storage, repo.cipher, name, dropped) is not None:
            rep.index_files_written += 1
        rep.index_files_removed += 1
    for name in rep.damaged_index_files:
        repo.storage.delete(f"index/{name}")
        rep.index_files_removed += 1
    return rep


@dataclass
class RepairedSnapshot:
    snapshot: str  # the damaged original
    new: str | None  # the snapshot written in its place (None: dry run, or nothing left)
    lost: list[str]  # paths left out (at most LOST_LISTED)
    lost_count: int
    forgotten: bool = False  # the original was removed


@dataclass
class SnapshotRepair:
    dry_run: bool = False
    forget: bool = False
    snapshots: int = 0  # readable snapshots walked
    repaired: list[RepairedSnapshot] = field(default_factory=list)
    damaged_manifests: list[str] = field(default_factory=list)  # unreadable snapshot objects
    manifests_removed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.repaired or self.damaged_manifests)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "changed": self.changed}


class _Rewriter:
    """Walks trees, leaving out what is lost; each tree is rewritten once (memoised)."""

    def __init__(self, repo: Repository, dry_run: bool):
        self.repo = repo
        self.dry_run = dry_run
        self._done: dict[bytes, tuple[bytes | None, list[str]]] = {}

    def _usable(self, blob_ids: list[bytes]) -> bool:
        locs = self.repo.index.lookup_many(blob_ids)
        return all(loc is not None and loc.pack not in self.repo.missing_packs for loc in locs)

    def tree(self, tree_id: bytes) -> tuple[bytes | None, list[str]]:
        """(the tree to refer to instead, or None if unreadable; lost paths below it)."""
        if tree_id in self._done:
            return self._done[tree_id]
        try:
            if not self._usable([tree_id]):
                raise CorruptObject("its pack is gone or it is not indexed")
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        except CorruptObject as exc:
            result: tuple[bytes | None, list[str]] = (None, [f"/ (folder unreadable: {exc})"])
            self._done[tree_id] = result
            return result
        kept: list[Node] = []
        lost: list[str] = []
        for node in nodes:
            name = node.name.decode("utf-8", "backslashreplace")
            if node.type == FILE and node.content and not self._usable(node.content):
                lost.append(f"/{name} (file: chunks missing)")
                continue
            if node.type == DIR and node.subtree is not None:
                sub, sub_lost = self.tree(node.subtree)
                lost.extend(f"/{name}{p}" for p in sub_lost)
                if sub is None:
                    continue
                if sub != node.subtree:
                    node = replace(node, subtree=sub)
            kept.append(node)
        new_id = tree_id
        if lost and not self.dry_run:
            new_id = self.repo.save_blob(TREE, encode_tree(kept))
        self._done[tree_id] = (new_id, lost)
        return new_id, lost


def repair_snapshots(
    repo: Repository, *, forget: bool = False, dry_run: bool = False
) -> SnapshotRepair:
    """Rewrite the snapshots that refer to lost trees or chunks (see the module's docstring).
    The caller holds a ``backup`` lock; the index must be loaded with ``verify_packs``."""
    rep = SnapshotRepair(dry_run=dry_run, forget=forget)
    snaps = repo.list_snapshots()
    rep.damaged_manifests = list(repo.damaged_snapshots)
    rep.snapshots = len(snaps)
    rewriter = _Rewriter(repo, dry_run)
    pending: list[tuple[Snapshot, bytes | None, list[str]]] = []
    with repo.writing():
        for snap in snaps:
            root, lost = rewriter.tree(bytes.fromhex(snap.tree))
            if lost:
                pending.append((snap, root, lost))
    now = repo.clock.now().isoformat()
    for snap, root, lost in pending:
        new_id = None
        if root is not None and not dry_run:
            new = replace(
                snap,
                tree=root.hex(),
                tags=(*snap.tags, "repaired") if "repaired" not in snap.tags else snap.tags,
                repaired={
                    "from": snap.id,
                    "time": now,
                    "lost_count": len(lost),
                    "lost": lost[:LOST_LISTED],
                },
            )
            new_id = repo.save_snapshot(new).id
        item = RepairedSnapshot(snap.id, new_id, lost[:LOST_LISTED], len(lost))
        if forget and not dry_run:
            repo.storage.delete(f"snapshots/{snap.id}")
            item.forgotten = True
        rep.repaired.append(item)
    if forget and not dry_run:
        for name in rep.damaged_manifests:
            repo.storage.delete(f"snapshots/{name}")
            rep.manifests_removed.append(name)
    return rep
