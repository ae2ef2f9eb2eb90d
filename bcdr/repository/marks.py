"""Pending prune marks: ``prune/<id>/packs`` and ``prune/<id>/ready``.

A prune does not delete what it finds unused. It *marks* it: ``packs`` lists the candidate
packs (unused, repacked elsewhere, or in no index); ``ready``, written after ``packs``, lists
the sessions of the repository locks that existed once the mark was visible. A later prune
sweeps a mark when the grace period has passed, none of those sessions holds a lock any more,
and a fresh re-check from every snapshot still finds the packs unneeded.

Every reader of the index loads the candidates last, so a blob that also lives in an unmarked
pack is read from there; a backup additionally never reuses a blob whose only copy is marked
(it stores the blob again). docs/repository-format.md ("Prune") gives the argument why no
snapshot can end up referring to a swept pack.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from bcdr.clock import parse_aware
from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.repository.crypto import Cipher
from bcdr.storage.base import Storage

PREFIX = "prune/"
MARK_AAD = b"prune-mark"


@dataclass(frozen=True)
class Mark:
    id: str
    packs: tuple[str, ...]  # candidate pack names
    ready: datetime | None = None  # when the lock sessions were recorded
    sessions: tuple[str, ...] = ()  # lock sessions that must end before the sweep
    damaged: str = ""  # why it could not be read ("" when it could)


def _key(mark_id: str, part: str) -> str:
    return f"{PREFIX}{mark_id}/{part}"


def _load(storage: Storage, cipher: Cipher, key: str) -> dict[str, object]:
    raw = storage.get(key)
    doc = json.loads(cipher.open(raw, MARK_AAD, key))  # CorruptObject, ValueError
    if not isinstance(doc, dict):
        raise CorruptObject(f"{key}: not a prune mark")
    return doc


def write_packs(storage: Storage, cipher: Cipher, mark_id: str, doc: Mapping[str, object]) -> None:
    data = json.dumps(doc, sort_keys=True).encode()
    storage.put(_key(mark_id, "packs"), cipher.seal(data, MARK_AAD))


def write_ready(
    storage: Storage, cipher: Cipher, mark_id: str, when: datetime, sessions: list[str]
) -> None:
    doc = {"ready": when.isoformat(), "sessions": sorted(set(sessions))}
    data = json.dumps(doc, sort_keys=True).encode()
    storage.put(_key(mark_id, "ready"), cipher.seal(data, MARK_AAD))


def list_marks(storage: Storage, cipher: Cipher) -> Iterator[Mark]:
    """Every mark (with or without ``ready``). One that does not open or parse is yielded with
    ``damaged`` set and no packs: readers and backups ignore it (a damaged mark is never
    swept: prune discards it and marks afresh), check reports it, prune removes it."""
    parts: dict[str, set[str]] = {}
    for info in storage.list(PREFIX):
        mark_id, _, part = info.key.removeprefix(PREFIX).partition("/")
        parts.setdefault(mark_id, set()).add(part)
    for mark_id, have in sorted(parts.items()):
        if "packs" not in have:
            continue  # a sweep removed it (ready goes first, then packs): nothing pending
        try:
            doc = _load(storage, cipher, _key(mark_id, "packs"))
            ready_doc = _load(storage, cipher, _key(mark_id, "ready")) if "ready" in have else {}
            yield _parse(mark_id, doc, ready_doc)
        except ObjectNotFound:
            continue  # swept while we listed
        except (CorruptObject, ValueError, TypeError, KeyError) as exc:
            yield Mark(mark_id, (), damaged=str(exc) or type(exc).__name__)


def _parse(mark_id: str, doc: dict[str, object], ready_doc: dict[str, object]) -> Mark:
    """A mark from its two documents; ValueError/TypeError/KeyError when they do not fit."""
    packs, sessions, ready = doc["packs"], ready_doc.get("sessions", []), ready_doc.get("ready")
    if not isinstance(packs, list) or not isinstance(sessions, list):
        raise TypeError("packs and sessions must be lists")
    for name in packs:
        if not isinstance(name, str) or len(name) != 64:
            raise ValueError(f"{name!r} is not a pack name")
        bytes.fromhex(name)
    if ready is not None and not isinstance(ready, str):
        raise TypeError("ready must be a time")
    return Mark(
        id=mark_id,
        packs=tuple(packs),
        ready=parse_aware(ready) if ready else None,
        sessions=tuple(str(x) for x in sessions),
    )


def remove_mark(storage: Storage, mark_id: str) -> None:
    """``ready`` first: a half-removed mark is still honoured by readers, never swept."""
    storage.delete(_key(mark_id, "ready"))
    storage.delete(_key(mark_id, "packs"))


def marked_packs(storage: Storage, cipher: Cipher) -> set[str]:
    out: set[str] = set()
    for mark in list_marks(storage, cipher):
        out.update(mark.packs)  # a damaged mark has none: it is never swept
    return out
