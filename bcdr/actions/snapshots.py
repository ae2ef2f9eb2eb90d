"""``bcdr snapshots`` and ``bcdr ls``."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.errors import BcdrError, UsageError
from bcdr.repository.bounds import check_snapshot_size
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, Node, decode_tree
from bcdr.storage.url import StorageSpec


def list_snapshots(
    where: StorageSpec | str,
    *,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[list[Snapshot], list[str]]:
    """The readable snapshots (oldest first) and the names of damaged ones."""
    repo = open_repo(where, clock=clock, env=env)
    snaps = repo.list_snapshots(job)
    return snaps, repo.damaged_snapshots


@dataclass(frozen=True)
class LsEntry:
    path: str
    type: str
    size: int
    mode: int
    mtime_ns: int
    target: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def walk(
    repo: Repository,
    tree_id: bytes,
    prefix: bytes = b"",
    on_error: Callable[[bytes, BcdrError], None] | None = None,
) -> Iterator[tuple[bytes, Node]]:
    """Every node below ``tree_id`` with its snapshot path, parents before children, depth
    first (a stack of folder listings, not recursion: a snapshot may hold folders nested
    deeper than Python's recursion limit). A folder listing that cannot be read raises, or
    with ``on_error`` is reported and skipped."""

    def listing(tree_id: bytes, path: bytes) -> Iterator[Node]:
        try:
            return iter(decode_tree(repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}"))
        except BcdrError as exc:
            if on_error is None:
                raise
            on_error(path or b"/", exc)
            return iter(())

    stack = [(listing(tree_id, prefix), prefix)]
    while stack:
        nodes, folder = stack[-1]
        node = next(nodes, None)
        if node is None:
            stack.pop()
            continue
        path = folder + b"/" + node.name
        yield path, node
        if node.type == DIR and node.subtree:
            stack.append((listing(node.subtree, path), path))


def ls(
    where: StorageSpec | str,
    ref: str,
    path: str | None = None,
    *,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Snapshot, list[LsEntry]]:
    """Every entry of snapshot ``ref`` at or under ``path`` (default: all)."""
    repo = open_repo(where, clock=clock, env=env)
    with repo.lock(READ, wait=read_wait()):
        snap = repo.resolve_snapshot(ref, job)
        repo.load_index(verify_packs=True)  # a copy in a pack that is gone is read last
        check_snapshot_size(repo, bytes.fromhex(snap.tree), f"snapshot {snap.short_id}")
        walked = list(walk(repo, bytes.fromhex(snap.tree)))
    want = os.fsencode(path).rstrip(b"/") if path else b""
    entries = []
    for p, node in walked:
        if want and not (p == want or p.startswith(want + b"/")):
            continue
        entries.append(
            LsEntry(
                os.fsdecode(p),
                node.type,
                node.size,
                node.mode,
                node.mtime_ns,
                os.fsdecode(node.target) if node.target is not None else None,
            )
        )
    if want and not entries:
        raise UsageError(
            f"no path {path!r} in snapshot {snap.short_id}",
            hint="paths in a snapshot are absolute, as backed up; see `bcdr ls`",
        )
    return snap, entries
