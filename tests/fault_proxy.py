"""A loopback HTTP proxy that breaks on command, between the Azure SDK and Azurite.

Every request is read whole, forwarded to the upstream on a fresh connection (``Connection:
close``), and its response relayed, unless a fault is in force:

- ``drop``: the connection is reset as soon as the request has arrived (as a refused or
  dropped connection looks to the client);
- ``reset``: the request reaches the upstream (it may commit!), and the connection is reset
  half-way through relaying the response;
- ``stall``: nothing is answered until the fault ends (the client's read timeout fires);
- ``status``: an HTTP error (``429``, ``500``, ``503``) with ``Retry-After``, as a throttling
  or failing front end answers.

A fault holds for a time (``outage(mode, seconds)``) or for the next N requests
(``fail_next(mode, n)``), for every request or those whose method and path match. The proxy
counts requests and the bytes of request bodies that reached the upstream, per method.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    mode: str  # drop | reset | stall | status
    until: float | None = None  # monotonic time; None: by count
    remaining: int | None = None
    status: int = 503
    retry_after: float | None = 1.0
    match: re.Pattern[str] | None = None  # on "METHOD path?query"


@dataclass
class Counts:
    requests: int = 0
    faulted: int = 0
    forwarded_body_bytes: dict[str, int] = field(default_factory=dict)  # by method


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self.counts = Counts()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------------

    def outage(self, mode: str, seconds: float, **how: Any) -> None:
        """``mode`` for ``seconds``; ``how``: ``status``, ``retry_after``, ``match``."""
        self._add(mode, until=time.monotonic() + seconds, **how)

    def fail_next(self, mode: str, n: int, **how: Any) -> None:
        """``mode`` for the next ``n`` requests (that match)."""
        self._add(mode, remaining=n, **how)

    def _add(
        self,
        mode: str,
        *,
        until: float | None = None,
        remaining: int | None = None,
        status: int = 503,
        retry_after: float | None = 1.0,
        match: str | None = None,
    ) -> None:
        fault = Fault(
            mode, until, remaining, status, retry_after, re.compile(match) if match else None
        )
        with self._lock:
            self._faults.append(fault)

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()

    # -- serving ---------------------------------------------------------------------------

    def _fault_for(self, line: str) -> Fault | None:
        now = time.monotonic()
        with self._lock:
            self.counts.requests += 1
            for f in list(self._faults):
                if f.until is not None and now >= f.until:
                    self._faults.remove(f)
                    continue
                if f.match is not None and not f.match.search(line):
                    continue
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
                self.counts.faulted += 1
                return f
        return None

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
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target = (line.split(" ") + ["", ""])[:2]
            fault = self._fault_for(f"{method} {target}")
            if fault is not None and fault.mode == "drop":
                _reset(conn)
                return
            if fault is not None and fault.mode == "stall":
                while not self._stop.is_set():
                    if fault.until is not None and time.monotonic() >= fault.until:
                        break
                    if fault.until is None:
                        time.sleep(30)
                        break
                    time.sleep(0.05)
                _reset(conn)
                return
            if fault is not None and fault.mode == "status":
                reason = {429: "Too Many Requests", 500: "Internal Server Error"}.get(
                    fault.status, "Service Unavailable"
                )
                code = {429: "ServerBusy", 500: "InternalError"}.get(fault.status, "ServerBusy")
                payload = (
                    f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                    f"<Message>injected</Message></Error>"
                ).encode()
                extra = (
                    f"Retry-After: {fault.retry_after:g}\r\n"
                    if fault.retry_after is not None
                    else ""
                )
                conn.sendall(
                    f"HTTP/1.1 {fault.status} {reason}\r\nContent-Type: application/xml\r\n"
                    f"x-ms-error-code: {code}\r\n{extra}Content-Length: {len(payload)}\r\n"
                    "Connection: close\r\n\r\n".encode()
                    + payload
                )
                return
            response = self._forward(head, body)
            with self._lock:
                by = self.counts.forwarded_body_bytes
                by[method] = by.get(method, 0) + len(body)
            if fault is not None and fault.mode == "reset":
                conn.sendall(response[: max(1, len(response) // 2)])
                _reset(conn)
                return
            conn.sendall(response)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _forward(self, head: bytes, body: bytes) -> bytes:
        return forward(self.upstream, head, body)


def forward(upstream: tuple[str, int], head: bytes, body: bytes) -> bytes:
    """Send one request upstream on a fresh connection (``Connection: close``); its whole
    response."""
    lines = head.split(b"\r\n")
    kept = [
        h for h in lines[1:] if h and not h.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    out = b"\r\n".join([lines[0], *kept, b"Connection: close"]) + b"\r\n\r\n" + body
    with socket.create_connection(upstream, timeout=120) as up:
        up.sendall(out)
        chunks = []
        while True:
            data = up.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def _reset(conn: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the client sees a reset connection, not a clean end."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    except OSError:
        pass


def _read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    conn.settimeout(120)
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = conn.recv(1 << 16)
        if not data:
            return None
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = 0
    chunked = False
    for h in head.split(b"\r\n")[1:]:
        name, _, value = h.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while not rest.endswith(b"0\r\n\r\n"):
            data = conn.recv(1 << 16)
            if not data:
                return None
            rest += data
        return head, rest  # relayed as it came, with its Transfer-Encoding header
    while len(rest) < length:
        data = conn.recv(1 << 20)
        if not data:
            return None
        rest += data
    return head, rest[:length]
