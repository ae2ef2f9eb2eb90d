"""The index: which blob lives in which pack, at which offset.

On storage, ``index/<name>`` is ``"BCDRIX01" || cipher.seal(payload, aad=b"index")`` where the
payload is, per pack: pack name (32 raw bytes), entry count (u32 LE), then that many pack
``ENTRY`` records. The name is the hex BLAKE3 of the stored bytes.

The in-memory master index is in :mod:`bcdr.repository.masterindex`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.repository.crypto import Cipher
from bcdr.repository.hashing import object_name
from bcdr.repository.pack import ENTRY, PackEntry, encode_entries
from bcdr.storage.base import Storage

MAGIC = b"BCDRIX01"
INDEX_AAD = b"index"
PACK_RECORD = struct.Struct("<32sI")


@dataclass(frozen=True)
class BlobLocation:
    pack: str  # hex pack name
    type: int
    codec: int
    offset: int
    stored_len: int
    raw_len: int

    def __reduce__(self) -> tuple[Callable[..., BlobLocation], tuple[int | str, ...]]:
        """Pickled as its fields in order: fewer bytes and less time than a dataclass's way
        (a restore sends one per small file to its worker processes)."""
        return BlobLocation, (
            self.pack,
            self.type,
            self.codec,
            self.offset,
            self.stored_len,
            self.raw_len,
        )


def encode_index(packs: dict[str, list[PackEntry]], cipher: Cipher) -> tuple[str, bytes]:
    parts = []
    for name, entries in packs.items():
        parts.append(PACK_RECORD.pack(bytes.fromhex(name), len(entries)))
        parts.append(encode_entries(entries))
    stored = MAGIC + cipher.seal(b"".join(parts), INDEX_AAD)
    return object_name(stored), stored


def without_packs(storage: Storage, cipher: Cipher, name: str, gone: set[str]) -> str | None:
    """Rewrite index file ``name`` without the packs in ``gone``: the new file first, then the
    old one is deleted (a crash between leaves duplicate entries, which are harmless).
    Returns the new file's name, or None when nothing is left of it (or it was gone)."""
    try:
        stored = storage.get(f"index/{name}")
    except ObjectNotFound:
        return None
    rest = [
        (pack, records, count)
        for pack, records, count in iter_index_packs(stored, cipher, f"index {name[:12]}")
        if pack not in gone
    ]
    new_name = None
    if rest:
        payload = b"".join(
            PACK_RECORD.pack(bytes.fromhex(p), count) + records for p, records, count in rest
        )
        data = MAGIC + cipher.seal(payload, INDEX_AAD)
        new_name = object_name(data)
        storage.put(f"index/{new_name}", data)
    if new_name != name:
        storage.delete(f"index/{name}")
    return new_name


def iter_index_packs(stored: bytes, cipher: Cipher, what: str) -> Iterator[tuple[str, bytes, int]]:
    """Yield (pack name, its entry records, their count) per pack record."""
    if not stored.startswith(MAGIC):
        raise CorruptObject(f"{what}: not an index file (bad magic)")
    payload = cipher.open(stored[len(MAGIC) :], INDEX_AAD, what)
    pos = 0
    while pos < len(payload):
        if pos + PACK_RECORD.size > len(payload):
            raise CorruptObject(f"{what}: truncated pack record")
        name, count = PACK_RECORD.unpack_from(payload, pos)
        pos += PACK_RECORD.size
        end = pos + count * ENTRY.size
        if end > len(payload):
            raise CorruptObject(f"{what}: truncated entries")
        yield name.hex(), payload[pos:end], count
        pos = end
