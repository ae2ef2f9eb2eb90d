"""Pack files: many blobs, then a (sealed) header listing them, then a fixed trailer.

Layout (see docs/repository-format.md)::

    blob 0 | blob 1 | ... | header | header_len: u32 LE | magic "BCDRPK01"

Each blob is the sealed form (``cipher.seal(compressed_or_raw, aad=blob id)``) of its content.
The header is ``cipher.seal(entries, aad=b"pack-header")`` where entries are consecutive
``ENTRY`` records. A pack's name is the hex BLAKE3 of all its bytes.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from bcdr.errors import CorruptObject
from bcdr.repository.crypto import Cipher

MAGIC = b"BCDRPK01"
TRAILER = struct.Struct("<I8s")
ENTRY = struct.Struct("<BB32sQII")  # type, codec, blob id, offset, stored length, raw length
HEADER_AAD = b"pack-header"

DATA = 0
TREE = 1
BLOB_TYPES = {DATA: "data", TREE: "tree"}


@dataclass(frozen=True)
class PackEntry:
    blob_id: bytes
    type: int
    codec: int
    offset: int
    stored_len: int
    raw_len: int


def pack_key(name: str) -> str:
    return f"data/{name[:2]}/{name}"


def encode_entries(entries: list[PackEntry]) -> bytes:
    return b"".join(
        ENTRY.pack(e.type, e.codec, e.blob_id, e.offset, e.stored_len, e.raw_len) for e in entries
    )


def decode_entries(raw: bytes, what: str) -> list[PackEntry]:
    if len(raw) % ENTRY.size:
        raise CorruptObject(f"{what}: header length {len(raw)} is not a whole number of entries")
    out = []
    for t, codec, blob_id, off, stored, rawlen in ENTRY.iter_unpack(raw):
        if t not in BLOB_TYPES:
            raise CorruptObject(f"{what}: unknown blob type {t}")
        out.append(PackEntry(blob_id, t, codec, off, stored, rawlen))
    return out


PAD = 16  # random bytes before blob 0: two packs never share a name, even unencrypted


class PackBuilder:
    """Accumulates sealed blobs until the pack is big enough to write.

    A pack starts with ``PAD`` random bytes. Without them, an unencrypted pack holding the
    same blobs in the same order as an existing one would get the same name, and a backup
    that stored blobs again (because a prune marked their pack) would in fact reuse the
    marked pack. Readers locate blobs by the offsets in the header, so the padding is
    invisible to them.
    """

    def __init__(self, cipher: Cipher):
        self._cipher = cipher
        self._parts: list[bytes] = [secrets.token_bytes(PAD)]
        self._size = PAD
        self.entries: list[PackEntry] = []

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, blob_id: bytes, blob_type: int, codec: int, raw_len: int, sealed: bytes) -> None:
        self.entries.append(PackEntry(blob_id, blob_type, codec, self._size, len(sealed), raw_len))
        self._parts.append(sealed)
        self._size += len(sealed)

    def finish(self) -> list[bytes]:
        """The finished pack, as its parts in order (stored with ``Storage.put_parts``, not
        joined: joining copied every pack on backup's main thread)."""
        header = self._cipher.seal(encode_entries(self.entries), HEADER_AAD)
        self._parts.append(header)
        self._parts.append(TRAILER.pack(len(header), MAGIC))
        parts, self._parts = self._parts, []
        return parts


def parse_pack(data: bytes, cipher: Cipher, what: str) -> list[PackEntry]:
    """Parse the header of a whole pack held in memory; check entries lie inside the pack."""
    body_end = header_span(data[-TRAILER.size :], len(data), what)
    return read_header(data[body_end : len(data) - TRAILER.size], cipher, body_end, what)


def header_span(trailer: bytes, size: int, what: str) -> int:
    """Where the header of a pack of ``size`` bytes starts (= the end of its blobs), from its
    last TRAILER.size bytes."""
    if size < TRAILER.size or len(trailer) < TRAILER.size:
        raise CorruptObject(f"{what}: truncated ({size} bytes, no trailer)")
    header_len, magic = TRAILER.unpack_from(trailer, len(trailer) - TRAILER.size)
    if magic != MAGIC:
        raise CorruptObject(f"{what}: bad trailer magic (truncated or not a pack)")
    body_end = size - TRAILER.size - int(header_len)
    if body_end < 0:
        raise CorruptObject(f"{what}: header length {header_len} exceeds the pack")
    return body_end


def read_header(header: bytes, cipher: Cipher, body_end: int, what: str) -> list[PackEntry]:
    """Open a pack's sealed header; check its entries lie inside the blob area."""
    entries = decode_entries(cipher.open(header, HEADER_AAD, what), what)
    for e in entries:
        if e.offset + e.stored_len > body_end:
            raise CorruptObject(f"{what}: blob {e.blob_id.hex()[:12]} lies past the blob area")
    return entries
