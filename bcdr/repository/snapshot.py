"""Snapshot manifests: ``snapshots/<name>`` = ``cipher.seal(json, aad=b"snapshot")``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from bcdr.clock import parse_aware
from bcdr.errors import CorruptObject
from bcdr.repository.tree import HexId

SNAPSHOT_AAD = b"snapshot"


@dataclass(frozen=True)
class SkippedPath:
    path: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    time: str  # ISO 8601 with offset
    hostname: str
    username: str
    paths: tuple[str, ...]
    tree: str  # hex id of the root tree
    job: str | None = None
    parent: str | None = None
    plan: str | None = None
    excludes: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: tuple[SkippedPath, ...] = ()
    program_version: str = ""
    placement: dict[str, Any] | None = None  # region, redundancy, secondary, verified/declared
    repaired: dict[str, Any] | None = None  # `bcdr repair snapshots`: from, time, what was lost
    # `bcdr copy`: the snapshot copied (snapshot, repository id, copied at), and the id of the
    # first snapshot of the recovery point, in the repository it was backed up to
    copy_of: dict[str, Any] | None = None
    original: str | None = None
    shard_run: str | None = None  # a sharded backup: the run it committed
    id: str = ""  # the storage name; not part of the stored document

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def recovery_point(self) -> str:
        """The id that names this recovery point in every repository holding a copy of it:
        the id of the snapshot the backup wrote."""
        return self.original or self.id

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        del doc["id"]
        for optional in ("repaired", "copy_of", "original", "shard_run"):
            if doc[optional] is None:  # written only by a repair or a copy
                del doc[optional]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> Snapshot:
        """Parse a snapshot document, each field's type checked (a field of the wrong type,
        or a time that is not ISO 8601 with an offset, is a damaged snapshot: commands skip
        it and check reports it, instead of failing on it later). Fields a newer bcdr added
        are ignored, so older versions still read its snapshots."""
        try:
            w = _decoder.decode(data)
            parse_aware(w.time)
            bytes.fromhex(w.tree)
        except ValueError as exc:  # msgspec's errors are ValueErrors; so are the others
            raise CorruptObject(f"snapshot {name[:12]}: does not parse ({exc})") from None
        return cls(
            time=w.time,
            hostname=w.hostname,
            username=w.username,
            paths=tuple(w.paths),
            tree=w.tree,
            job=w.job,
            parent=w.parent,
            plan=w.plan,
            excludes=tuple(w.excludes),
            tags=tuple(w.tags),
            stats=w.stats,
            skipped=tuple(SkippedPath(s.path, s.reason) for s in w.skipped),
            program_version=w.program_version,
            placement=w.placement,
            repaired=w.repaired,
            copy_of=w.copy_of,
            original=w.original,
            shard_run=w.shard_run,
            id=name,
        )


class _SkippedWire(msgspec.Struct):
    path: str
    reason: str


class _SnapshotWire(msgspec.Struct, kw_only=True):
    """A snapshot document as stored (see Snapshot)."""

    time: str
    hostname: str
    username: str
    paths: list[str]
    tree: HexId
    job: str | None = None
    parent: str | None = None
    plan: str | None = None
    excludes: list[str] = []
    tags: list[str] = []
    stats: dict[str, int | float] = {}
    skipped: list[_SkippedWire] = []
    program_version: str = ""
    placement: dict[str, Any] | None = None
    repaired: dict[str, Any] | None = None
    copy_of: dict[str, Any] | None = None
    original: str | None = None
    shard_run: str | None = None


_decoder = msgspec.json.Decoder(_SnapshotWire)
