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
What a record holds, and how it is encoded and typed, is ``compliance/records.py``; this module
keeps the chain.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from bcdr import __version__
from bcdr.clock import parse_aware
from bcdr.compliance import anchors
from bcdr.compliance.anchors import Anchor
from bcdr.compliance.context import RunContext
from bcdr.compliance.records import (
    FORMAT,
    Facts,
    NewerFormat,
    Record,
    RecordProblem,
    decode,
    encode,
    to_document,
)
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
    facts: Facts,
    *,
    context: RunContext | None = None,
    result: str = "ok",
) -> str:
    """Append one record of ``facts``'s kind to the repository's chain; returns its id."""
    ctx = context or RunContext()

    def document(seq: int, prev: str | None, now: datetime) -> bytes:
        return encode(
            Record(
                v=FORMAT,
                repository=repo.config.id,
                kind=facts.KIND,
                seq=seq,
                prev=prev,
                time=now,
                hostname=socket.gethostname(),
                username=getpass.getuser(),
                program_version=__version__,
                plan=ctx.plan,
                plan_digest=ctx.plan_digest,
                job=ctx.job,
                started=parse_aware(ctx.started) if ctx.started else now,
                finished=now,
                result=result,
                targets=ctx.targets,
                facts=facts,
            )
        )

    return _append(repo, document)


def write_untyped(
    repo: Repository,
    kind: object,
    facts: object,
    *,
    context: RunContext | None = None,
    result: object = "ok",
    extra: Mapping[str, object] | None = None,
) -> str:
    """Append a document as given, typed or not: what another version, a bug or someone with
    write access could leave in the chain (the tests of readers use it). ``extra``: more
    fields of the document (``v`` of a newer format)."""
    ctx = context or RunContext()

    def document(seq: int, prev: str | None, now: datetime) -> bytes:
        doc = {
            "repository": repo.config.id,
            "kind": kind,
            "seq": seq,
            "prev": prev,
            "time": now.isoformat(),
            "plan": ctx.plan,
            "job": ctx.job,
            "started": ctx.started or now.isoformat(),
            "finished": now.isoformat(),
            "result": result,
            "facts": facts,
            **(extra or {}),
        }
        return json.dumps(doc, sort_keys=True).encode()

    return _append(repo, document)


def _append(repo: Repository, document: Callable[[int, str | None, datetime], bytes]) -> str:
    """Seal ``document(seq, prev, now)`` and store it as the chain's next record, under the
    evidence lock; remember the new head on this host."""
    with repo.lock(EVIDENCE, wait=APPEND_WAIT_S):
        chained = [e for e in _entries(repo) if e.seq is not None]
        last = chained[-1] if chained else None
        seq = (last.seq or 0) + 1 if last else 1
        plain = document(seq, last.id if last else None, repo.clock.now())
        sealed = repo.cipher.seal(plain, EVIDENCE_AAD)
        rid = object_name(sealed)
        repo.storage.put(f"{PREFIX}{seq:010d}-{rid}", sealed)
    _judge_end(repo, seq, last.id if last else None)
    anchors.remember(repo.config.id, seq, rid, "appended")
    return rid


def _judge_end(repo: Repository, seq: int, prev: str | None) -> None:
    """An append sees the chain's end for free: when this host saw a longer chain, or another
    record at the place appended after, records were cut from the end. Kept as the chain's
    verdict (``bcdr_evidence_chain_ok`` pages); the record is appended all the same, and
    ``evidence verify`` names what is missing."""
    mine, _ = anchors.host_anchor(repo.config.id)
    if mine is None or mine.seq is None:
        return
    problem = None
    if mine.seq >= seq:
        problem = (
            f"#{seq}–#{mine.seq}: cut from the end of the chain before record #{seq} was "
            f"appended; {mine.source} saw #{mine.seq} as the head"
        )
    elif mine.seq == seq - 1 and not (prev or "").startswith(mine.id):
        problem = f"#{mine.seq}: replaced; {mine.source} saw {mine.id[:12]} there"
    if problem is not None:
        anchors.judge(repo.config.id, problem, repo.clock.now())


class _Place(msgspec.Struct):
    """What the chain checks read from a record, whatever else it holds."""

    repository: object = None
    seq: object = None
    prev: object = None


@dataclass(frozen=True)
class Unusable:
    """A record that opens and holds its place in the chain, but is not evidence this version
    can use (another version's format, a bug, or a hand at an unencrypted repository)."""

    id: str
    seq: int | None
    document: dict[str, Any]  # as far as it parses
    problem: str
    newer: bool = False  # written in a newer record format: read it with a newer bcdr


def _open(repo: Repository, entry: Entry) -> tuple[bytes | None, _Place | None, str | None]:
    """The record's stored document and its place fields, or None and what is wrong."""
    try:
        sealed = repo.storage.get(PREFIX + entry.name)
    except ObjectNotFound:
        return None, None, "vanished while being read"
    if object_name(sealed) != entry.id:
        return None, None, "altered: its content does not match its id"
    try:
        plain = repo.cipher.open(sealed, EVIDENCE_AAD, f"evidence {entry.id[:12]}")
    except BcdrError as exc:
        if repo.config.encryption != "none":
            return (
                None,
                None,
                (
                    "forged: it is not sealed with this repository's key (written by someone "
                    f"without it), or damaged ({exc})"
                ),
            )
        return None, None, f"unreadable: {exc}"
    try:
        place = msgspec.json.decode(plain, type=_Place)
    except msgspec.DecodeError as exc:
        return None, None, f"unreadable: {exc}"
    written_to = place.repository
    if written_to is not None and written_to != repo.config.id:
        return None, None, f"copied from another repository ({str(written_to)[:12]})"
    return plain, place, None


def _typed(entry: Entry, plain: bytes) -> Record[Facts] | Unusable:
    try:
        return decode(plain, entry.id)
    except RecordProblem as exc:
        try:
            doc = json.loads(plain)
        except ValueError:
            doc = {}
        return Unusable(
            entry.id,
            entry.seq,
            doc if isinstance(doc, dict) else {},
            str(exc),
            isinstance(exc, NewerFormat),
        )


def list_records(repo: Repository, kind: str | None = None) -> list[Record[Facts] | Unusable]:
    """Every record that opens (of ``kind``), in chain order (unchained ones first, by time):
    typed, or what keeps it from being evidence."""
    out: list[Record[Facts] | Unusable] = []
    for entry in _entries(repo):
        plain, _, _ = _open(repo, entry)
        if plain is None:
            continue
        item = _typed(entry, plain)
        if kind is not None and _kind(item) != kind:
            continue
        out.append(item)
    return _in_order(out)


def as_document(item: Record[Facts] | Unusable) -> dict[str, Any]:
    """A listed record as JSON values: the typed record, or the document as stored with the
    reason it is not evidence (``problem``)."""
    if isinstance(item, Record):
        return to_document(item)
    return {**item.document, "id": item.id, "problem": item.problem}


def read_records(repo: Repository, kind: str | None = None) -> list[Record[Facts]]:
    """Every record usable as evidence (of ``kind``), in chain order (unchained ones first,
    by time)."""
    return [r for r in list_records(repo, kind) if isinstance(r, Record)]


def _kind(item: Record[Facts] | Unusable) -> object:
    return item.kind if isinstance(item, Record) else item.document.get("kind")


def _in_order(items: list[Record[Facts] | Unusable]) -> list[Record[Facts] | Unusable]:
    def when(item: Record[Facts] | Unusable) -> str:
        return item.time.isoformat() if isinstance(item, Record) else str(item.document.get("time"))

    unchained = sorted((i for i in items if i.seq is None), key=when)
    return unchained + [i for i in items if i.seq is not None]


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
    #: records in their place in the chain that cannot serve as evidence (``Unusable``)
    unusable: list[ChainProblem] = field(default_factory=list)
    #: records in a newer format than this version reads (not damage; not read either)
    newer: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["bad_ids"] = sorted(self.bad_ids)
        d["problems"] = [str(p) for p in self.problems]
        d["unusable"] = [str(p) for p in self.unusable]
        d["newer"] = [str(p) for p in self.newer]
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
) -> tuple[list[Record[Facts]], ChainReport]:
    """``verify_chain`` and ``read_records`` in one pass over storage: every record usable as
    evidence (unchained ones first) and the chain's report, which names the records that hold
    their place but cannot serve as evidence (``unusable``, in ``bad_ids`` too). An intact
    chain's head is remembered on this host."""
    report = ChainReport(
        repository_id=repo.config.id, authenticated=repo.config.encryption != "none"
    )
    entries = _entries(repo)
    items: list[Record[Facts] | Unusable] = []
    for e in entries:
        if e.seq is None:
            report.unchained += 1
            plain, _, _ = _open(repo, e)
            if plain is not None:
                items.append(_typed(e, plain))
    chained = [e for e in entries if e.seq is not None]
    expected_seq, prev_id = 1, None
    by_seq: dict[int, list[Entry]] = {}
    for e in chained:
        by_seq.setdefault(e.seq or 0, []).append(e)
    for seq in sorted(by_seq):
        entry = _check_place(repo, report, items, by_seq[seq], seq, expected_seq, prev_id)
        prev_id, expected_seq = entry.id, seq + 1
        report.head_seq, report.head_id = seq, entry.id
    _check_anchors(repo, report, {e.seq: e.id for e in chained if e.seq is not None}, given, host)
    if host:
        problem = str(report.problems[0]) if report.problems else None
        anchors.judge(repo.config.id, problem, repo.clock.now())
    if report.ok and report.head_id and host:
        anchors.remember(repo.config.id, report.head_seq, report.head_id, "verified")
    records: list[Record[Facts]] = []
    for item in _in_order(items):
        if isinstance(item, Record):
            records.append(item)
        else:
            label = f"#{item.seq} ({item.id[:12]})" if item.seq is not None else item.id[:12]
            if item.newer:
                report.newer.append(ChainProblem(label, item.problem))
            else:
                report.unusable.append(
                    ChainProblem(label, f"not usable as evidence: {item.problem}")
                )
            report.bad_ids.add(item.id)
    return records, report


def _check_anchors(
    repo: Repository,
    report: ChainReport,
    ids_at: dict[int, str],
    given: list[Anchor] | None,
    host: bool,
) -> None:
    """The chain (``ids_at``: record id by place) against the heads seen before: the
    ``given`` ones, and this host's unless ``host`` is False."""
    checked = list(given or [])
    if host:
        mine, why_not = anchors.host_anchor(repo.config.id)
        if mine is not None:
            checked.append(mine)
        if why_not:
            report.anchor_notes.append(why_not)
    for anchor in checked:
        wrong = _against(anchor, ids_at, report.head_seq)
        report.anchors.append({**anchor.to_dict(), "ok": wrong is None})
        if wrong is not None:
            report.problems.append(wrong)


def _check_place(
    repo: Repository,
    report: ChainReport,
    items: list[Record[Facts] | Unusable],
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
    plain, place, problem = _open(repo, entry)
    report.records += 1
    named = f"{label} ({entry.id[:12]})"
    if plain is None or place is None:
        report.problems.append(ChainProblem(named, str(problem)))
        report.bad_ids.add(entry.id)
        return entry
    items.append(_typed(entry, plain))
    if place.seq != seq:
        report.problems.append(
            ChainProblem(named, f"reordered: the record says it is #{place.seq}")
        )
        report.bad_ids.add(entry.id)
    elif seq == expected_seq and place.prev != prev_id:
        report.problems.append(
            ChainProblem(
                named,
                f"chain broken: it follows {str(place.prev)[:12]}, but the record before "
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
