"""Keys and encryption.

A repository has one master key: 32 bytes of encryption key (AES-256-GCM) and 32 bytes of id key
(the BLAKE3 key of content ids). It is stored in ``keys/<id>``: wrapped with a key derived by
scrypt from the password for encrypted repositories, in plain for unencrypted ones (whose content
ids are then keyed but not secret). Sealed data is ``nonce(12) || ciphertext || tag(16)``; the
associated data binds a blob to its id so that a swapped blob fails to open.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bcdr.errors import CorruptObject, NotARepository, WrongPassword
from bcdr.repository.kdf import derive

NONCE_LEN = 12
TAG_LEN = 16
SEAL_OVERHEAD = NONCE_LEN + TAG_LEN

SCRYPT_N = 2**15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class MasterKey:
    enc_key: bytes | None  # None: unencrypted repository
    id_key: bytes

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey(encrypted={self.enc_key is not None})"

    @classmethod
    def generate(cls, *, encrypted: bool) -> MasterKey:
        return cls(secrets.token_bytes(32) if encrypted else None, secrets.token_bytes(32))


class Cipher(Protocol):
    overhead: int

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes: ...

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes: ...


class NullCipher:
    """The cipher of an unencrypted repository: bytes pass through."""

    overhead = 0

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes:
        return bytes(plain)  # a view would keep its whole buffer alive in the pack

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        return bytes(sealed)  # no copy when given bytes


class AesGcmCipher:
    overhead = SEAL_OVERHEAD

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def seal(self, plain: bytes | memoryview, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if len(sealed) < SEAL_OVERHEAD:
            raise CorruptObject(f"{what}: too short to be sealed data ({len(sealed)} bytes)")
        try:
            return self._aead.decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
        except InvalidTag:
            raise CorruptObject(
                f"{what}: authentication failed (altered or corrupted)",
                hint="run `bcdr check --read-data` to find every damaged object",
            ) from None


def cipher_for(key: MasterKey) -> Cipher:
    return AesGcmCipher(key.enc_key) if key.enc_key else NullCipher()


def wrap_key(key: MasterKey, password: bytes | None, about: dict[str, str] | None = None) -> bytes:
    """Serialise ``key`` for ``keys/<id>``; encrypted repositories need ``password``.
    ``about``: who made it and when (``created``, ``hostname``, ``username``), kept in the
    clear beside it for ``bcdr key list``; readers ignore it."""
    payload = json.dumps(
        {
            "enc_key": base64.b64encode(key.enc_key).decode() if key.enc_key else None,
            "id_key": base64.b64encode(key.id_key).decode(),
        }
    ).encode()
    doc: dict[str, str | int]
    if key.enc_key is None:
        doc = {"kdf": "none", "data": base64.b64encode(payload).decode()}
    else:
        if not password:
            raise ValueError("an encrypted repository needs a password")
        salt = secrets.token_bytes(16)
        kek = derive(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        sealed = AesGcmCipher(kek).seal(payload, b"bcdr-key")
        doc = {
            "kdf": "scrypt",
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
            "salt": base64.b64encode(salt).decode(),
            "data": base64.b64encode(sealed).decode(),
        }
    doc.update(about or {})
    return json.dumps(doc, indent=1).encode()


def unwrap_key(blob: bytes, password: bytes | None, where: str) -> MasterKey:
    """Open a key file. Raises WrongPassword (no match) or NotARepository (unparseable)."""
    try:
        doc = json.loads(blob)
        data = base64.b64decode(doc["data"])
        if doc["kdf"] == "none":
            payload = data
        elif doc["kdf"] == "scrypt":
            if password is None:
                raise WrongPassword("no password given", where=where)
            kek = derive(
                password, base64.b64decode(doc["salt"]), int(doc["n"]), int(doc["r"]), int(doc["p"])
            )
            try:
                payload = AesGcmCipher(kek).open(data, b"bcdr-key", where)
            except CorruptObject:
                raise WrongPassword(
                    "wrong password: no key of the repository opens with it",
                    where=where,
                    hint="check BCDR_PASSWORD or the file named by BCDR_PASSWORD_FILE",
                ) from None
        else:
            raise NotARepository(f"unknown key derivation {doc['kdf']!r}", where=where)
        inner = json.loads(payload)
        enc = base64.b64decode(inner["enc_key"]) if inner["enc_key"] else None
        return MasterKey(enc, base64.b64decode(inner["id_key"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise NotARepository(
            f"key file does not parse ({type(exc).__name__})", where=where
        ) from None
