"""Before a restore starts: are the packs it needs readable now?

Packs moved to Azure's Archive tier cannot be read until they are rehydrated, which takes hours.
A restore (or drill) that would stop half-way on the first archived pack instead fails before
writing anything, saying how many packs and bytes need rehydrating and what that takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcdr.archive.patterns import PathMatcher, PathSet
from bcdr.errors import ObjectOffline, RestoreError
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, decode_tree
from bcdr.storage.base import REHYDRATE_HINT, ObjectInfo
from bcdr.units import human_bytes


@dataclass(frozen=True)
class Offline:
    """Packs a restore needs that are offline (``complete`` False when trees could not be
    read, so every offline pack is counted)."""

    packs: tuple[ObjectInfo, ...]
    rehydrating: int
    complete: bool

    @property
    def bytes(self) -> int:
        return sum(p.size for p in self.packs)


def packs_needed(
    repo: Repository, root_tree: bytes, includes: PathMatcher | PathSet | None
) -> set[str]:
    """Names of the packs holding the trees and file chunks a restore of ``root_tree`` reads
    (only paths ``includes`` selects, when given). Raises ObjectOffline if a tree is offline."""
    packs: set[str] = set()
    stack = [(root_tree, b"", includes is None)]
    while stack:
        tree_id, rel, included = stack.pop()
        loc = repo.index.lookup(tree_id)
        if loc is not None:
            packs.add(loc.pack)
        for node in decode_tree(repo.load_blob(tree_id, loc), f"tree {tree_id.hex()[:12]}"):
            path = rel + b"/" + node.name
            inc = included or (includes is not None and includes.matches(path))
            if node.type == DIR and node.subtree is not None:
                stack.append((node.subtree, path, inc))
            elif node.type == FILE and inc:
                for blob_id in node.content:
                    chunk = repo.index.lookup(blob_id)
                    if chunk is not None:
                        packs.add(chunk.pack)
    return packs


def offline_packs(
    repo: Repository, root_tree: bytes, includes: PathMatcher | PathSet | None = None
) -> Offline | None:
    """The offline packs a restore of ``root_tree`` needs, or None when it can start now.
    Costs one listing of ``data/`` when nothing is archived (and nothing on a local disk)."""
    offline = {o.key.rsplit("/", 1)[-1]: o for o in repo.storage.list_offline("data/")}
    if not offline:
        return None
    try:
        needed = packs_needed(repo, root_tree, includes)
        complete = True
    except ObjectOffline:
        needed, complete = set(offline), False
    blocked = tuple(offline[p] for p in sorted(needed & offline.keys()))
    if not blocked:
        return None
    return Offline(blocked, sum(p.rehydrating for p in blocked), complete)


def require_online(
    repo: Repository, root_tree: bytes, snapshot: str, includes: PathMatcher | PathSet | None = None
) -> None:
    """Raise RestoreError (nothing written yet) when packs the restore needs are archived."""
    found = offline_packs(repo, root_tree, includes)
    if found is None:
        return
    scope = "" if found.complete else " (its directory listings are archived too)"
    pending = (
        f"; rehydration of {found.rehydrating} is already under way" if found.rehydrating else ""
    )
    raise RestoreError(
        f"snapshot {snapshot} cannot be restored now: {len(found.packs)} pack(s) it needs "
        f"({human_bytes(found.bytes)}) are in the Archive tier{scope}{pending}",
        where=repo.storage.url,
        hint=f"{REHYDRATE_HINT}; nothing was restored",
    )
