"""Evidence heads kept outside the repository, so a chain cut short is caught.

The chain inside a repository proves that no record was changed, deleted or moved *between*
its first and its last record. It cannot prove that nothing was cut from the *end*: deleting the
newest records (a failed drill, say) needs no key and leaves a shorter chain that is intact. So
the head (sequence number and record id) is also kept where the repository's writer cannot
rewrite it, and the chain is checked against it:

- **the host**: every append, and every verify that found the chain intact, records the head in
  the state folder's SQLite database (``history.db``, table ``evidence_heads``), per repository
  id; ``bcdr evidence verify`` and ``bcdr report`` check against the newest head this host has
  seen;
- **the auditor**: every report prints each repository's head (``bcdr-evidence-head ...``);
  ``--previous-report FILE`` checks the chain against the heads a previous report printed, and
  ``--head SEQ:ID`` against one kept by hand;
- **monitoring**: the metrics textfile carries ``bcdr_evidence_head_sequence``.

A chain shorter than an anchor, or holding another record where the anchor names one, is a
failure that names what is missing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bcdr.errors import UsageError
from bcdr.statedir import default_state_dir

log = logging.getLogger("bcdr.evidence")

SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence_heads (
    repository_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    record TEXT NOT NULL,
    seen TEXT NOT NULL,       -- when this host first saw it (UTC ISO)
    how TEXT NOT NULL,        -- appended | verified
    PRIMARY KEY (repository_id, seq, record)
);
CREATE TABLE IF NOT EXISTS evidence_verdicts (
    repository_id TEXT PRIMARY KEY,
    ok INTEGER NOT NULL,      -- the last check of the chain on this host found it intact
    checked TEXT NOT NULL,    -- when (UTC ISO)
    problem TEXT NOT NULL     -- the first problem found, or ''
);
"""
HEAD_RE = re.compile(r"#?(\d+):([0-9a-fA-F]{8,64})")
TOKEN = "bcdr-evidence-head"
TOKEN_RE = re.compile(TOKEN + r" repository=(\S+) id=([0-9a-f]+) head=(\d+):([0-9a-f]{64})")


@dataclass(frozen=True)
class Anchor:
    """A head seen before: record ``id`` (or a prefix of it) was number ``seq`` of the chain.
    ``seq`` is None for a bare id (``--head ID`` as older versions printed it)."""

    seq: int | None
    id: str
    source: str  # who saw it: "this host (appended 2026-12-06T10:00)", "--head", "report X"
    repository_id: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"seq": self.seq, "id": self.id, "source": self.source}


def token(repository: str, repository_id: str, seq: int, record: str) -> str:
    """The line a report prints for each repository's head, which ``--previous-report``
    reads back from any of the report's formats."""
    return f"{TOKEN} repository={repository} id={repository_id} head={seq}:{record}"


def parse_head(text: str) -> Anchor:
    """``SEQ:ID`` (as reports and ``evidence verify`` print it), or a bare record id."""
    text = text.strip()
    m = HEAD_RE.fullmatch(text)
    if m:
        return Anchor(int(m.group(1)), m.group(2).lower(), "--head")
    if re.fullmatch(r"[0-9a-fA-F]{8,64}", text):
        return Anchor(None, text.lower(), "--head")
    raise UsageError(
        f"not an evidence head: {text!r}",
        where="--head",
        hint="give SEQ:ID as `bcdr evidence verify` or a report printed it, e.g. 17:3f2a9c...",
    )


def heads_in_report(path: Path) -> list[tuple[str, Anchor]]:
    """The heads a previous report printed (any of its formats): (repository name in the
    plan, head with the repository's id)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise UsageError(
            f"cannot read the previous report: {exc.strerror}", where=str(path)
        ) from None
    found = {
        (name, rid, seq, record): Anchor(int(seq), record, f"previous report {path.name}", rid)
        for name, rid, seq, record in TOKEN_RE.findall(text)
    }
    if not found:
        raise UsageError(
            "no evidence head in this file",
            where=str(path),
            hint="give a report bcdr wrote (Markdown, HTML or JSON): each prints "
            f"`{TOKEN} ...` for every repository",
        )
    return [(key[0], anchor) for key, anchor in found.items()]


@dataclass(frozen=True)
class Verdict:
    """What the last check of a repository's chain on this host found (for monitoring)."""

    repository_id: str
    ok: bool
    checked: str
    problem: str


class HeadStore:
    """The heads this host has seen, in the state folder's ``history.db``."""

    def __init__(self, state_dir: Path | None = None):
        from bcdr.statedir import open_state_db  # sqlite3 loads when a head is kept or read

        self.db = open_state_db(state_dir or default_state_dir())
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def remember(self, repository_id: str, seq: int, record: str, how: str) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO evidence_heads VALUES (?, ?, ?, ?, ?)",
            (repository_id, seq, record, datetime.now(UTC).isoformat(timespec="seconds"), how),
        )

    def judge(self, repository_id: str, problem: str | None, when: datetime) -> None:
        """Keep the verdict of a check of the chain: intact (``problem`` None) or not."""
        self.db.execute(
            "INSERT OR REPLACE INTO evidence_verdicts VALUES (?, ?, ?, ?)",
            (
                repository_id,
                int(problem is None),
                when.astimezone(UTC).isoformat(timespec="seconds"),
                problem or "",
            ),
        )

    def verdicts(self) -> list[Verdict]:
        rows = self.db.execute(
            "SELECT repository_id, ok, checked, problem FROM evidence_verdicts"
            " ORDER BY repository_id"
        ).fetchall()
        return [Verdict(r, bool(ok), checked, problem) for r, ok, checked, problem in rows]

    def newest(self, repository_id: str) -> Anchor | None:
        row = self.db.execute(
            "SELECT seq, record, seen, how FROM evidence_heads WHERE repository_id = ? "
            "ORDER BY seq DESC, seen DESC LIMIT 1",
            (repository_id,),
        ).fetchone()
        if row is None:
            return None
        seq, record, seen, how = row
        return Anchor(seq, record, f"this host ({how} {seen[:16]})", repository_id)

    def all_newest(self) -> list[Anchor]:
        rows = self.db.execute(
            "SELECT repository_id, MAX(seq) FROM evidence_heads GROUP BY repository_id "
            "ORDER BY repository_id"
        ).fetchall()
        out = []
        for rid, _ in rows:
            head = self.newest(rid)
            if head is not None:
                out.append(head)
        return out


def remember(repository_id: str, seq: int, record: str, how: str) -> str | None:
    """Record a head on this host; a state folder that cannot be written is logged and
    returned (the run goes on: the repository's own chain still holds the record)."""
    import sqlite3

    try:
        store = HeadStore()
        try:
            store.remember(repository_id, seq, record, how)
        finally:
            store.close()
    except (OSError, sqlite3.Error) as exc:
        problem = (
            f"the evidence head #{seq} could not be kept on this host ({exc}); "
            f"keep it elsewhere: {seq}:{record}"
        )
        log.warning(problem)
        return problem
    return None


def judge(repository_id: str, problem: str | None, when: datetime) -> None:
    """Keep on this host what a check of the chain found (``bcdr_evidence_chain_ok``); a
    state folder that cannot be written is logged (the check's own result stands)."""
    import sqlite3

    try:
        store = HeadStore()
        try:
            store.judge(repository_id, problem, when)
        finally:
            store.close()
    except (OSError, sqlite3.Error) as exc:
        log.warning("the evidence chain's verdict could not be kept on this host: %s", exc)


def kept_on_host(state_dir: Path) -> tuple[list[Anchor], list[Verdict]]:
    """The newest head of every repository and the chains' verdicts kept in ``state_dir``
    (none when they cannot be read: metrics and monitoring rows go on without them)."""
    import sqlite3

    try:
        store = HeadStore(state_dir)
        try:
            return store.all_newest(), store.verdicts()
        finally:
            store.close()
    except (OSError, sqlite3.Error):
        return [], []


def host_anchor(repository_id: str) -> tuple[Anchor | None, str | None]:
    """The newest head this host has seen for the repository, or why it cannot be read."""
    import sqlite3

    try:
        store = HeadStore()
        try:
            return store.newest(repository_id), None
        finally:
            store.close()
    except (OSError, sqlite3.Error) as exc:
        return None, f"this host's evidence heads cannot be read: {exc}"
