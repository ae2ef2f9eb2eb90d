"""Run history: one SQLite row per attempt of a job, in the state directory.

The scheduler decides what is due from it (the slot of each job's last finished run), ``bcdr
status`` reads it, metrics are computed from it. It is a cache of what the repositories prove:
``rebuild`` refills it from the snapshots of a plan's backup jobs, so a new host can take over.

Rows start as ``running`` and are finished in place; a row still ``running`` whose job lock is
free belongs to a process that died and is marked ``crashed`` (its slot is run again).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bcdr.errors import UsageError
from bcdr.statedir import STATE_ENV, default_state_dir, open_state_db

__all__ = ["History", "Run", "default_state_dir"]

RUNNING, CRASHED, INTERRUPTED = "running", "crashed", "interrupted"
OK, PARTIAL, FAILED = "ok", "partial", "failed"  # how a run ended (actions/run.py's too)
GOOD = (OK, PARTIAL)  # statuses that produced a recovery point
FINISHED_SLOT = ("ok", "partial", "failed", "not available")  # the slot is done

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    plan TEXT NOT NULL,
    job TEXT NOT NULL,
    kind TEXT NOT NULL,
    slot TEXT,                -- the schedule slot this run serves (ISO); NULL for `bcdr run`
    attempt INTEGER NOT NULL DEFAULT 1,
    started TEXT NOT NULL,
    finished TEXT,
    status TEXT NOT NULL,
    duration_s REAL,
    message TEXT NOT NULL DEFAULT '',
    transient INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT,
    recovery_point TEXT,      -- time of the recovery point this run made (ISO)
    bytes_added INTEGER,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    source TEXT NOT NULL,     -- tick | daemon | run | repository (rebuilt)
    measures TEXT             -- JSON: figures of the run for metrics (a drill's RTO, ...)
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (plan, job, id);
CREATE UNIQUE INDEX IF NOT EXISTS runs_snapshot ON runs (plan, job, snapshot)
    WHERE snapshot IS NOT NULL;
CREATE TABLE IF NOT EXISTS copies (
    plan TEXT NOT NULL,
    job TEXT NOT NULL,
    repository TEXT NOT NULL,  -- a copy_to repository of the job
    recovery_point TEXT NOT NULL,  -- time of the newest recovery point known there (ISO)
    recorded TEXT NOT NULL,
    PRIMARY KEY (plan, job, repository)
);
"""


def utc(when: datetime | str) -> str:
    """Times are stored as UTC ISO strings, so they sort as text across offsets (DST)."""
    dt = datetime.fromisoformat(when) if isinstance(when, str) else when
    return dt.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Run:
    id: int
    plan: str
    job: str
    kind: str
    slot: str | None
    attempt: int
    started: str
    finished: str | None
    status: str
    duration_s: float | None
    message: str
    transient: bool
    snapshot: str | None
    recovery_point: str | None
    bytes_added: int | None
    host: str
    pid: int
    source: str
    measures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


class History:
    """The run history of one state directory. Safe to share between processes (SQLite WAL,
    short transactions)."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self._lock = threading.RLock()
        try:
            self.db = open_state_db(state_dir)
            self.db.executescript(SCHEMA)
            _add_measures(self.db)
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(
                f"cannot open the run history: {exc}",
                where=str(state_dir / "history.db"),
                hint=f"choose a writable state directory with --state-dir or {STATE_ENV}",
            ) from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction at a time on the shared connection: jobs of a plan run in
        parallel threads (``max_parallel``), and a connection has one transaction state."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: tuple[object, ...]) -> tuple[Any, ...] | None:
        rows = self._query(sql, args)
        return rows[0] if rows else None

    def start(
        self,
        plan: str,
        job: str,
        kind: str,
        slot: datetime | None,
        attempt: int,
        started: datetime,
        source: str,
    ) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (plan, job, kind, slot, attempt, started, status, host, pid,"
                " source) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    plan,
                    job,
                    kind,
                    utc(slot) if slot else None,
                    attempt,
                    utc(started),
                    RUNNING,
                    socket.gethostname(),
                    os.getpid(),
                    source,
                ),
            )
            return int(cur.lastrowid or 0)

    def finish(
        self,
        run_id: int,
        *,
        status: str,
        finished: datetime,
        duration_s: float,
        message: str = "",
        transient: bool = False,
        snapshot: str | None = None,
        recovery_point: str | None = None,
        bytes_added: int | None = None,
        measures: dict[str, float] | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status=?, finished=?, duration_s=?, message=?, transient=?,"
                " snapshot=?, recovery_point=?, bytes_added=?, measures=? WHERE id=?",
                (
                    status,
                    utc(finished),
                    duration_s,
                    message[:2000],
                    int(transient),
                    snapshot,
                    utc(recovery_point) if recovery_point else None,
                    bytes_added,
                    json.dumps(measures) if measures else None,
                    run_id,
                ),
            )

    def record_copies(self, plan: str, job: str, points: dict[str, str], when: datetime) -> None:
        """The newest recovery point of ``job`` each copy_to repository holds after a run
        (repository -> its time); an older one never replaces a newer."""
        with self._tx() as db:
            for repository, point in points.items():
                db.execute(
                    "INSERT INTO copies (plan, job, repository, recovery_point, recorded)"
                    " VALUES (?,?,?,?,?) ON CONFLICT (plan, job, repository) DO UPDATE SET"
                    " recovery_point=excluded.recovery_point, recorded=excluded.recorded"
                    " WHERE excluded.recovery_point > copies.recovery_point",
                    (plan, job, repository, utc(point), utc(when)),
                )

    def copies(self, plan: str, job: str) -> dict[str, str]:
        """Repository -> the newest recovery point of ``job`` recorded there (ISO)."""
        rows = self._query(
            "SELECT repository, recovery_point FROM copies WHERE plan=? AND job=?", (plan, job)
        )
        return {str(r): str(p) for r, p in rows}

    def mark_crashed(self, plan: str, job: str) -> int:
        """Rows of ``job`` still ``running`` on this host: their process died (the caller
        holds the job lock now). Returns how many were marked."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE runs SET status=?, message=? WHERE plan=? AND job=? AND status=?"
                " AND host=?",
                (
                    CRASHED,
                    "the process running this job ended without finishing it",
                    plan,
                    job,
                    RUNNING,
                    socket.gethostname(),
                ),
            )
            return cur.rowcount

    def runs(self, plan: str, job: str | None = None, limit: int = 1000) -> list[Run]:
        """Newest first."""
        q = "SELECT * FROM runs WHERE plan=?" + (" AND job=?" if job else "")
        args: tuple[object, ...] = (plan, job) if job else (plan,)
        rows = self._query(q + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_run(r) for r in rows]

    def last_slot(self, plan: str, job: str) -> datetime | None:
        """The newest slot this job finished (whatever the result): the slot is done."""
        marks = ",".join("?" * len(FINISHED_SLOT))
        row = self._one(
            f"SELECT MAX(slot) FROM runs WHERE plan=? AND job=? AND slot IS NOT NULL"
            f" AND status IN ({marks})",
            (plan, job, *FINISHED_SLOT),
        )
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def last(self, plan: str, job: str) -> Run | None:
        rows = self.runs(plan, job, limit=1)
        return rows[0] if rows else None

    def newest_good(self, plan: str, job: str) -> Run | None:
        """The run that made the newest recovery point."""
        row = self._one(
            "SELECT * FROM runs WHERE plan=? AND job=? AND status IN (?,?)"
            " AND recovery_point IS NOT NULL ORDER BY recovery_point DESC LIMIT 1",
            (plan, job, *GOOD),
        )
        return _run(row) if row else None

    def newest_saved(self, plan: str, job: str) -> str | None:
        """The time of the newest recovery point any run of the job made, whatever the run
        came to after it (a backup whose copy failed saved its snapshot all the same)."""
        row = self._one(
            "SELECT MAX(recovery_point) FROM runs WHERE plan=? AND job=?"
            " AND recovery_point IS NOT NULL",
            (plan, job),
        )
        return str(row[0]) if row and row[0] else None

    def last_success(self, plan: str, job: str) -> Run | None:
        row = self._one(
            "SELECT * FROM runs WHERE plan=? AND job=? AND status IN (?,?) AND finished"
            " IS NOT NULL ORDER BY finished DESC LIMIT 1",
            (plan, job, *GOOD),
        )
        return _run(row) if row else None

    def last_measured(self, plan: str, job: str, measure: str) -> Run | None:
        """The newest finished run of the job that recorded ``measure``."""
        row = self._one(
            "SELECT * FROM runs WHERE plan=? AND job=? AND finished IS NOT NULL"
            " AND json_extract(measures, ?) IS NOT NULL ORDER BY id DESC LIMIT 1",
            (plan, job, f'$."{measure}"'),
        )
        return _run(row) if row else None

    def failures(self, plan: str, job: str) -> int:
        row = self._one(
            "SELECT COUNT(*) FROM runs WHERE plan=? AND job=? AND status IN ('failed', ?)",
            (plan, job, CRASHED),
        )
        return int(row[0]) if row else 0

    def add_rebuilt(
        self,
        plan: str,
        job: str,
        kind: str,
        *,
        slot: datetime | None,
        when: str,
        status: str,
        snapshot: str | None,
        bytes_added: int | None,
        recovery_point: bool = True,
        measures: dict[str, float] | None = None,
    ) -> bool:
        """A run read back from the repository (a backup's snapshot, or any job's evidence
        record); False when it is already known (the same snapshot, or a run of the job that
        started at the same time)."""
        with self._tx() as db:
            if (
                snapshot is None
                and db.execute(
                    "SELECT 1 FROM runs WHERE plan = ? AND job = ? AND started = ?",
                    (plan, job, utc(when)),
                ).fetchone()
            ):
                return False
            cur = db.execute(
                "INSERT OR IGNORE INTO runs (plan, job, kind, slot, attempt, started, finished,"
                " status, duration_s, message, snapshot, recovery_point, bytes_added, host,"
                " pid, source, measures) VALUES (?,?,?,?,1,?,?,?,NULL,?,?,?,?,?,0,'repository',?)",
                (
                    plan,
                    job,
                    kind,
                    utc(slot) if slot else None,
                    utc(when),
                    utc(when),
                    status,
                    "rebuilt from the repository",
                    snapshot,
                    utc(when) if recovery_point else None,
                    bytes_added,
                    socket.gethostname(),
                    json.dumps(measures) if measures else None,
                ),
            )
            return cur.rowcount == 1


def _add_measures(db: sqlite3.Connection) -> None:
    """A history written before runs had ``measures`` gains the column (empty for old rows)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    if "measures" not in columns:
        try:
            db.execute("ALTER TABLE runs ADD COLUMN measures TEXT")
        except sqlite3.OperationalError as exc:  # another process added it just now
            if "duplicate column" not in str(exc):
                raise


def _run(row: tuple[object, ...]) -> Run:
    r = list(row)
    r[11] = bool(r[11])
    r[18] = _measures(r[18])
    return Run(*r)  # type: ignore[arg-type]


def _measures(text: object) -> dict[str, float]:
    """A run's figures; nothing for a row without (or with unreadable) ones."""
    if not isinstance(text, str):
        return {}
    try:
        doc = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, int | float)}
