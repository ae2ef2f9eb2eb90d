"""Evidence records, typed: one Struct per kind of record, written and read by one codec.

A record is an envelope (``Record``: repository, place in the chain, when, who, which plan
and job, result) around the facts of its kind (``BackupFacts``, ``DrillFacts``, ...). Writers
build the facts Struct, ``encode`` lays out the document that is sealed and chained
(``compliance/evidence.py``), and ``decode`` turns a stored document back into a ``Record``,
or says why it cannot serve as evidence (a field of the wrong type, a time without a UTC
offset, a format newer than this program reads).

Versions: ``v`` is the record format. 1 is every record written before typed facts (they carry
no ``v``); 2 adds the field and writes times as RFC 3339. A record of a newer format than
``FORMAT`` is named, not guessed at. Unknown fields are ignored, so a minor addition by a
newer version still reads. Old records are kept as golden files in ``tests/golden/evidence``.

Adding a field: add it to the kind's Struct with a default (old records lack it). Adding a
kind of record: a Struct with ``KIND``, listed in ``FACTS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

#: The record format this program writes, and the newest it reads.
FORMAT = 2

#: A time with its UTC offset (a time without one compares with nothing).
Time = Annotated[datetime, msgspec.Meta(tz=True)]


class Facts(msgspec.Struct, frozen=True, kw_only=True):
    """What every kind of run may record: why it failed."""

    KIND: ClassVar[str] = ""
    error: str | None = None  # the run failed: why
    transient: bool | None = None  # ... and whether a retry may succeed

    @classmethod
    def of(cls: type[F], fields: Mapping[str, object]) -> F:
        """The facts from a report's dict. A key the Struct lacks is a bug (a field added to
        a report but not to its record), not something to drop quietly."""
        unknown = set(fields) - set(cls.__struct_fields__)
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no field {', '.join(sorted(unknown))}: add it to "
                "bcdr/compliance/records.py"
            )
        return msgspec.convert(dict(fields), cls)

    def failure(self, sep: str = "; ") -> str:
        """Why the run failed, as its record says ("" when it says nothing)."""
        return self.error or ""


F = TypeVar("F", bound=Facts)
#: A record of facts F is also a record of any base of F (records are immutable).
F_co = TypeVar("F_co", bound=Facts, covariant=True)


# -- backup -------------------------------------------------------------------------------


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """Where a backup's repository keeps the data (``geo/verify.py``)."""

    region: str | None = None
    secondary_region: str | None = None  # a geo-redundant account's paired region
    redundancy: str | None = None
    status: str | None = None  # verified | declared | ...
    source: str | None = None
    checked_at: str | None = None

    @classmethod
    def of(cls, fields: Mapping[str, object] | None) -> Placement | None:
        return None if fields is None else msgspec.convert(dict(fields), cls)


class BackupFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "backup"
    snapshot: str | None = None
    snapshot_time: Time | None = None
    paths: list[str] = []
    parent: str | None = None
    files: int | None = None
    bytes_read: int | None = None
    bytes_added: int | None = None
    skipped: int | None = None
    healed: list[str] = []
    placement: Placement | None = None
    encryption: str | None = None
    kept_packs: int | None = None  # a failed backup: what it kept for the next one
    kept_bytes: int | None = None
    shards: int | None = None  # a sharded backup: how many shards read it, and the run
    shard_run: str | None = None
    slurm_jobs: list[str] = []  # run through Slurm: the shards' array tasks, then the commit's job


# -- drill --------------------------------------------------------------------------------


class DrillFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "drill"
    plan: str | None = None
    drill: str | None = None
    kind: str = "backup"  # what it restored: backup | disk
    job: str | None = None  # the backup or snapshot job drilled
    started: str | None = None
    verdict: str | None = None  # pass | fail
    reasons: list[str] = []
    snapshot: str | None = None
    snapshot_time: Time | None = None
    repository: str | None = None  # the plan's repository restored from (a copy's: region loss)
    shards: int | None = None  # scale_out: the parts the restore was spread over, and where
    executor: str | None = None
    slurm_jobs: list[str] = []
    read_back: str | None = None  # who read the restored files back: drill | parts
    recovery_point: str | None = None
    seed: int | None = None
    sample_percent: float = 100.0
    sample_digest: str | None = None
    files_total: int = 0
    files_selected: int = 0
    bytes_selected: int = 0
    bytes_total: int = 0
    files_verified: int = 0
    bytes_verified: int = 0
    failures: list[dict[str, str]] = []  # path, error
    drift: list[dict[str, str]] = []
    source_compared: int = 0
    phases: dict[str, float] = {}  # seconds per phase
    ttfb_s: float | None = None
    rto_s: float | None = None
    rto_target_s: float | None = None
    rto_target: str | None = None
    rto_estimate_s: float | None = None
    rto_estimate_method: str | None = None
    rpo_s: float | None = None
    rpo_target_s: float | None = None
    rpo_target: str | None = None
    scratch: str | None = None
    kept: bool = False
    scratch_region: str | None = None
    restored_disks: list[dict[str, Any]] = []
    evidence: str | None = None

    @property
    def sampled(self) -> bool:
        return self.sample_percent < 100

    def failure(self, sep: str = "; ") -> str:
        return self.error or sep.join(self.reasons)


# -- disk snapshots -------------------------------------------------------------------------


class DiskCopy(msgspec.Struct, frozen=True, kw_only=True):
    region: str
    snapshot: str | None = None
    source: str | None = None
    state: str | None = None  # done | copying | failed
    percent: float = 0.0
    error: str | None = None
    seconds: float = 0.0


class DiskPoint(msgspec.Struct, frozen=True, kw_only=True):
    disk: str  # resource id
    name: str
    region: str | None = None
    status: str | None = None  # protected | partial | failed
    kind: str = "snapshot"
    recovery_point: str | None = None
    time: Time | None = None
    seconds: float = 0.0
    copies: list[DiskCopy] = []
    kept: list[dict[str, Any]] = []
    removed: list[dict[str, Any]] = []
    notes: list[str] = []
    error: str | None = None
    transient: bool = False


class DiskSnapshotFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "disk-snapshot"
    plan: str | None = None
    job: str | None = None
    consistency: str | None = None
    region: str | None = None
    copy_to: list[str] = []
    started: str | None = None
    finished: str | None = None
    disks: list[DiskPoint] | None = None
    status: str | None = None


# -- retention, check, prune, repair --------------------------------------------------------


class RetentionDecision(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    time: str | None = None
    keep: bool = False
    reasons: list[str] = []


class RetentionGroup(msgspec.Struct, frozen=True, kw_only=True):
    job: str | None = None
    hostname: str | None = None
    paths: list[str] = []
    decisions: list[RetentionDecision] = []


class ForgetFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "forget"
    plan: str | None = None
    policy: dict[str, Any] | None = None
    timezone: str | None = None
    groups: list[RetentionGroup] = []
    removed: list[str] = []
    waiting: list[str] = []  # dropped, still protected by immutability: removed later
    kept: list[str] = []  # records of the first version named what they kept

    @property
    def kept_count(self) -> int:
        return sum(1 for g in self.groups for d in g.decisions if d.keep) or len(self.kept)


class CheckFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "check"
    ok: bool | None = None
    errors: list[str] = []  # the first ones
    error_count: int | None = None
    leftovers: list[str] = []
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    read_fraction: float = 0.0
    damaged_snapshots: list[str] = []
    repairs: list[str] = []
    immutability: dict[str, Any] | None = None  # immutability.Coverage.to_dict()

    @property
    def errors_found(self) -> int:
        return self.error_count if self.error_count is not None else len(self.errors)


class PruneFacts(Facts, frozen=True, kw_only=True):
    KIND: ClassVar[str] = "prune"
    plan: str | None = None
    max_unused: float | None = None
    grace_s: float | None = None
    dry_run: bool = False
    snapshots: int = 0
    trees: int = 0
    blobs_referenced: int = 0
    blobs_missing: int = 0
    packs: int = 0
    bytes_stored: int = 0
    bytes_used: int = 0
    mark: str | None = None
    packs_unused: int = 0
    packs_unindexed: int = 0
    packs_repacked: int = 0
    bytes_marked: int = 0
    bytes_repacked: int = 0
    marks_swept: list[str] = []
    packs_deleted: int = 0
    bytes_deleted: int = 0
    packs_kept: list[str] = []
    packs_waiting: int = 0
    waiting: str | None = None
    immutability: dict[str, object] | None = None
    index_rewritten: int = 0
    postponed: list[str] = []
    pending: int = 0
    problems: list[str] = []
    stale_locks_removed: int = 0
    temp_files_removed: list[str] = []
    shard_runs_removed: int = 0
    shard_runs_kept: int = 0
    evidence: str | None = None
    uploaded: dict[str, float] | None = None
    downloaded: dict[str, float] | None = None


class RepairFacts(Facts, frozen=True, kw_only=True):
    """``repair index`` (``what: index``) or ``repair snapshots`` (``what: snapshots``)."""

    KIND: ClassVar[str] = "repair"
    what: str | None = None
    changed: bool = False
    dry_run: bool = False
    # index
    packs: int = 0
    missing_packs: list[str] = []
    truncated_packs: list[str] = []
    damaged_index_files: list[str] = []
    packs_indexed: list[str] = []
    unreadable_packs: list[str] = []
    index_files_written: int = 0
    index_files_removed: int = 0
    # snapshots
    forget: bool = False
    snapshots: int = 0
    repaired: list[dict[str, Any]] = []
    damaged_manifests: list[str] = []
    manifests_removed: list[str] = []


class CopiedPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One recovery point a copy run made present in the destination."""

    snapshot: str  # in the destination
    source_snapshot: str
    recovery_point: str  # the id the backup gave it (``Snapshot.recovery_point``)
    snapshot_time: Time
    job: str | None = None
    already: bool = False  # the destination held it already: nothing was copied


class CopyFacts(Facts, frozen=True, kw_only=True):
    """``bcdr copy``: recovery points of a source repository copied into this one."""

    KIND: ClassVar[str] = "copy"
    source_repository: str | None = None  # the source's repository id (never its URL)
    source_placement: Placement | None = None
    placement: Placement | None = None  # where this (the destination) repository keeps them
    points: list[CopiedPoint] = []
    blobs_copied: int | None = None
    blobs_skipped: int | None = None
    bytes_copied: int | None = None
    bytes_skipped: int | None = None
    bytes_uploaded: int | None = None
    rechunked: bool = False
    healed: list[str] = []


class HoldFacts(Facts, frozen=True, kw_only=True):
    """``bcdr hold add|remove``: a legal hold put on (or lifted from) every object a snapshot
    needs and the evidence records that name it (docs/immutability.md)."""

    KIND: ClassVar[str] = "hold"
    snapshot: str | None = None
    on: bool = True  # put on (True) or lifted (False)
    objects: int = 0  # objects changed
    kept: int = 0  # lifting: objects another held snapshot needs, left held
    evidence_records: list[str] = []  # ids of the records held with it


class KeyFacts(Facts, frozen=True, kw_only=True):
    """``bcdr key add|remove|passwd``: a password's key file added, removed or replaced."""

    KIND: ClassVar[str] = "key"
    action: str | None = None  # add, remove, passwd
    key: str | None = None  # the key file's id (added, removed, or the new one)
    replaced: str | None = None  # passwd: the key file it replaced


class TagFacts(Facts, frozen=True, kw_only=True):
    """``bcdr tag``: snapshots written anew with other tags (``old`` id, ``new`` id, tags)."""

    KIND: ClassVar[str] = "tag"
    snapshots: list[dict[str, Any]] = []


class OtherFacts(Facts, frozen=True, kw_only=True):
    """A kind this version does not know (written by a newer one): read, used for nothing."""


#: Every kind of record, by the name stored in it.
FACTS: dict[str, type[Facts]] = {
    f.KIND: f
    for f in (
        BackupFacts,
        DrillFacts,
        DiskSnapshotFacts,
        ForgetFacts,
        CheckFacts,
        PruneFacts,
        RepairFacts,
        CopyFacts,
        HoldFacts,
        KeyFacts,
        TagFacts,
    )
}

#: Kinds under the names older versions wrote (a failed disk job wrote "snapshot").
OLD_NAMES: dict[str, type[Facts]] = {"snapshot": DiskSnapshotFacts}


# -- the envelope -----------------------------------------------------------------------------


class Record(msgspec.Struct, Generic[F_co], frozen=True, kw_only=True):
    """One evidence record. ``id`` is not stored in it: it is the hash of the sealed bytes."""

    kind: str
    time: Time
    facts: F_co
    v: int = 1
    id: str = ""
    repository: str | None = None  # the repository it was written to (format 1 on)
    seq: int | None = None  # its place in the chain; None: written before the chain
    prev: str | None = None
    hostname: str | None = None
    username: str | None = None
    program_version: str | None = None
    plan: str | None = None
    plan_digest: str | None = None
    job: str | None = None
    started: Time | None = None
    finished: Time | None = None
    result: str | None = None  # ok | partial | failed; None: written before results
    targets: dict[str, str] | None = None

    @property
    def begun(self) -> datetime:
        """When the run started (its record's time when it does not say)."""
        return self.started or self.time


class _Head(msgspec.Struct):
    kind: str
    v: int = 1


class RecordProblem(ValueError):
    """A stored document that is not a record this version can use as evidence."""


class NewerFormat(RecordProblem):
    """A record written in a format newer than this version reads: not damage."""


def decode(document: bytes, rid: str = "") -> Record[Facts]:
    """The record in a stored document (JSON), with its ``id``. Raises RecordProblem."""
    try:
        head = _HEAD.decode(document)
    except msgspec.DecodeError as exc:
        raise RecordProblem(str(exc)) from None
    if head.v > FORMAT:
        raise NewerFormat(
            f"written in record format {head.v} by a newer bcdr (this one reads up to "
            f"{FORMAT}); read it with that version"
        )
    kind = FACTS.get(head.kind) or OLD_NAMES.get(head.kind) or OtherFacts
    try:
        rec: Record[Facts] = _decoder(kind).decode(document)
    except msgspec.DecodeError as exc:
        raise RecordProblem(str(exc)) from None
    return msgspec.structs.replace(rec, id=rid)


_HEAD = msgspec.json.Decoder(_Head)
_DECODERS: dict[type[Facts], msgspec.json.Decoder[Record[Facts]]] = {}


def _decoder(kind: type[Facts]) -> msgspec.json.Decoder[Record[Facts]]:
    """The decoder of records of ``kind``, made once (a report decodes thousands)."""
    found = _DECODERS.get(kind)
    if found is None:
        found = _DECODERS[kind] = msgspec.json.Decoder(Record[kind])  # type: ignore[valid-type]
    return found


def from_document(doc: Mapping[str, Any], rid: str | None = None) -> Record[Facts]:
    """``decode`` of a document already parsed (tests and tools build records this way)."""
    given = rid if rid is not None else str(doc.get("id", ""))
    return decode(msgspec.json.encode(dict(doc)), given)


def encode(rec: Record[Facts]) -> bytes:
    """The stored document: sorted keys, without the ``id`` (the hash of what is stored)."""
    doc = msgspec.to_builtins(rec)
    del doc["id"]
    return msgspec.json.encode(doc, order="sorted")


def to_document(rec: Record[Facts]) -> dict[str, Any]:
    """The record as plain JSON values, ``id`` included (``evidence list --json``)."""
    out: dict[str, Any] = msgspec.to_builtins(rec)
    return out


def typed(records: list[Record[Facts]], kind: type[F]) -> list[Record[F]]:
    """The records whose facts are of ``kind``."""
    return [r for r in records if isinstance(r.facts, kind)]  # type: ignore[misc]
