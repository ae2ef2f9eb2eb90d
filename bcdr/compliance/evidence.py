"""Evidence records: one per job run, hash-chained per repository.

``evidence/<seq>-<id>``: ``seq`` is the record's place in the chain (ten digits, from 1) and
``id`` the BLAKE3 of its stored bytes (``seal(json, aad=b"evidence")``). Each record's document
carries ``prev``, the id of the record before it, and ``repository``, the id of the repository
it was written to, so:

- an **altered** record no longer matches its id;
- a **deleted** record leaves a gap in ``seq`` and a ``prev`` that names nothing;
- **reordered** or renamed records disagree with the ``seq`` and ``prev`` inside them;
- a record **copied** from another repository names another repository;
- records **cut from the end** are caught against a head kept outside the repository
  (``compliance/anchors.py``): this host's, a previous report's, or ``--head``.

Appends take the repository's ``evidence`` lock, so two jobs finishing together still make one
chain. In an encrypted repository records are sealed (AES-256-GCM) with the repository key:
a record written, edited or re-chained by anyone without the key does not open, so it is
named as forged. In an unencrypted one anyone with write access could rewrite the chain from
any record on; only an anchor kept outside catches that, and reports say so.

Records written before the chain existed (``evidence/<id>``) are read and reported as unchained.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from bcdr import __version__
from bcdr.clock import parse_aware
from bcdr.compliance import anchors
from bcdr.compliance.anchors import Anchor
from bcdr.compliance.context import RunContext
from bcdr.errors import BcdrError, ObjectNotFound
from bcdr.repository.hashing import object_name
from bcdr.repository.locks import EVIDENCE
from bcdr.repository.repo import Repository

PREFIX = "evidence/"
EVIDENCE_AAD = b"evidence"
NAME_RE = re.compile(r"(\d{10})-([0-9a-f]{64})")
LEGACY_RE = re.compile(r"[0-9a-f]{64}")
APPEND_WAIT_S = 120.0


@dataclass(frozen=True)
class Entry:
    name: str  # storage key, without the prefix
    seq: int | None  # None: written before the chain
    id: str


def _entries(repo: Repository) -> list[Entry]:
    out = []
    for info in repo.storage.list(PREFIX):
        name = info.key.removeprefix(PREFIX)
        m = NAME_RE.fullmatch(name)
        if m:
            out.append(Entry(name, int(m.group(1)), m.group(2)))
        elif LEGACY_RE.fullmatch(name):
            out.append(Entry(name, None, name))
    return sorted(out, key=lambda e: (e.seq is not None, e.seq or 0, e.name))


def write_record(
    repo: Repository,
    kind: str,
    facts: Mapping[str, object],
    *,
    context: RunContext | None = None,
    result: str = "ok",
) -> str:
    """Append one record to the repository's chain; returns its id."""
    ctx = context or RunContext()
    with repo.lock(EVIDENCE, wait=APPEND_WAIT_S):
        chained = [e for e in _entries(repo) if e.seq is not None]
        last = chained[-1] if chained else None
        now = repo.clock.now().isoformat()
        seq = (last.seq or 0) + 1 if last else 1
        doc = {
            "repository": repo.config.id,
            "kind": kind,
            "seq": seq,
            "prev": last.id if last else None,
            "time": now,
            "hostname": socket.gethostname(),
            "username": getpass.getuser(),
            "program_version": __version__,
            "plan": ctx.plan,
            "plan_digest": ctx.plan_digest,
            "job": ctx.job,
            "started": ctx.started or now,
            "finished": now,
            "result": result,
            "targets": ctx.targets,
            "facts": dict(facts),
        }
        sealed = repo.cipher.seal(json.dumps(doc, sort_keys=True).encode(), EVIDENCE_AAD)
        rid = object_name(sealed)
        repo.storage.put(f"{PREFIX}{seq:010d}-{rid}", sealed)
    anchors.remember(repo.config.id, seq, rid, "appended")
    return rid


def _open(repo: Repository, entry: Entry) -> tuple[dict[str, Any] | None, str | None]:
    """The record's document, or None and what is wrong with it."""
    try:
        sealed = repo.storage.get(PREFIX + entry.name)
    except ObjectNotFound:
        return None, "vanished while being read"
    if object_name(sealed) != entry.id:
        return None, "altered: its content does not match its id"
    try:
        plain = repo.cipher.open(sealed, EVIDENCE_AAD, f"evidence {entry.id[:12]}")
    except BcdrError as exc:
        if repo.config.encryption != "none":
            return None, (
                "forged: it is not sealed with this repository's key (written by someone "
                f"without it), or damaged ({exc})"
            )
        return None, f"unreadable: {exc}"
    try:
        doc = json.loads(plain)
    except ValueError as exc:
        return None, f"unreadable: {exc}"
    if not isinstance(doc, dict):
        return None, "unreadable: not a record"
    written_to = doc.get("repository")
    if written_to is not None and written_to != repo.config.id:
        return None, f"copied from another repository ({str(written_to)[:12]})"
    return doc, None


def read_records(repo: Repository, kind: str | None = None) -> list[dict[str, Any]]:
    """Every readable record (of ``kind``), in chain order (unchained ones first, by time),
    each with its ``id``."""
    out = []
    for entry in _entries(repo):
        doc, problem = _open(repo, entry)
        if doc is None or (kind is not None and doc.get("kind") != kind):
            continue
        out.append({**doc, "id": entry.id})
    unchained = sorted((d for d in out if "seq" not in d), key=lambda d: str(d.get("time")))
    return unchained + [d for d in out if "seq" in d]


@dataclass
class ChainProblem:
    record: str  # "#17 (3f2a…)" or a name
    what: str

    def __str__(self) -> str:
        return f"{self.record}: {self.what}"


@dataclass
class ChainReport:
    records: int = 0
    head_seq: int = 0
    head_id: str | None = None
    unchained: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    bad_ids: set[str] = field(default_factory=set)  # records not to be trusted
    repository_id: str | None = None
    authenticated: bool = False  # records sealed with the repository key (encrypted)
    anchors: list[dict[str, object]] = field(default_factory=list)  # heads checked against
    anchor_notes: list[str] = field(default_factory=list)  # e.g. host heads unreadable

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["bad_ids"] = sorted(self.bad_ids)
        d["problems"] = [str(p) for p in self.problems]
        d["ok"] = self.ok
        return d


def verify_chain(
    repo: Repository, given: list[Anchor] | None = None, *, host: bool = True
) -> ChainReport:
    """Check every record of the chain: content against id, ``seq`` against name and order,
    ``prev`` against the record before; and the chain against the heads seen before (``given``
    ones, and this host's unless ``host`` is False): a chain cut or rewritten after them
    fails."""
    return read_chain(repo, given, host=host)[1]


def read_chain(
    repo: Repository, given: list[Anchor] | None = None, *, host: bool = True
) -> tuple[list[dict[str, Any]], ChainReport]:
    """``verify_chain`` and ``read_records`` in one pass over storage: every readable record
    (unchained ones first, each with its ``id``) and the chain's report. An intact chain's
    head is remembered on this host."""
    report = ChainReport(
        repository_id=repo.config.id, authenticated=repo.config.encryption != "none"
    )
    entries = _entries(repo)
    documents: list[dict[str, Any]] = []
    for e in entries:
        if e.seq is None:
            report.unchained += 1
            legacy, _ = _open(repo, e)
            if legacy is not None:
                documents.append({**legacy, "id": e.id})
    documents.sort(key=lambda d: str(d.get("time")))
    chained = [e for e in entries if e.seq is not None]
    expected_seq, prev_id = 1, None
    by_seq: dict[int, list[Entry]] = {}
    for e in chained:
        by_seq.setdefault(e.seq or 0, []).append(e)
    for seq in sorted(by_seq):
        entry = _check_place(repo, report, documents, by_seq[seq], seq, expected_seq, prev_id)
        prev_id, expected_seq = entry.id, seq + 1
        report.head_seq, report.head_id = seq, entry.id
    checked = list(given or [])
    if host:
        mine, why_not = anchors.host_anchor(repo.config.id)
        if mine is not None:
            checked.append(mine)
        if why_not:
            report.anchor_notes.append(why_not)
    ids_at = {e.seq: e.id for e in chained if e.seq is not None}
    for anchor in checked:
        wrong = _against(anchor, ids_at, report.head_seq)
        report.anchors.append({**anchor.to_dict(), "ok": wrong is None})
        if wrong is not None:
            report.problems.append(wrong)
    if report.ok and report.head_id and host:
        anchors.remember(repo.config.id, report.head_seq, report.head_id, "verified")
    return documents, report


def _check_place(
    repo: Repository,
    report: ChainReport,
    documents: list[dict[str, Any]],
    group: list[Entry],
    seq: int,
    expected_seq: int,
    prev_id: str | None,
) -> Entry:
    """Check the record(s) at place ``seq`` of the chain (a gap before it, a second record
    claiming it, its content, its own ``seq`` and ``prev``); the record taken as that place."""
    label = f"#{seq}"
    if seq > expected_seq:
        missing = f"#{expected_seq}" + (f"–#{seq - 1}" if seq - 1 > expected_seq else "")
        report.problems.append(
            ChainProblem(
                missing,
                f"missing: deleted from the chain (the next record is #{seq} {group[0].id[:12]})",
            )
        )
    if len(group) > 1:
        report.problems.append(
            ChainProblem(
                label,
                f"{len(group)} records claim this place ("
                + ", ".join(e.id[:12] for e in group)
                + "): one was inserted",
            )
        )
        report.bad_ids.update(e.id for e in group)
    entry = group[0]
    doc, problem = _open(repo, entry)
    report.records += 1
    named = f"{label} ({entry.id[:12]})"
    if doc is None:
        report.problems.append(ChainProblem(named, str(problem)))
        report.bad_ids.add(entry.id)
        return entry
    documents.append({**doc, "id": entry.id})
    if doc.get("seq") != seq:
        report.problems.append(
            ChainProblem(named, f"reordered: the record says it is #{doc.get('seq')}")
        )
        report.bad_ids.add(entry.id)
    elif seq == expected_seq and doc.get("prev") != prev_id:
        report.problems.append(
            ChainProblem(
                named,
                f"chain broken: it follows {str(doc.get('prev'))[:12]}, but the record before "
                f"it is {str(prev_id)[:12]} (reordered or replaced)",
            )
        )
        report.bad_ids.add(entry.id)
    return entry


def _against(anchor: Anchor, ids_at: dict[int, str], head_seq: int) -> ChainProblem | None:
    """What is wrong with the chain (``ids_at``: record id by place) given a head seen
    before, or None."""
    short = anchor.id[:12]
    if anchor.seq is None:  # a bare id: it must still be somewhere in the chain
        if any(i.startswith(anchor.id) for i in ids_at.values()):
            return None
        return ChainProblem(
            f"head {short}",
            f"{anchor.source} saw this record as the head; it is gone: the chain was cut "
            "short or rebuilt",
        )
    if anchor.seq > head_seq:
        gone = f"#{head_seq + 1}" + (f"–#{anchor.seq}" if anchor.seq > head_seq + 1 else "")
        return ChainProblem(
            gone,
            f"missing: cut from the end of the chain. The chain ends at #{head_seq}, but "
            f"{anchor.source} saw #{anchor.seq} {short} as its head",
        )
    actual = ids_at.get(anchor.seq)
    if actual is None or not actual.startswith(anchor.id):
        return ChainProblem(
            f"#{anchor.seq}",
            f"rewritten: {anchor.source} saw {short} here, the chain now holds "
            f"{(actual or 'nothing')[:12]}; the chain was rebuilt from here on",
        )
    return None


# -- what a record must look like to serve as evidence ----------------------------------------
# The fields the compliance report reads, with their types; other fields are free. Written by
# this module and its callers; checked when read, since a record that opens and sits in its
# place in the chain may still come from another version, a bug, or someone who could write
# to an unencrypted repository.


class _Placement(msgspec.Struct):
    region: str | None = None
    secondary_region: str | None = None
    status: str | None = None


class _Copy(msgspec.Struct):
    region: str
    state: str | None = None


class _Disk(msgspec.Struct):
    disk: str
    name: str
    region: str | None = None
    status: str | None = None
    time: str | None = None
    copies: list[_Copy] = []


class _Facts(msgspec.Struct):
    snapshot: str | None = None
    snapshot_time: str | None = None
    placement: _Placement | None = None
    disks: list[_Disk] | None = None
    reasons: list[str] | None = None
    verdict: str | None = None
    rto_s: float | None = None
    rpo_s: float | None = None
    files_verified: int | None = None


class _Record(msgspec.Struct):
    time: str
    kind: str
    plan: str | None = None
    job: str | None = None
    result: str | None = None
    started: str | None = None
    finished: str | None = None
    facts: _Facts | None = None


def record_problem(doc: Mapping[str, Any]) -> str | None:
    """Why a record cannot serve as evidence (a field of the wrong kind, a time that is not
    ISO 8601 with a UTC offset), or None when it can."""
    try:
        rec = msgspec.convert(doc, _Record)
    except msgspec.ValidationError as exc:
        return str(exc)
    times = [("time", rec.time), ("started", rec.started), ("finished", rec.finished)]
    if rec.facts is not None:
        times.append(("facts.snapshot_time", rec.facts.snapshot_time))
        times += [("facts.disks[].time", d.time) for d in rec.facts.disks or []]
    for where, value in times:
        if value is None:
            continue
        try:
            parse_aware(value)
        except ValueError as exc:
            return f"{where}: {exc}"
    return None
