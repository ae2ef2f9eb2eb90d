"""``bcdr hold add|remove|list``: legal holds on what a snapshot needs (docs/immutability.md).

A legal hold keeps an object from being deleted or overwritten until it is lifted, whatever
its time-based policy says. ``add`` puts one on the snapshot's own object, every pack it needs,
the repository's config and key files, and every evidence record that names the snapshot;
prune and forget then leave them (they report what waits). ``remove`` lifts it from those
objects, except what another held snapshot still needs. A held snapshot is one whose own
object is held; ``list`` says for each whether everything it needs is held too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import PREFIX as EVIDENCE_PREFIX
from bcdr.compliance.evidence import as_document, list_records, write_record
from bcdr.compliance.records import HoldFacts, Record
from bcdr.errors import BcdrError, UsageError
from bcdr.repository import immutability
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.storage.base import Immutability
from bcdr.storage.url import StorageSpec


@dataclass
class Held:
    snapshot: Snapshot
    objects: int  # objects it needs
    missing: list[str] = field(default_factory=list)  # of those, not held

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot.id,
            "time": self.snapshot.time,
            "job": self.snapshot.job,
            "objects": self.objects,
            "complete": not self.missing,
            "not_held": self.missing[:20],
        }


@dataclass
class HoldResult:
    snapshot: str
    on: bool
    objects: int = 0
    kept: int = 0  # lifting: still needed by another held snapshot
    evidence_records: list[str] = field(default_factory=list)
    evidence: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot,
            "on": self.on,
            "objects": self.objects,
            "kept": self.kept,
            "evidence_records": self.evidence_records,
            "evidence": self.evidence,
        }


def _capability(repo: Repository) -> Immutability:
    cap = repo.storage.capability(Immutability)
    if cap is None:
        raise UsageError(
            "legal holds are an Azure Blob Storage feature; this repository is a local folder",
            where=repo.storage.url,
        )
    if not cap.versioned_immutability():
        raise BcdrError(
            "the container has no version-level immutability support: it cannot hold blobs",
            where=repo.storage.url,
            hint="enable it on the container (`az storage container-rm update --enable-vlw "
            "true`, with blob versioning on for the account); see docs/immutability.md",
        )
    return cap


def _evidence(repo: Repository) -> list[tuple[str, str, str]]:
    """Every chained record once: (storage key, id, its document as text), to be searched
    for snapshot ids without opening the chain again per snapshot."""
    out = []
    for item in list_records(repo):
        if isinstance(item, Record) and item.seq is not None:
            key = f"{EVIDENCE_PREFIX}{item.seq:010d}-{item.id}"
            out.append((key, item.id, json.dumps(as_document(item), default=str)))
    return out


def _naming(records: list[tuple[str, str, str]], snapshot_id: str) -> tuple[list[str], list[str]]:
    """The storage keys and ids of the records that name the snapshot."""
    hits = [(key, rid) for key, rid, text in records if snapshot_id in text]
    return [k for k, _ in hits], [r for _, r in hits]


def _held_snapshots(repo: Repository) -> list[Snapshot]:
    found = immutability.protections(repo, "snapshots/")
    out = []
    for key, prot in sorted(found.items()):
        if prot.legal_hold:
            try:
                out.append(repo.load_snapshot(key.removeprefix("snapshots/")))
            except BcdrError:
                continue  # unreadable: check names it
    return out


def set_hold(
    where: StorageSpec | str,
    ref: str,
    *,
    on: bool,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> HoldResult:
    repo = open_repo(where, clock=clock, env=env)
    try:
        cap = _capability(repo)
        snap = repo.resolve_snapshot(ref, job)
        repo.load_index()
        needs = immutability.Needs(repo)
        keys = needs.keys(snap)
        records = _evidence(repo)
        ev_keys, ev_ids = _naming(records, snap.id)
        keys |= set(ev_keys)
        result = HoldResult(snap.id, on, evidence_records=ev_ids)
        if not on:  # what another held snapshot needs stays held
            others = set()
            for other in _held_snapshots(repo):
                if other.id != snap.id:
                    others |= needs.keys(other) | set(_naming(records, other.id)[0])
            result.kept = len(keys & others)
            keys -= others
        # the snapshot's own object last when putting on (a held snapshot is a complete
        # one), first when lifting
        own = f"snapshots/{snap.id}"
        order = sorted(keys - {own})
        order = [*order, own] if on else [own, *order]
        for key in order:
            if key in keys:
                cap.set_legal_hold(key, on)
                result.objects += 1
        result.evidence = write_record(
            repo,
            HoldFacts(
                snapshot=snap.id,
                on=on,
                objects=result.objects,
                kept=result.kept,
                evidence_records=ev_ids,
            ),
            context=RunContext(job=snap.job),
        )
        return result
    finally:
        repo.close()


def list_holds(
    where: StorageSpec | str,
    *,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Held]:
    repo = open_repo(where, clock=clock, env=env)
    try:
        _capability(repo)
        held = _held_snapshots(repo)
        if not held:
            return []
        repo.load_index()
        needs = immutability.Needs(repo)
        found = immutability.protections(repo)
        out = []
        for snap in held:
            keys = needs.keys(snap)
            missing = sorted(k for k in keys if not found.get(k) or not found[k].legal_hold)
            out.append(Held(snap, len(keys), missing))
        return out
    finally:
        repo.close()
