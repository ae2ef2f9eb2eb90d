"""The password's key derivation (scrypt), and starting it ahead of time.

Opening an encrypted repository derives the key that opens its key file: scrypt, about 0.15 s
and 32 MiB (N = 2^15, r = 8) on every command. ``hashlib.scrypt`` releases the GIL, so the CLI
starts it in a thread as soon as it knows a local repository (:func:`derive_ahead`) and loads
the command's modules meanwhile; :func:`derive` then takes the result. Those modules are the
ones loaded before scrypt otherwise, so the peak memory stays the same (docs/performance.md).

This module imports only the standard library: the CLI loads it before anything heavy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading

#: scrypt's memory bound; N = 2^15, r = 8 needs 32 MiB.
MAXMEM = 256 * 1024 * 1024
#: Derivations started and not yet taken (a command that failed before opening leaves one).
MAX_PENDING = 4

Params = tuple[bytes, int, int, int]  # salt, n, r, p


def _scrypt(password: bytes, params: Params) -> bytes:
    salt, n, r, p = params
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=MAXMEM, dklen=32)


class _Pending:
    """One derivation running in a thread."""

    def __init__(self, password: bytes, params: Params):
        self._password = password
        self._params = params
        self._key: bytes | None = None
        self._thread = threading.Thread(target=self._run, name="bcdr-kdf", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._key = _scrypt(self._password, self._params)
        except (ValueError, MemoryError):
            pass  # derive() computes it again in the caller's thread, where errors belong

    def key_for(self, password: bytes) -> bytes | None:
        """The derived key once done; None when it was started for another password or
        failed."""
        self._thread.join()
        if not hmac.compare_digest(password, self._password):
            return None
        return self._key


_pending: dict[Params, _Pending] = {}
#: Keys derived in this process: (password, key) by parameters. A process opening the same
#: repository again (a daemon's next job, the shards ``backup --shards`` forks after planning)
#: skips scrypt; the process holds the master key this opens anyway.
_derived: dict[Params, tuple[bytes, bytes]] = {}
_lock = threading.Lock()


def _known(password: bytes, params: Params) -> bytes | None:
    with _lock:
        found = _derived.get(params)
    if found is not None and hmac.compare_digest(password, found[0]):
        return found[1]
    return None


def _remember(password: bytes, params: Params, key: bytes) -> bytes:
    with _lock:
        while len(_derived) >= MAX_PENDING:
            _derived.pop(next(iter(_derived)))
        _derived[params] = (password, key)
    return key


def derive(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    """scrypt(password, salt, n, r, p), 32 bytes; taken from a derivation started ahead for
    the same password and parameters when there is one."""
    params = (salt, n, r, p)
    known = _known(password, params)
    if known is not None:
        return known
    with _lock:
        pending = _pending.pop(params, None)
    if pending is not None:
        key = pending.key_for(password)
        if key is not None:
            return _remember(password, params, key)
    return _remember(password, params, _scrypt(password, params))


def derive_ahead(key_file: bytes, password: bytes) -> bool:
    """Start deriving, in a thread, the key that opens ``key_file`` (the bytes of a
    ``keys/<id>`` object) with ``password``. Returns False, starting nothing, when the file is
    not a scrypt key file; never raises: opening the repository reports what is wrong."""
    try:
        doc = json.loads(key_file)
        if doc.get("kdf") != "scrypt":
            return False
        params = (base64.b64decode(doc["salt"]), int(doc["n"]), int(doc["r"]), int(doc["p"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    if _known(password, params) is not None:
        return True  # derived before in this process
    with _lock:
        if params not in _pending:
            while len(_pending) >= MAX_PENDING:
                _pending.pop(next(iter(_pending)))
            _pending[params] = _Pending(password, params)
    return True
