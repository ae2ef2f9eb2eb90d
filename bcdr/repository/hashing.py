"""Content ids and fingerprints, looked up by the names recorded in ``config``.

- content id: BLAKE3 keyed by the repository's id key, 32 bytes, over the raw (uncompressed,
  unencrypted) blob. Cryptographic, so a crafted collision cannot swap data.
- fingerprint: xxh3-128 of whole files (stored in trees, compared by restore, drills and
  check) — fast, not adversarial.
- object names (packs, index files, snapshots): unkeyed BLAKE3 of the stored bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import blake3
import xxhash

ID_LEN = 32
CONTENT_ID = "blake3-keyed"
FINGERPRINT = "xxh3-128"

IdFunc = Callable[[bytes | memoryview], bytes]


def content_id_func(name: str, key: bytes) -> IdFunc:
    """Return the content id function ``name`` keyed by ``key``."""
    if name != CONTENT_ID:
        raise ValueError(f"unknown content id algorithm {name!r}")

    def content_id(data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=key).digest()

    return content_id


def object_name(data: bytes | memoryview) -> str:
    """The storage name of an immutable object: hex BLAKE3 of its stored bytes."""
    return new_object_hasher(data).hexdigest()


def new_object_hasher(data: bytes | memoryview = b"") -> blake3.blake3:
    """An incremental :func:`object_name`: ``update`` it part by part, then ``hexdigest``."""
    return blake3.blake3(data)


def new_fingerprint() -> xxhash.xxh3_128:
    return xxhash.xxh3_128()


def fingerprint(data: bytes | memoryview) -> str:
    return xxhash.xxh3_128_hexdigest(data)
