"""A loopback server speaking Azure Monitor's Logs Ingestion API, for the tests of a plan's
``azure_monitor``: ``POST /dataCollectionRules/{rule}/streams/{stream}?api-version=...`` with
a bearer token and a (gzipped) JSON array of rows; 204 when accepted. Over HTTPS with a
throwaway certificate (the SDK sends tokens over TLS only); clients trust it through
``REQUESTS_CA_BUNDLE``. ``fail_next(n, status)`` makes the next n requests fail."""

from __future__ import annotations

import gzip
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.arm_server import make_certificate


class MonitorServer:
    def __init__(self, folder: Path, token: str, rule_id: str, stream: str):
        self.token, self.rule_id, self.stream = token, rule_id, stream
        self.rows: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                server.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.ca_file, key_file = make_certificate(folder)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_file, key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> MonitorServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, count: int, status: int = 503) -> None:
        with self._lock:
            self._failures += [status] * count

    def recover(self) -> None:
        """Failures still queued are dropped: the endpoint is back."""
        with self._lock:
            self._failures.clear()

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        url = urlparse(req.path)
        record = {
            "path": url.path,
            "api_version": parse_qs(url.query).get("api-version", [None])[0],
            "authorization": req.headers.get("Authorization"),
            "encoding": req.headers.get("Content-Encoding"),
        }
        with self._lock:
            self.requests.append(record)
            failing = self._failures.pop(0) if self._failures else None
        if failing is not None:
            return self._error(req, failing, "ServiceUnavailable", "try again later")
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(req, 401, "InvalidToken", "the token is not valid")
        if url.path != f"/dataCollectionRules/{self.rule_id}/streams/{self.stream}":
            return self._error(req, 404, "NotFound", f"no rule or stream at {url.path}")
        if record["api_version"] is None:
            return self._error(req, 400, "MissingApiVersion", "api-version is required")
        if req.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        rows = json.loads(body)
        if not isinstance(rows, list):
            return self._error(req, 400, "InvalidPayload", "the body must be a JSON array")
        with self._lock:
            self.rows += rows
        req.send_response(204)
        req.end_headers()

    @staticmethod
    def _error(req: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": {"code": code, "message": message}}).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)
