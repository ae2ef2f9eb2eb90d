"""Rows for Azure Monitor Logs, sent through the Logs Ingestion API (``azure-monitor-ingestion``)
to a data collection endpoint, for a data collection rule's stream.

Rows are first appended to a spool file in the state folder, then the whole spool is sent and
emptied: a row that could not be sent (the endpoint down, a token expired) goes with the next
send, so a job's result is never lost on the way. The spool keeps at most ``SPOOL_MAX`` rows
(the oldest go first, and the next row sent says how many were dropped).

Credential: the token in the variable the plan names (``token_env``), else the default chain.
Tokens travel over HTTPS only; no row carries a secret (rows are built from results, which
never hold one).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bcdr.errors import UsageError

#: Rows kept while the endpoint cannot be reached.
SPOOL_MAX = 10_000
RULE_RE = re.compile(r"dcr-[0-9a-fA-F]{32}")
STREAM_RE = re.compile(r"Custom-[A-Za-z0-9_]{1,100}")
_LOCK = threading.Lock()  # jobs running in parallel append to one spool


def check_endpoint(endpoint: str, where: str = "azure_monitor.endpoint") -> str:
    """``https://host[:port]`` with nothing after it, or UsageError."""
    parsed = urlparse(endpoint)
    if parsed.scheme != "https" or not parsed.hostname or parsed.path.strip("/") or parsed.query:
        raise UsageError(
            "invalid data collection endpoint: it must be https://HOST[:PORT] with no path",
            where=where,
            hint="copy the endpoint's 'Logs ingestion' URL from the portal or `az monitor "
            "data-collection endpoint show --query logsIngestion.endpoint`",
        )
    return endpoint


def check_rule_id(rule_id: str, where: str = "azure_monitor.rule_id") -> str:
    if not RULE_RE.fullmatch(rule_id):
        raise UsageError(
            f"{rule_id!r} is not a data collection rule's immutable id (dcr- and 32 hex digits)",
            where=where,
            hint="`az monitor data-collection rule show --query immutableId`",
        )
    return rule_id


def check_stream(stream: str, where: str = "azure_monitor.stream") -> str:
    if not STREAM_RE.fullmatch(stream):
        raise UsageError(
            f"{stream!r} is not a custom stream name (Custom- and letters, digits or _)",
            where=where,
            hint="the stream the data collection rule declares, e.g. Custom-BcdrEvents",
        )
    return stream


class Spool:
    """The rows not yet sent to one endpoint, rule and stream, one JSON object per line, in
    the state folder (0600)."""

    def __init__(self, folder: Path, endpoint: str, rule_id: str, stream: str):
        key = hashlib.sha256(f"{endpoint}\n{rule_id}\n{stream}".encode()).hexdigest()[:16]
        self.path = folder / "azure-monitor" / f"spool-{key}.jsonl"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Held across adding, taking, sending and removing: two processes (a tick and a
        `bcdr run`) would otherwise send the same rows twice, and one's removal of the lines
        it sent could remove rows the other added meanwhile."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # the kernel drops the lock (and does at a SIGKILL)

    def add(self, rows: list[dict[str, Any]]) -> None:
        with _LOCK:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "a") as f:
                for row in rows:
                    f.write(json.dumps(row, default=str, sort_keys=True) + "\n")

    def take(self) -> tuple[list[dict[str, Any]], int, int]:
        """The rows kept (the newest SPOOL_MAX), how many older ones are dropped, and how
        many lines were read: :meth:`sent` removes those lines once delivered (rows added
        meanwhile stay)."""
        with _LOCK:
            try:
                lines = self.path.read_text().splitlines()
            except FileNotFoundError:
                return [], 0, 0
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(row, dict):
                rows.append(row)
        dropped = max(0, len(rows) - SPOOL_MAX)
        return rows[dropped:], dropped, len(lines)

    def sent(self, lines_read: int) -> None:
        """The rows of the first ``lines_read`` lines were delivered (or dropped)."""
        with _LOCK:
            try:
                lines = self.path.read_text().splitlines(keepends=True)
            except FileNotFoundError:
                return
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.writelines(lines[lines_read:])
            os.replace(tmp, self.path)


def credential(token_env: str | None, env: Mapping[str, str]) -> Any:
    if token_env:
        from bcdr.cloud.arm import EnvTokenCredential

        return EnvTokenCredential(token_env, env)
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def send(
    endpoint: str,
    rule_id: str,
    stream: str,
    rows: list[dict[str, Any]],
    *,
    token_env: str | None,
    env: Mapping[str, str],
) -> None:
    """Upload ``rows``; raises UsageError (credential) or OSError-like errors the caller keeps
    the rows for. A few quick retries only: a job's end must not wait for a slow endpoint."""
    from azure.core.exceptions import AzureError
    from azure.monitor.ingestion import LogsIngestionClient

    client = LogsIngestionClient(
        endpoint, credential(token_env, env), retry_total=2, retry_backoff_max=4
    )
    try:
        logs: list[MutableMapping[str, Any]] = list(rows)
        client.upload(rule_id=rule_id, stream_name=stream, logs=logs)
    except AzureError as exc:
        status = getattr(exc, "status_code", None)
        reason = f"HTTP {status}" if status else type(exc).__name__
        raise SendFailed(f"{reason}: {_first_line(str(exc))}") from None
    finally:
        client.close()


class SendFailed(Exception):
    """The rows were not delivered (kept in the spool)."""


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:300]
