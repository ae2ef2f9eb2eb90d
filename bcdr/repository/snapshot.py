"""Snapshot manifests: ``snapshots/<name>`` = ``cipher.seal(json, aad=b"snapshot")``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

from bcdr.errors import CorruptObject

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
    id: str = ""  # the storage name; not part of the stored document

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def to_bytes(self) -> bytes:
        doc = asdict(self)
        del doc["id"]
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_bytes(cls, data: bytes, name: str) -> Snapshot:
        try:
            doc = json.loads(data)
            doc["paths"] = tuple(doc["paths"])
            doc["excludes"] = tuple(doc.get("excludes", ()))
            doc["tags"] = tuple(doc.get("tags", ()))
            doc["skipped"] = tuple(SkippedPath(**s) for s in doc.get("skipped", ()))
            known = {f.name for f in fields(cls)} - {"id"}
            # Fields a newer bcdr added are ignored, so older versions still read its snapshots.
            return cls(**{k: v for k, v in doc.items() if k in known}, id=name)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptObject(f"snapshot {name[:12]}: does not parse ({exc})") from None
