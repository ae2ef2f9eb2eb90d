"""The repository ``config`` object: format version and the algorithms in use.

Stored as plain JSON (it holds no secret). A repository whose ``version`` this bcdr does not
know is refused, so an old bcdr never misreads a newer format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from bcdr.errors import NotARepository, UnsupportedFormat
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.hashing import CONTENT_ID, FINGERPRINT

FORMAT_VERSION = 1
CONFIG_KEY = "config"
KIND = "bcdr-repository"
DEFAULT_PACK_SIZE = 16 * 1024 * 1024
MIN_PACK_SIZE, MAX_PACK_SIZE = 64 * 1024, 1024**3  # bounds of a repository's pack size


@dataclass(frozen=True)
class RepoConfig:
    id: str
    created: str
    chunker: ChunkerParams
    encryption: str  # "none" | "aes-256-gcm"
    version: int = FORMAT_VERSION
    content_id: str = CONTENT_ID
    fingerprint: str = FINGERPRINT
    compression: str = "zstd"
    compression_level: int = 1
    pack_size: int = DEFAULT_PACK_SIZE

    @property
    def encrypted(self) -> bool:
        return self.encryption != "none"

    def to_bytes(self) -> bytes:
        doc = {
            "kind": KIND,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "chunker": self.chunker.to_dict(),
            "content_id": self.content_id,
            "fingerprint": self.fingerprint,
            "compression": self.compression,
            "compression_level": self.compression_level,
            "encryption": self.encryption,
            "pack_size": self.pack_size,
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            doc = json.loads(data)
        except ValueError:
            raise NotARepository(
                "the repository config is not valid JSON (corrupted?)",
                where=where,
                hint="restore the config object from a copy; it is not secret",
            ) from None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            raise NotARepository("config is not a bcdr repository config", where=where)
        version = doc.get("version")
        if version != FORMAT_VERSION:
            raise UnsupportedFormat(
                f"repository format version {version!r} is not supported "
                f"(this bcdr reads version {FORMAT_VERSION})",
                where=where,
                hint="use the bcdr release that created this repository, or a newer one",
            )
        try:
            cfg = cls(
                id=str(doc["id"]),
                created=str(doc["created"]),
                chunker=ChunkerParams.from_dict(dict(doc["chunker"])),
                encryption=str(doc["encryption"]),
                content_id=str(doc["content_id"]),
                fingerprint=str(doc["fingerprint"]),
                compression=str(doc["compression"]),
                compression_level=int(doc["compression_level"]),
                pack_size=int(doc["pack_size"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise NotARepository(
                f"config is missing or has a bad field: {exc}", where=where
            ) from None
        if cfg.encryption not in ("none", "aes-256-gcm"):
            raise UnsupportedFormat(f"unknown encryption {cfg.encryption!r}", where=where)
        if cfg.content_id != CONTENT_ID or cfg.compression != "zstd":
            raise UnsupportedFormat("unknown content id or compression algorithm", where=where)
        return cfg
