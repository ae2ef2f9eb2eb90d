"""A small stateful Azure Resource Manager server for tests, on loopback HTTPS.

No emulator exists for the management plane, so the real azure-mgmt SDKs talk to this instead:
it speaks ARM's REST conventions — resource ids as paths, a required ``api-version`` query,
``Authorization: Bearer`` checked against the one token it accepts, JSON error bodies
``{"error": {"code", "message"}}`` with ARM's codes (InvalidAuthenticationToken,
AuthorizationFailed, ResourceNotFound, ResourceGroupNotFound, MissingApiVersionParameter).
Resources are plain JSON documents keyed by their id (case-insensitive, as in ARM).

HTTPS is required because azure-core only sends bearer tokens over TLS: the server makes a
throwaway CA-less self-signed certificate for 127.0.0.1 with ``cryptography``; clients trust it
through ``REQUESTS_CA_BUNDLE=<server.ca_file>``.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

RG_RE = re.compile(r"^/subscriptions/([^/]+)/resourcegroups/([^/]+)", re.IGNORECASE)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 / localhost, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bcdr-test-arm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "arm-cert.pem", folder / "arm-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class ArmServer:
    """``with ArmServer(tmp_path, token="t") as arm:`` then ``arm.url``, ``arm.ca_file``,
    ``arm.put_resource(id, doc)``, ``arm.requests`` (method, path, api-version)."""

    def __init__(self, folder: Path, token: str):
        self.token = token
        self.resources: dict[str, dict[str, Any]] = {}
        self.resource_groups: set[str] = set()
        self.forbidden: set[str] = set()  # ids the caller has no role on (403)
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        self.ca_file, key_file = make_certificate(folder)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_file, key_file)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ArmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- state -----------------------------------------------------------------------------

    def put_resource(self, resource_id: str, doc: dict[str, Any]) -> None:
        m = RG_RE.match(resource_id)
        assert m, resource_id
        with self.lock:
            self.resource_groups.add(m.group(0).lower())
            self.resources[resource_id.lower()] = {"id": resource_id, **doc}

    def storage_account(
        self,
        subscription: str,
        group: str,
        name: str,
        *,
        location: str,
        sku: str,
        secondary: str | None = None,
    ) -> str:
        """Add a storage account as ARM describes one; returns its id."""
        rid = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
            f"Microsoft.Storage/storageAccounts/{name}"
        )
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "primaryLocation": location,
            "statusOfPrimary": "available",
            "primaryEndpoints": {"blob": f"https://{name}.blob.core.windows.net/"},
            "accessTier": "Hot",
        }
        if secondary:
            props |= {"secondaryLocation": secondary, "statusOfSecondary": "available"}
        self.put_resource(
            rid,
            {
                "name": name,
                "type": "Microsoft.Storage/storageAccounts",
                "location": location,
                "kind": "StorageV2",
                "sku": {"name": sku, "tier": sku.split("_")[0]},
                "properties": props,
            },
        )
        return rid


def _handler(arm: ArmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, doc: dict[str, Any] | None) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000001")
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, {"error": {"code": code, "message": message}})

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            url = urlparse(self.path)
            version = parse_qs(url.query).get("api-version", [""])[0]
            with arm.lock:
                arm.requests.append(("GET", url.path, version))
            if self.headers.get("Authorization") != f"Bearer {arm.token}":
                self._error(
                    401, "InvalidAuthenticationToken", "The access token is invalid or expired."
                )
                return
            if not version:
                self._error(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required.",
                )
                return
            key = url.path.rstrip("/").lower()
            m = RG_RE.match(key)
            with arm.lock:
                doc = arm.resources.get(key)
                group_known = m is not None and m.group(0) in arm.resource_groups
            if key in arm.forbidden:
                self._error(
                    403,
                    "AuthorizationFailed",
                    "The client does not have authorization to perform action "
                    f"'read' over scope '{url.path}'.",
                )
            elif doc is not None:
                self._send(200, doc)
            elif not group_known:
                self._error(404, "ResourceGroupNotFound", "Resource group could not be found.")
            else:
                self._error(404, "ResourceNotFound", f"The Resource '{url.path}' was not found.")

    return Handler
