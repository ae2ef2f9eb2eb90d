"""A loopback proxy between the Azure SDK and Azurite that adds what Azurite lacks: Azure's
version-level immutability policies and legal holds on blobs (REST API 2020-06-12+).

Azurite answers ``Set Blob Immutability Policy`` and ``Set Blob Legal Hold`` with 501
APINotImplemented and ignores the policy headers of ``Put Blob``. This proxy keeps the state
itself, as Azure's REST reference describes it, and forwards everything else to Azurite:

- ``PUT ?comp=immutabilityPolicies`` (``x-ms-immutability-policy-until-date``, RFC 1123, and
  ``x-ms-immutability-policy-mode``: ``Unlocked`` or ``Locked``) sets a blob's policy; a
  ``Locked`` policy may be extended, never shortened, unlocked or deleted (409). A SAS must
  carry the ``i`` permission (403 AuthorizationPermissionMismatch otherwise). ``DELETE
  ?comp=immutabilityPolicies`` removes an ``Unlocked`` one.
- ``PUT ?comp=legalhold`` (``x-ms-legal-hold: true|false``) sets or clears a legal hold.
- ``Put Blob`` and ``Put Block List`` carrying those headers set them on the new blob.
- ``Delete Blob`` of a blob whose policy has not expired, or that has a legal hold, is refused
  with 409 ``BlobImmutableDueToPolicy`` / ``BlobImmutableDueToLegalHold``; so is a write over it
  (a write with ``If-None-Match: *`` gets Azurite's own 409 ``BlobAlreadyExists``).
- ``Get Blob``, ``Get Blob Properties`` answer with the policy and hold headers, ``List Blobs``
  with ``include=immutabilitypolicy,legalhold`` with ``ImmutabilityPolicyUntilDate``,
  ``ImmutabilityPolicyMode`` and ``LegalHold`` per blob, and ``Get Container Properties`` with
  ``x-ms-immutable-storage-with-versioning-enabled`` for the containers given that support.

Time is the proxy's own (``advance``): tests let a policy expire without waiting.
"""

from __future__ import annotations

import re
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qs, unquote, urlsplit

from azure.storage.blob import BlobServiceClient

from tests.fault_proxy import _read_request, forward


@dataclass
class Policy:
    until: datetime
    mode: str  # "Unlocked" or "Locked"


class ImmutabilityProxy:
    def __init__(
        self,
        upstream_port: int,
        connection_string: str,
        account: str,
        *,
        versioned: set[str] | None = None,
    ):
        """``versioned``: the containers with version-level immutability support (None:
        every container)."""
        self.upstream = ("127.0.0.1", upstream_port)
        self.account = account
        self.versioned = versioned
        self.policies: dict[tuple[str, str], Policy] = {}
        self.holds: set[tuple[str, str]] = set()
        self.refused: list[str] = []  # "METHOD path code" of every refusal, for tests
        self._offset = timedelta(0)
        self._lock = threading.Lock()
        self._admin = BlobServiceClient.from_connection_string(connection_string)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.account}"

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Move the proxy's clock (policies expire by it)."""
        self._offset += delta

    def protection(self, container: str, blob: str) -> tuple[Policy | None, bool]:
        with self._lock:
            return self.policies.get((container, blob)), (container, blob) in self.holds

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._admin.close()

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            request = _read_request(conn)
            if request is None:
                return
            head, body = request
            conn.sendall(self._answer(head, body))
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, head: bytes, body: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        method, target = lines[0].split(" ")[:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts = urlsplit(target)
        query = {k.lower(): v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = unquote(parts.path).lstrip("/").split("/", 2)  # account, container, blob
        container = path[1] if len(path) > 1 else ""
        blob = path[2] if len(path) > 2 else ""
        comp = query.get("comp", "").lower()
        key = (container, blob)
        if blob and comp == "immutabilitypolicies":
            return self._policy(method, key, headers, query)
        if blob and comp == "legalhold" and method == "PUT":
            return self._legal_hold(key, headers)
        if blob and method == "DELETE" and not comp:
            refusal = self._refusal(key)
            if refusal:
                return self._refuse(method, blob, refusal)
            response = self._forward(head, body)
            if _status(response) == 202:
                with self._lock:
                    self.policies.pop(key, None)
            return response
        if blob and method == "PUT" and comp in ("", "blocklist"):
            if headers.get("if-none-match") != "*":
                refusal = self._refusal(key)
                if refusal:
                    return self._refuse(method, blob, refusal)
            response = self._forward(head, body)
            if _status(response) == 201:
                self._protect_new(key, headers)
            return response
        response = self._forward(head, body)
        if blob and method in ("GET", "HEAD") and not comp:
            return self._with_protection_headers(response, key)
        if not blob and query.get("restype") == "container" and comp == "list":
            include = query.get("include", "").lower()
            if "immutabilitypolicy" in include or "legalhold" in include:
                return self._list_with_protection(response, container)
        if not blob and query.get("restype") == "container" and not comp and method != "PUT":
            if self.versioned is None or container in self.versioned:
                flag = {"x-ms-immutable-storage-with-versioning-enabled": "true"}
                return _add_headers(response, flag)
        return response

    # -- the operations Azurite lacks ----------------------------------------------------------

    def _policy(
        self, method: str, key: tuple[str, str], headers: dict[str, str], query: dict[str, str]
    ) -> bytes:
        if "sig" in query and "i" not in query.get("sp", ""):
            return self._refuse(method, key[1], "AuthorizationPermissionMismatch", 403)
        if not self._exists(key):
            return _error(404, "BlobNotFound", "The specified blob does not exist.")
        with self._lock:
            current = self.policies.get(key)
            if method == "DELETE":
                if current is not None and current.mode == "Locked":
                    return self._refuse_locked(method, key[1])
                self.policies.pop(key, None)
                return _ok({})
            until = parsedate_to_datetime(headers["x-ms-immutability-policy-until-date"])
            mode = headers.get("x-ms-immutability-policy-mode", "Unlocked")
            if (
                current is not None
                and current.mode == "Locked"
                and (until < current.until or mode != "Locked")
            ):
                return self._refuse_locked(method, key[1])
            self.policies[key] = Policy(until, mode)
        return _ok(
            {
                "x-ms-immutability-policy-until-date": format_datetime(until, usegmt=True),
                "x-ms-immutability-policy-mode": mode,
            }
        )

    def _refuse_locked(self, method: str, blob: str) -> bytes:
        self.refused.append(f"{method} {blob} locked")
        return _error(409, "BlobImmutableDueToPolicy", "The immutability policy is locked.")

    def _legal_hold(self, key: tuple[str, str], headers: dict[str, str]) -> bytes:
        if not self._exists(key):
            return _error(404, "BlobNotFound", "The specified blob does not exist.")
        on = headers.get("x-ms-legal-hold", "").lower() == "true"
        with self._lock:
            if on:
                self.holds.add(key)
            else:
                self.holds.discard(key)
        return _ok({"x-ms-legal-hold": "true" if on else "false"})

    def _protect_new(self, key: tuple[str, str], headers: dict[str, str]) -> None:
        with self._lock:
            if "x-ms-immutability-policy-until-date" in headers:
                until = parsedate_to_datetime(headers["x-ms-immutability-policy-until-date"])
                mode = headers.get("x-ms-immutability-policy-mode", "Unlocked")
                self.policies[key] = Policy(until, mode)
            if headers.get("x-ms-legal-hold", "").lower() == "true":
                self.holds.add(key)

    def _refusal(self, key: tuple[str, str]) -> str:
        """The error code that refuses changing this blob now, or ""."""
        with self._lock:
            if key in self.holds:
                return "BlobImmutableDueToLegalHold"
            policy = self.policies.get(key)
            if policy is not None and policy.until > self.now():
                return "BlobImmutableDueToPolicy"
        return ""

    def _refuse(self, method: str, blob: str, code: str, status: int = 409) -> bytes:
        self.refused.append(f"{method} {blob} {code}")
        messages = {
            "BlobImmutableDueToPolicy": "This operation is not permitted as the blob is "
            "immutable due to a policy.",
            "BlobImmutableDueToLegalHold": "This operation is not permitted as the blob is "
            "immutable due to one or more legal holds.",
            "AuthorizationPermissionMismatch": "This request is not authorized to perform "
            "this operation using this permission.",
        }
        return _error(status, code, messages[code])

    def _exists(self, key: tuple[str, str]) -> bool:
        return bool(self._admin.get_blob_client(*key).exists())

    # -- what Azurite answers, with the protection added ----------------------------------------

    def _with_protection_headers(self, response: bytes, key: tuple[str, str]) -> bytes:
        policy, held = self.protection(*key)
        extra = {"x-ms-legal-hold": "true" if held else "false"}
        if policy is not None:
            extra["x-ms-immutability-policy-until-date"] = format_datetime(
                policy.until, usegmt=True
            )
            extra["x-ms-immutability-policy-mode"] = policy.mode.lower()
        return _add_headers(response, extra) if _status(response) in (200, 206) else response

    def _list_with_protection(self, response: bytes, container: str) -> bytes:
        head, body = _split(response)

        def add(match: re.Match[str]) -> str:
            name = _unescape(match.group(2))
            policy, held = self.protection(container, name)
            extra = f"<LegalHold>{'true' if held else 'false'}</LegalHold>"
            if policy is not None:
                until = format_datetime(policy.until, usegmt=True)
                extra += (
                    f"<ImmutabilityPolicyUntilDate>{until}</ImmutabilityPolicyUntilDate>"
                    f"<ImmutabilityPolicyMode>{policy.mode.lower()}</ImmutabilityPolicyMode>"
                )
            return match.group(0).replace("</Properties>", extra + "</Properties>", 1)

        text = re.sub(
            r"<Blob>(.*?)<Name>(.*?)</Name>(.*?)</Properties>",
            add,
            body.decode("utf-8"),
            flags=re.S,
        )
        return _join(head, text.encode("utf-8"))

    def _forward(self, head: bytes, body: bytes) -> bytes:
        return forward(self.upstream, head, body)


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _split(response: bytes) -> tuple[bytes, bytes]:
    """Head and body; a chunked body joined."""
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out += rest[:size]
            rest = rest[size + 2 :]
        body = out
    return head, body


def _join(head: bytes, body: bytes) -> bytes:
    lines = [
        h
        for h in head.split(b"\r\n")
        if not h.lower().startswith((b"content-length:", b"transfer-encoding:"))
    ]
    lines.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _add_headers(response: bytes, extra: dict[str, str]) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    added = "".join(f"\r\n{k}: {v}" for k, v in extra.items()).encode()
    return head + added + b"\r\n\r\n" + body


def _unescape(text: str) -> str:
    return (
        text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&apos;", "'")
        .replace("&amp;", "&")
    )


def _ok(extra: dict[str, str]) -> bytes:
    headers = {
        "x-ms-request-id": str(uuid.uuid4()),
        "x-ms-version": "2021-12-02",
        "Date": format_datetime(datetime.now(UTC), usegmt=True),
        **extra,
    }
    text = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"HTTP/1.1 200 OK\r\n{text}Content-Length: 0\r\nConnection: close\r\n\r\n".encode()


def _error(status: int, code: str, message: str) -> bytes:
    reason = {403: "Forbidden", 404: "Not Found", 409: "Conflict"}[status]
    payload = (
        f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
        f"<Message>{message}</Message></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"x-ms-error-code: {code}\r\nx-ms-request-id: {uuid.uuid4()}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
