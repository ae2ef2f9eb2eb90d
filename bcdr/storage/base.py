"""The storage contract every backend implements (local disk, Azure Blob, wrappers).

A storage is a flat key space of immutable objects. Keys are ``/``-separated ASCII strings such
as ``config``, ``data/ab/ab12...``, ``snapshots/<id>``. The repository layer never overwrites an
object: every write is put-if-absent, and content-addressed names make retries idempotent.

Guarantees an implementation MUST give (the contract suite in ``tests/storage_contract.py``
checks each one):

``put(key, data)``
    Atomic and put-if-absent: the object appears whole or not at all, never partially, even if
    the process dies mid-write. If the key already exists the existing object is left untouched
    and ``False`` is returned; of two concurrent writers of one key exactly one returns ``True``.
    Read-after-write: once ``put`` returns, ``get``/``size``/``exists`` see the object.
    Raises :class:`StorageFull`, :class:`StoragePermission`, :class:`TransientStorageError` or
    :class:`StorageError`; after any of them the key is either absent or complete.

``put_parts(key, parts)``
    ``put(key, b"".join(parts))``, with the same guarantees, written part after part where the
    storage can (the local disk) instead of joined first: a pack is the sealed blobs of up to
    16 MiB, and joining them cost backup's main thread a copy of every pack.

``stage()``
    A :class:`Staged` writer of one new object whose key is known only once it is written (a
    pack is named by the hash of its bytes): ``write(part)`` part after part, then
    ``commit(key)``, which is ``put_parts(key, the parts)`` with the same guarantees and
    result, or ``discard()``. Either ends it; an error in ``write`` discards it. The local disk
    writes the parts into a temporary file as they come, so a pack being filled or waiting
    for its upload is not held in memory; other storages hold the parts (:class:`HeldParts`).

``get(key, offset=0, length=None)``
    The bytes ``[offset, offset+length)`` (to the end when ``length`` is None). A range past the
    end returns what exists (possibly ``b""``). Raises :class:`ObjectNotFound`.

``size(key)``
    Length in bytes. Raises :class:`ObjectNotFound`.

``list(prefix)``
    Every object whose key starts with ``prefix``, in no particular order, each once. The
    listing may be stale with respect to concurrent writers (a just-written key may be missing)
    but never lists a partially written object.

``delete(key)``
    Removes the object; returns ``False`` if it did not exist (deleting is idempotent).

``list_offline(prefix)``
    The objects under ``prefix`` that exist but cannot be read until they are rehydrated
    (Azure's Archive tier); a ``get`` of one raises :class:`ObjectOffline`. Storages without
    tiers yield nothing.

``concurrency``
    How many requests are worth having in flight at once (uploads, downloads): a local disk
    gains little past two, a remote object store needs many to hide latency.

``capability(kind)``
    The part of the storage that offers an optional capability (a protocol below), through any
    wrappers, or None: ``storage.capability(LocalFolder)`` is the local folder behind a
    metered, retried storage. Backends return themselves when they offer it
    (:class:`NativeCapabilities`); wrappers forward every capability explicitly.

Optional capabilities: :class:`LocalFolder` (a folder on this machine, with its temporary
files), :class:`Forkable` (usable in forked worker processes), :class:`Tiers` (access tiers),
:class:`Transfers` (metered bytes moved), :class:`Immutability` (immutability policies and
legal holds on objects).

Cross-cutting behaviour (retries, metering, fault injection) wraps a Storage: see
``bcdr/storage/wrap.py``.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

C = TypeVar("C")

REHYDRATE_HINT = (
    "rehydrate the packs to Hot or Cool first (`az storage blob set-tier --tier Cool "
    "--rehydrate-priority Standard`, or copy them to an online tier): Standard priority takes "
    "up to 15 hours, High priority usually under 1 hour for blobs under 10 GiB, at a higher "
    "per-GB cost; see docs/azure.md"
)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    tier: str | None = None  # access tier where the storage has tiers (Azure: Hot, Cool...)
    rehydrating: bool = False  # an Archive-tier object whose rehydration has been requested
    modified: datetime | None = None  # when it was written, by the storage's clock (aware)


class Staged(Protocol):
    """One object being written, its key not known yet (see ``stage()`` above)."""

    def write(self, data: bytes) -> None: ...

    def commit(self, key: str) -> bool: ...

    def discard(self) -> None: ...


class HeldParts:
    """A :class:`Staged` object that holds the parts in memory and commits them joined, with
    ``storage.put`` (storages that cannot write an object before its key is known, and
    wrappers whose ``put`` does more than pass the bytes on). The parts are let go once
    joined, so one copy is held while it is sent (a retry needs it whole anyway)."""

    def __init__(self, storage: Storage):
        self._storage = storage
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def commit(self, key: str) -> bool:
        data = b"".join(self._parts)
        self._parts = []
        return self._storage.put(key, data)

    def discard(self) -> None:
        self._parts = []


@runtime_checkable
class Storage(Protocol):
    """See the module docstring for the contract of each method."""

    @property
    def url(self) -> str:
        """Where the storage lives, safe to print (never holds a secret)."""
        ...

    def put(self, key: str, data: bytes) -> bool: ...

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool: ...

    def stage(self) -> Staged: ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> bool: ...

    def list_offline(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    @property
    def concurrency(self) -> int: ...

    def close(self) -> None: ...

    def capability(self, kind: type[C]) -> C | None: ...


class NativeCapabilities:
    """``capability`` of a backend: itself, when it implements the protocol ``kind``."""

    def capability(self, kind: type[C]) -> C | None:
        return self if isinstance(self, kind) else None


@runtime_checkable
class LocalFolder(Protocol):
    """A storage that is a folder on this machine: backup does not walk into it, restore does
    not write into it, and its temporary files (packs being written) are listed and cleaned."""

    @property
    def root(self) -> Path: ...

    def leftover_temp_files(self, idle: float = 0.0) -> builtins.list[str]: ...

    def remove_temp_files(self, idle: float, *, dry_run: bool = False) -> builtins.list[str]: ...


@runtime_checkable
class Forkable(Protocol):
    """A storage that forked worker processes may use, once ``after_fork`` ran in the child
    (locks another thread held at the fork are made anew; see ``bcdr/forked.py``)."""

    def after_fork(self) -> None: ...


@runtime_checkable
class Tiers(Protocol):
    """Access tiers of stored objects (Azure: Hot, Cool, Cold, Archive)."""

    def set_tier(self, key: str, tier: str) -> None: ...


#: The objects an immutability policy protects (docs/immutability.md): what a snapshot needs to
#: be restored and proven. Not locks, prune marks, shard runs or copy maps (bookkeeping that
#: must stay deletable), nor index files (``bcdr repair index`` rebuilds them from the packs).
PROTECTED_PREFIXES = ("config", "keys/", "data/", "snapshots/", "evidence/")


def protected_key(key: str) -> bool:
    return key == "config" or key.startswith(PROTECTED_PREFIXES[1:])


@dataclass(frozen=True)
class Protection:
    """An object's immutability: its policy's expiry (None: no policy) and mode, and whether
    a legal hold is on it."""

    key: str
    until: datetime | None = None
    mode: str = ""  # "locked" or "unlocked"
    legal_hold: bool = False

    def active(self, now: datetime) -> bool:
        return self.legal_hold or (self.until is not None and self.until > now)


@runtime_checkable
class Immutability(Protocol):
    """Version-level immutability (Azure Blob Storage): time-based policies and legal holds."""

    @property
    def immutable_days(self) -> int | None: ...  # new objects' policy length; None: no policy

    def versioned_immutability(self) -> bool: ...  # the container supports version-level

    def protections(self, prefix: str = "") -> Iterator[Protection]: ...

    def extend(self, key: str, until: datetime) -> None: ...

    def set_legal_hold(self, key: str, on: bool) -> None: ...


@runtime_checkable
class Transfers(Protocol):
    """Bytes moved, counted per process: a forked worker's are taken in the child and added in
    the parent (``MeteredStorage``)."""

    def take_transfers(self) -> tuple[Any, Any]: ...

    def add_transfers(self, up: Any, down: Any) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape the key space (``..``, absolute, empty parts)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ValueError(f"invalid storage key {key!r}")
    return key
