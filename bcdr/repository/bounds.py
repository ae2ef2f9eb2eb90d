"""Bounds on what a snapshot's trees expand to.

Trees are content-addressed, so a folder that appears twice is stored once and referred to
twice. That is what makes unchanged folders free; it also lets a crafted repository of a few
hundred kilobytes describe 2^40 files (each tree listing the next one twice, forty deep),
which a walker that follows every reference would never finish. Walkers that expand a
snapshot (restore, ls, drills) first compute its size over its distinct trees, each loaded
once, and refuse one beyond the bounds; check reports it.

The bounds (environment variables override them): ``BCDR_MAX_TREE_ENTRIES`` (default 100
million entries in a snapshot, folders and files counted where they appear) and
``BCDR_MAX_TREE_DEPTH`` (default 4096 nested folders).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.errors import CorruptObject, ObjectOffline, UsageError
from bcdr.repository.tree import tree_shape

if TYPE_CHECKING:
    from bcdr.repository.repo import Repository

MAX_ENTRIES = 100_000_000
MAX_DEPTH = 4096  # PATH_MAX (4096) holds at most 2048 one-letter folders

#: A tree's own entry count and its subtrees, or None when it cannot be read (a walker then
#: reports it where it meets it).
Listing = Callable[[bytes], tuple[int, list[bytes]] | None]


def limits() -> tuple[int, int]:
    """(entries, depth) from the environment, else the defaults."""
    out = []
    for name, default in (
        ("BCDR_MAX_TREE_ENTRIES", MAX_ENTRIES),
        ("BCDR_MAX_TREE_DEPTH", MAX_DEPTH),
    ):
        raw = os.environ.get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            raise UsageError(
                f"{name}={raw!r} is not a positive whole number", hint=f"unset it for {default}"
            )
        out.append(value)
    return out[0], out[1]


def expanded_size(root: bytes, listing: Listing, what: str) -> tuple[int, int]:
    """(entries, depth) of the tree ``root`` expanded, each distinct tree listed once.
    Raises CorruptObject naming ``what`` as soon as a bound is passed."""
    max_entries, max_depth = limits()
    sizes: dict[bytes, tuple[int, int]] = {}  # tree -> (entries below it, its height)
    pending: dict[bytes, tuple[int, list[bytes]]] = {}
    stack: list[tuple[bytes, int]] = [(root, 1)]  # (tree, its depth on this path)
    while stack:
        tree, depth = stack[-1]
        if tree in sizes:
            stack.pop()
            continue
        if tree not in pending:
            if depth > max_depth:
                raise _too_deep(what, max_depth)
            listed = listing(tree)
            if listed is None:
                sizes[tree] = (0, 0)
                stack.pop()
                continue
            pending[tree] = listed
            stack.extend((s, depth + 1) for s in listed[1] if s not in sizes)
            continue
        own, subs = pending.pop(tree)
        entries = own + sum(sizes[s][0] for s in subs)
        height = 1 + max((sizes[s][1] for s in subs), default=0)
        if height > max_depth:
            raise _too_deep(what, max_depth)
        if entries > max_entries:
            raise CorruptObject(
                f"{what}: its folders expand to more than {max_entries:,} entries",
                hint="folders reused over and over (a crafted repository, a 'tree bomb'); "
                "raise BCDR_MAX_TREE_ENTRIES only if the snapshot is genuine",
            )
        sizes[tree] = (entries, height)
        stack.pop()
    return sizes[root]


def _too_deep(what: str, max_depth: int) -> CorruptObject:
    return CorruptObject(
        f"{what}: folders nest deeper than {max_depth} levels",
        hint="a crafted or damaged repository; raise BCDR_MAX_TREE_DEPTH only if the "
        "snapshot is genuine",
    )


def repo_listing(repo: Repository) -> Listing:
    """A :data:`Listing` that loads each tree from ``repo``."""

    def listing(tree: bytes) -> tuple[int, list[bytes]] | None:
        try:
            return tree_shape(repo.load_blob(tree), f"tree {tree.hex()[:12]}")
        except (CorruptObject, ObjectOffline):
            return None  # the walk (or the archive check) reports it where it meets it

    return listing


def check_snapshot_size(repo: Repository, root: bytes, what: str) -> None:
    """Refuse (CorruptObject) a snapshot whose trees expand beyond the bounds."""
    expanded_size(root, repo_listing(repo), what)
