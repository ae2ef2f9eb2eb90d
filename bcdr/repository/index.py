"""The index: which blob lives in which pack, at which offset.

On storage, ``index/<name>`` is ``"BCDRIX01" || cipher.seal(payload, aad=b"index")`` where the
payload is, per pack: pack name (32 raw bytes), entry count (u32 LE), then that many pack
``ENTRY`` records. The name is the hex BLAKE3 of the stored bytes.

In memory, :class:`MasterIndex` maps a 32-byte blob id to a small tuple. Pack names are interned
in a list so each entry holds an int, not a copy of the name.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from bcdr.errors import CorruptObject
from bcdr.repository.crypto import Cipher
from bcdr.repository.hashing import object_name
from bcdr.repository.pack import ENTRY, PackEntry, decode_entries, encode_entries

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


def encode_index(packs: dict[str, list[PackEntry]], cipher: Cipher) -> tuple[str, bytes]:
    parts = []
    for name, entries in packs.items():
        parts.append(PACK_RECORD.pack(bytes.fromhex(name), len(entries)))
        parts.append(encode_entries(entries))
    stored = MAGIC + cipher.seal(b"".join(parts), INDEX_AAD)
    return object_name(stored), stored


def decode_index(stored: bytes, cipher: Cipher, what: str) -> dict[str, list[PackEntry]]:
    if not stored.startswith(MAGIC):
        raise CorruptObject(f"{what}: not an index file (bad magic)")
    payload = cipher.open(stored[len(MAGIC) :], INDEX_AAD, what)
    packs: dict[str, list[PackEntry]] = {}
    pos = 0
    while pos < len(payload):
        if pos + PACK_RECORD.size > len(payload):
            raise CorruptObject(f"{what}: truncated pack record")
        name, count = PACK_RECORD.unpack_from(payload, pos)
        pos += PACK_RECORD.size
        end = pos + count * ENTRY.size
        if end > len(payload):
            raise CorruptObject(f"{what}: truncated entries")
        packs[name.hex()] = decode_entries(payload[pos:end], what)
        pos = end
    return packs


class MasterIndex:
    """All known blobs: those of loaded index files plus those written in this session."""

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._blobs: dict[bytes, tuple[int, int, int, int, int, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def add_pack(self, pack: str, entries: list[PackEntry]) -> None:
        with self._lock:
            no = self._pack_no.get(pack)
            if no is None:
                no = len(self._packs)
                self._packs.append(pack)
                self._pack_no[pack] = no
            for e in entries:
                self._blobs.setdefault(
                    e.blob_id, (no, e.type, e.codec, e.offset, e.stored_len, e.raw_len)
                )

    def add_pack_entries(self, packs: dict[str, list[PackEntry]]) -> None:
        for pack, entries in packs.items():
            self.add_pack(pack, entries)

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        loc = self._blobs.get(blob_id)
        if loc is None:
            return None
        no, t, codec, off, stored, raw = loc
        return BlobLocation(self._packs[no], t, codec, off, stored, raw)

    def packs(self) -> set[str]:
        return set(self._packs)

    def blobs(self) -> Iterator[bytes]:
        return iter(list(self._blobs))
