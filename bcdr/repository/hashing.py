"""Content ids and fingerprints, looked up by the names recorded in ``config``.

- content id: BLAKE3 keyed by the repository's id key, 32 bytes, over the raw (uncompressed,
  unencrypted) blob. Cryptographic, so a crafted collision cannot swap data.
- fingerprint: xxh3-128 of whole files (stored in trees, compared by restore, drills and
  check) — fast, not adversarial. A file larger than its repository's region size (chunker
  ``region``) is fingerprinted by regions instead, so that separate processes may each read
  a part of it (``bcdr backup --shards``): ``x<REGION>:<hex>``, the xxh3-128 of the
  concatenated xxh3-128 digests (16 bytes each) of its regions. The form is written into each
  digest, so a reader needs no setting to check it (a copied tree keeps the source's).
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


class RegionFingerprint:
    """An incremental file fingerprint by regions of ``region`` bytes (see the module's doc):
    ``update`` in any pieces, ``hexdigest`` at the end. A file of at most one region gets the
    plain xxh3-128, so small files' digests are as without regions."""

    __slots__ = ("region", "_digests", "_current", "_filled")

    def __init__(self, region: int):
        self.region = region
        self._digests: list[bytes] = []
        self._current = xxhash.xxh3_128()
        self._filled = 0  # bytes in the current region

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        while len(view):
            if self._filled == self.region:
                self._digests.append(self._current.digest())
                self._current = xxhash.xxh3_128()
                self._filled = 0
            take = min(len(view), self.region - self._filled)
            self._current.update(view[:take] if take < len(view) else view)
            self._filled += take
            view = view[take:]

    def region_digests(self) -> list[bytes]:
        """The digests of the regions fed so far, the last one as it stands."""
        return [*self._digests, self._current.digest()]

    def hexdigest(self) -> str:
        if not self._digests:  # one region or less: the plain fingerprint
            return self._current.hexdigest()
        return region_digest(self.region, [*self._digests, self._current.digest()])


def region_digest(region: int, digests: list[bytes]) -> str:
    """A file's fingerprint from its regions' xxh3-128 digests, in order (more than one)."""
    return f"x{region}:{xxhash.xxh3_128_hexdigest(b''.join(digests))}"


def fingerprint_for(expected: str | None) -> RegionFingerprint | xxhash.xxh3_128:
    """A hasher that makes digests of the form of ``expected`` (a digest a tree recorded):
    by regions when it says so, else the plain xxh3-128."""
    region = region_of(expected)
    return RegionFingerprint(region) if region else xxhash.xxh3_128()


def region_of(digest: str | None) -> int:
    """The region size a digest was made by regions of (0: a plain digest, or none)."""
    if not digest or not digest.startswith("x"):
        return 0
    size, sep, _ = digest[1:].partition(":")
    return int(size) if sep and size.isdigit() and int(size) > 0 else 0


def new_file_fingerprint(region: int) -> RegionFingerprint | xxhash.xxh3_128:
    """The fingerprint a backup records for a file, in a repository cutting at ``region``
    bytes (0: none, the plain xxh3-128 of the whole file)."""
    return RegionFingerprint(region) if region else xxhash.xxh3_128()
