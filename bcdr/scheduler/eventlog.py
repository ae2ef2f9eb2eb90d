"""What the scheduler did, one line per event on stderr, for a log pipeline (journald, Loki,
Azure Monitor):

- ``json``: one object per line: ``time`` (UTC, milliseconds), ``level``, ``event``,
  ``message`` (a sentence for people), ``host``, ``pid``, then the event's facts (``plan``,
  ``job``, ``status``, ...);
- ``text``: the same as logfmt (``key=value``, values quoted when they hold a space, ``=`` or
  ``"``), which Loki's and Vector's logfmt parsers read.

``--quiet`` keeps only warnings and errors in text (JSON keeps every event). Records of
bcdr's own loggers (a warning that an evidence head could not be kept, progress of a long
Azure operation) go through the same log, so the stream stays one format.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

from bcdr.clock import Clock

INFO, WARNING, ERROR = "info", "warning", "error"
#: Events that are warnings or errors whatever their facts say.
_LEVEL_OF_EVENT = {
    "job-retry": WARNING,
    "job-busy": WARNING,
    "job-waiting": WARNING,
    "job-interrupted": WARNING,
    "hook-failed": WARNING,
    "plan-invalid": ERROR,
    "metrics-failed": ERROR,
    "monitor-failed": WARNING,
}
_LEVEL_OF_STATUS = {"failed": ERROR, "partial": WARNING, "interrupted": WARNING}


def level_of(event: str, facts: dict[str, object]) -> str:
    if event in _LEVEL_OF_EVENT:
        return _LEVEL_OF_EVENT[event]
    given = facts.get("level")
    if isinstance(given, str):
        return given
    return _LEVEL_OF_STATUS.get(str(facts.get("status")), INFO)


def _job(f: dict[str, object]) -> str:
    return f"{f.get('plan')}/{f.get('job')}"


def _job_end(f: dict[str, object]) -> str:
    said = f"{f.get('kind', 'job')} {_job(f)}: {f.get('status')}"
    return said + (f" — {f['detail']}" if f.get("detail") else "")


#: A sentence for people per event, from its facts.
_MESSAGES: dict[str, Callable[[dict[str, object]], str]] = {
    "job-start": lambda f: (
        f"{f.get('kind', 'job')} {_job(f)} started (attempt {f.get('attempt', 1)})"
    ),
    "job-end": _job_end,
    "job-retry": lambda f: f"{_job(f)} failed ({f.get('reason')}); retry in {f.get('wait_s')} s",
    "job-interrupted": lambda f: (
        f"{_job(f)} stopped by a signal; nothing half-written was committed"
    ),
    "job-busy": lambda f: f"{_job(f)} not started: {f.get('reason')}",
    "job-waiting": lambda f: f"{_job(f)} not started: {f.get('reason')}",
    "hook-failed": lambda f: f"{_job(f)}: hook {f.get('hook')} failed: {f.get('reason')}",
    "plan-invalid": lambda f: f"plan {f.get('plan_file')} not loaded: {f.get('error')}",
    "monitor-failed": lambda f: f"plan {f.get('plan')}: {f.get('reason')}",
    "metrics-failed": lambda f: f"metrics of plan {f.get('plan')} not written: {f.get('reason')}",
    "daemon-start": lambda f: f"scheduler started for {f.get('plans')}",
    "daemon-stop": lambda f: f"scheduler stopped: {f.get('reason')}",
    "sleep": lambda f: f"sleeping until {f.get('until')}",
}


def message_of(event: str, facts: dict[str, object]) -> str:
    """A sentence for people, from the event's facts."""
    make = _MESSAGES.get(event)
    return make(facts) if make is not None else event


def logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class EventLog:
    """The scheduler's event log: ``log(event, **facts)`` writes one line."""

    def __init__(
        self,
        stream: TextIO | None = None,
        fmt: str = "text",
        clock: Clock | None = None,
        *,
        quiet: bool = False,
    ):
        """``quiet`` (``--quiet``): text lines only for warnings and errors; JSON lines, which
        a log pipeline asked for, all the same (the pipeline filters on ``level``)."""
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.clock = clock
        self.quiet = quiet
        self.host = socket.gethostname()

    def __call__(self, event: str, **facts: object) -> None:
        level = level_of(event, facts)
        if self.quiet and level == INFO and self.fmt != "json":
            return
        now = self.clock.now() if self.clock else datetime.now(UTC)
        when = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc: dict[str, object] = {
            "time": when,
            "level": level,
            "event": event,
            "message": str(facts.pop("message_text", None) or message_of(event, facts)),
        }
        doc.update((k, v) for k, v in facts.items() if k != "level")
        doc["host"], doc["pid"] = self.host, os.getpid()
        if self.fmt == "json":
            line = json.dumps(doc, default=str)
        else:
            line = " ".join(
                f"{'msg' if k == 'message' else k}={logfmt_value(v)}"
                for k, v in doc.items()
                if v is not None and v != ""
            )
        self.stream.write(line + "\n")
        self.stream.flush()

    def handler(self) -> logging.Handler:
        """A logging handler that writes bcdr's own log records as events of this log."""
        return _Handler(self)


class _Handler(logging.Handler):
    def __init__(self, log: EventLog):
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        level = ERROR if record.levelno >= logging.ERROR else WARNING
        if record.levelno < logging.WARNING:
            level = INFO
        try:
            self.log("log", level=level, logger=record.name, message_text=record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never break the job
            self.handleError(record)


def route_bcdr_logging(log: EventLog) -> None:
    """Send the ``bcdr.*`` loggers' records through ``log`` (replacing the plain lines the
    CLI sets up), so stderr holds one format."""
    logger = logging.getLogger("bcdr")
    logger.handlers.clear()
    logger.addHandler(log.handler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
