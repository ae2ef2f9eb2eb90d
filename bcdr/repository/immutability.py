"""Immutability of what snapshots need (Azure version-level policies; docs/immutability.md).

With ``immutable_days`` N set on the storage, every protected object (``storage.base.
protected_key``: config, keys, packs, snapshots, evidence) is written with a policy that
expires N days later. Objects a snapshot still needs must never run out of it, so policies
are *extended* to now + N once less than half of N is left (``MARGIN``):

- a backup (and a copy into the repository) extends every protected object but snapshots and
  the packs a prune has marked: it cannot tell cheaply which packs are unused, and extending
  one that is costs only its storage until a prune marks it;
- a prune extends what it found used, and deletes a marked pack only once its policy has
  expired and no legal hold is on it (the rest wait, reported, in their mark);
- retention (``forget``) extends the snapshots it keeps and deletes the ones it drops once
  their policies have expired (the rest wait, reported).

So a pack a kept snapshot needs is extended by whichever runs first once it is due, and a
pack nothing needs expires at most N days after a prune marked it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bcdr.errors import ObjectNotFound, RepositoryError, StorageError
from bcdr.repository.pack import pack_key
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, decode_tree
from bcdr.storage.base import Immutability, Protection, Storage, protected_key

#: A policy is extended once less than this share of its length is left.
MARGIN = 0.5


def capability(repo: Repository) -> Immutability | None:
    """The storage's immutability support, when the repository is configured to use it."""
    cap = repo.storage.capability(Immutability)
    return cap if cap is not None and cap.immutable_days else None


def require_support(storage: Storage) -> None:
    """Refuse to write, when policies are asked for, into a container that cannot hold them:
    every object would be written unprotected."""
    cap = storage.capability(Immutability)
    if cap is None or not cap.immutable_days:
        return
    try:
        supported = cap.versioned_immutability()
    except ObjectNotFound:
        raise RepositoryError(
            "immutability is asked for, but the container does not exist; nothing was written",
            where=storage.url,
            hint="create it with version-level immutability support first (`az storage "
            "container-rm create --enable-vlw true`, with blob versioning on for the account); "
            "see docs/immutability.md",
        ) from None
    if not supported:
        raise RepositoryError(
            "immutability is asked for, but the container has no version-level immutability "
            "support; nothing was written",
            where=storage.url,
            hint="enable it on the container (`az storage container-rm update "
            "--enable-vlw true`, with blob versioning on for the account) or drop "
            "--immutable-days; see docs/immutability.md",
        )


def protections(repo: Repository, prefix: str = "") -> dict[str, Protection]:
    """Every object under ``prefix`` with its protection (empty without the capability)."""
    cap = repo.storage.capability(Immutability)
    if cap is None:
        return {}
    return {p.key: p for p in cap.protections(prefix)}


@dataclass
class Extension:
    """What one pass of extending found and did."""

    days: int = 0
    until: str | None = None  # the new expiry of what was extended
    extended: int = 0
    failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "days": self.days,
            "until": self.until,
            "extended": self.extended,
            "failed": self.failed[:20],
        }

    def note(self) -> str | None:
        if not self.extended and not self.failed:
            return None
        text = f"immutability extended to {self.until} on {self.extended} object(s)"
        if self.failed:
            text += f"; {len(self.failed)} could not be extended (first: {self.failed[0]})"
        return text


def due(found: Protection, now: datetime, days: int) -> bool:
    """Does this object's policy need extending now (none, or less than MARGIN left)?"""
    return found.until is None or found.until < now + timedelta(days=days * MARGIN)


def extend(
    repo: Repository,
    wanted: Callable[[str], bool],
    *,
    found: dict[str, Protection] | None = None,
) -> Extension:
    """Extend, to now + N days, every protected object ``wanted(key)`` whose policy is due.
    Errors are collected, not raised: the run that extends has done its own work already,
    and the next run tries again."""
    cap = capability(repo)
    if cap is None:
        return Extension()
    days = cap.immutable_days or 0
    now = repo.clock.now()
    until = now + timedelta(days=days)
    result = Extension(days=days, until=until.isoformat())
    table = found if found is not None else protections(repo)
    for key, prot in sorted(table.items()):
        if not protected_key(key) or not wanted(key) or not due(prot, now, days):
            continue
        try:
            cap.extend(key, until)
            result.extended += 1
        except StorageError as exc:
            result.failed.append(f"{key}: {exc.message}")
    return result


def after_writing(repo: Repository) -> Extension:
    """A backup's or copy's pass: everything but snapshots and the packs prune marked."""
    marked = {pack_key(p) for p in repo.marked}
    return extend(repo, lambda key: not key.startswith("snapshots/") and key not in marked)


@dataclass
class Waiting:
    """Objects that may not be deleted yet: how many, and when the last one may."""

    count: int = 0
    held: int = 0  # under a legal hold: until it is lifted
    last: datetime | None = None

    def add(self, prot: Protection) -> None:
        self.count += 1
        if prot.legal_hold:
            self.held += 1
        elif prot.until is not None and (self.last is None or prot.until > self.last):
            self.last = prot.until

    def describe(self, what: str) -> str:
        text = f"{self.count} {what} wait for their immutability to expire"
        if self.last is not None:
            text += f" (the last on {self.last.isoformat()})"
        if self.held:
            text += f"; {self.held} under a legal hold (`bcdr hold remove`)"
        return text


def deletable(
    repo: Repository, keys: Iterable[str], found: dict[str, Protection] | None = None
) -> tuple[list[str], Waiting]:
    """Split ``keys`` into those that may be deleted now and those still protected."""
    table = found if found is not None else protections(repo)
    now = repo.clock.now()
    free, waiting = [], Waiting()
    for key in keys:
        prot = table.get(key)
        if prot is not None and prot.active(now):
            waiting.add(prot)
        else:
            free.append(key)
    return free, waiting


# -- what a snapshot needs ------------------------------------------------------------------


class Needs:
    """The packs each snapshot needs (its trees' and its files' chunks'), each folder's
    computed once for all the snapshots that share it. Needs the index loaded."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self._trees: dict[bytes, frozenset[str]] = {}
        self._key_files: set[str] | None = None

    def packs(self, snap: Snapshot) -> frozenset[str]:
        return self._tree(bytes.fromhex(snap.tree))

    def keys(self, snap: Snapshot) -> set[str]:
        """Every protected object ``snap`` needs: itself, the repository's config and key
        files, and its packs."""
        if self._key_files is None:  # listed once, not once per snapshot
            self._key_files = {info.key for info in self.repo.storage.list("keys/")}
        base = {"config", f"snapshots/{snap.id}", *self._key_files}
        return base | {pack_key(p) for p in self.packs(snap)}

    def _tree(self, root: bytes) -> frozenset[str]:
        # depth first without recursion: a folder's set once all of its subfolders' are known
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tree_id, ready = stack.pop()
            if tree_id in self._trees:
                continue
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
            subtrees = [n.subtree for n in nodes if n.type == DIR and n.subtree is not None]
            if not ready:
                stack.append((tree_id, True))
                stack.extend((s, False) for s in subtrees if s not in self._trees)
                continue
            chunks = [c for n in nodes if n.type == FILE for c in n.content]
            found = {loc.pack for loc in self.repo.index.lookup_many([tree_id, *chunks]) if loc}
            for sub in subtrees:
                found |= self._trees.get(sub, frozenset())
            self._trees[tree_id] = frozenset(found)
        return self._trees[root]


@dataclass
class Coverage:
    """``check``: are the objects protected snapshots need protected as long as they are?"""

    days: int | None = None  # the policy length asked for (None: not configured here)
    versioned: bool | None = None  # the container supports version-level immutability
    protected: int = 0  # snapshots whose own object is protected (policy or legal hold)
    unprotected: list[str] = field(default_factory=list)  # snapshot ids whose object is not
    held: list[str] = field(default_factory=list)  # snapshot ids under a legal hold
    gaps: list[str] = field(default_factory=list)  # per snapshot: what is not covered

    @property
    def ok(self) -> bool:
        return not self.gaps and self.versioned is not False

    def to_dict(self) -> dict[str, object]:
        return {
            "days": self.days,
            "versioned": self.versioned,
            "protected": self.protected,
            "unprotected": self.unprotected[:50],
            "held": self.held,
            "gaps": self.gaps[:50],
            "ok": self.ok,
        }


def coverage(repo: Repository, snapshots: list[Snapshot]) -> Coverage | None:
    """For each snapshot whose own object is protected: the objects it needs that are not,
    or whose protection ends before its own and is overdue for extending (less than
    ``MARGIN`` of the policy left). None when the storage has no immutability."""
    cap = repo.storage.capability(Immutability)
    if cap is None:
        return None
    result = Coverage(days=cap.immutable_days)
    result.versioned = cap.versioned_immutability()
    table = protections(repo)
    now = repo.clock.now()
    days = cap.immutable_days or 0
    soon = now + timedelta(days=days * MARGIN)
    needs = Needs(repo)
    for snap in snapshots:
        own = table.get(f"snapshots/{snap.id}")
        if own is None or not own.active(now):
            result.unprotected.append(snap.id)
            continue
        result.protected += 1
        if own.legal_hold:
            result.held.append(snap.id)
        short = []
        for key in sorted(needs.keys(snap)):
            prot = table.get(key)
            if prot is None or not prot.active(now):
                short.append(f"{key} (not protected)")
            elif own.legal_hold and not prot.legal_hold:
                short.append(f"{key} (not under the legal hold)")
            elif (
                not prot.legal_hold
                and own.until is not None
                and prot.until is not None
                and prot.until < own.until
                and prot.until < soon
            ):
                short.append(f"{key} (until {prot.until.isoformat()}, before the snapshot)")
        if short:
            result.gaps.append(
                f"snapshot {snap.short_id}: {len(short)} object(s) it needs are not protected "
                f"as long as it is: {', '.join(short[:3])}" + (", ..." if len(short) > 3 else "")
            )
    return result
