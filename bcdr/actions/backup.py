"""``bcdr backup``: back up paths into a new snapshot."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bcdr.actions.common import open_repo, record_failure, transfer
from bcdr.archive.backup import Archiver, BackupStats, Prepared, ProgressFn
from bcdr.archive.patterns import PathMatcher
from bcdr.clock import Clock, parse_aware
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import BackupFacts, Placement
from bcdr.errors import (
    BcdrError,
    Interrupted,
    RepositoryError,
    SourceError,
    TransientStorageError,
)
from bcdr.interrupts import held_interrupts
from bcdr.repository import immutability
from bcdr.repository.locks import BACKUP
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import SkippedPath, Snapshot
from bcdr.repository.writer import BlobWriter
from bcdr.storage.url import StorageSpec
from bcdr.storage.wrap import Transfer
from bcdr.units import human_bytes


@dataclass(frozen=True)
class BackupRequest:
    paths: tuple[str, ...]
    job: str | None = None
    excludes: tuple[str, ...] = ()
    force_read: bool = False
    tags: tuple[str, ...] = ()
    one_file_system: bool = False  # other filesystems' mount points are kept empty
    plan: str | None = None
    placement: dict[str, Any] | None = None  # where the data goes, from geo.verify
    context: RunContext | None = None  # for the evidence record (plan digest, start)
    # a sharded run's commit (bcdr/archive/shards.py): files its shards read, its id, the
    # parent the shards compared against, and what they read and added
    prepared: Prepared | None = None
    shard_run: str | None = None
    parent_id: str | None = None
    shard_bytes: tuple[int, int] = (0, 0)
    shards: int | None = None
    slurm_jobs: tuple[str, ...] = ()


@dataclass
class BackupResult:
    snapshot: Snapshot
    stats: BackupStats
    skipped: list[SkippedPath] = field(default_factory=list)
    warnings: list[SkippedPath] = field(default_factory=list)
    uploaded: Transfer | None = None
    evidence: str | None = None  # the evidence record of this backup
    evidence_error: str | None = None  # why the record could not be written (snapshot kept)
    notes: list[str] = field(default_factory=list)  # lost packs found and healed

    @property
    def partial(self) -> bool:
        return bool(self.skipped)

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot.id,
            "short_id": self.snapshot.short_id,
            "parent": self.snapshot.parent,
            "job": self.snapshot.job,
            "paths": list(self.snapshot.paths),
            "time": self.snapshot.time,
            "stats": self.stats.to_dict(),
            "skipped": [vars(s) for s in self.skipped],
            "warnings": [vars(s) for s in self.warnings],
            "partial": self.partial,
            "uploaded": self.uploaded.to_dict() if self.uploaded else None,
            "evidence": self.evidence,
            "evidence_error": self.evidence_error,
            "notes": self.notes,
        }


def resolve_sources(paths: tuple[str, ...]) -> list[bytes]:
    """Absolute byte paths; raises SourceError naming every path that does not exist."""
    if not paths:
        raise SourceError("nothing to back up", hint="give one or more paths")
    out, missing = [], []
    for p in paths:
        abs_path = os.path.abspath(os.fsencode(p))
        if abs_path == b"/":
            # The snapshot's root folder stands for "/" (it holds the backed-up paths): "/"
            # itself has no place in it, and was stored as an empty snapshot.
            raise SourceError(
                "backing up / itself is not supported",
                where=p,
                hint="give its folders instead, e.g. /home /etc /data",
            )
        if os.path.lexists(abs_path):
            out.append(abs_path)
        else:
            missing.append(p)
    if missing:
        raise SourceError(
            f"path(s) to back up do not exist: {', '.join(missing)}",
            hint="check the paths; nothing was written",
        )
    return out


#: Passes of a backup before the commit guard gives up: the first, then one per time it found
#: reused blobs gone (a second pass stores them again; a third means something keeps deleting).
GUARD_PASSES = 3


def pack_list(packs: list[str]) -> str:
    if not packs:
        return ""
    more = f" and {len(packs) - 3} more" if len(packs) > 3 else ""
    return f" (pack(s) {', '.join(p[:12] for p in packs[:3])}{more})"


def load_for_writing(repo: Repository, what: str = "run") -> list[str]:
    """(holding a ``backup`` lock) Load the index, packs listed: what a run that writes
    builds on. Packs an interrupted run uploaded before its index are indexed from their
    headers and reused. Returns notes on what was found (lost packs, adopted ones)."""
    repo.load_index(verify_packs=True)
    notes = lost_pack_notes(sorted(repo.missing_packs))
    adopted, adopted_bytes = repo.adopt_unindexed_packs()
    if adopted:
        notes.append(
            f"{adopted} pack(s) ({human_bytes(adopted_bytes)}) an interrupted {what} uploaded "
            "were indexed from their headers and are reused"
        )
    return notes


def lost_pack_notes(packs: list[str]) -> list[str]:
    if not packs:
        return []
    return [
        f"{len(packs)} pack(s) the index lists are missing{pack_list(packs)}: blobs only "
        "they held are stored again; run `bcdr check`, then `bcdr repair index`"
    ]


def _parent(repo: Repository, request: BackupRequest, paths: list[str]) -> Snapshot | None:
    """The parent a sharded run's shards compared against, else the newest of the job."""
    if request.parent_id is not None:
        try:
            return repo.load_snapshot(request.parent_id)
        except BcdrError:
            pass  # forgotten meanwhile: the files it would have spared are read again
    return find_parent(repo, request.job, paths)


def find_parent(repo: Repository, job: str | None, paths: list[str]) -> Snapshot | None:
    """Newest snapshot of the same job; without a job, of the same paths on this host."""
    host = socket.gethostname()
    candidates = [
        s
        for s in repo.list_snapshots(job)
        if job is not None or (sorted(s.paths) == sorted(paths) and s.hostname == host)
    ]
    return candidates[-1] if candidates else None


def run_backup(
    repo: Repository,
    request: BackupRequest,
    *,
    progress: ProgressFn | None = None,
) -> BackupResult:
    """Back up ``request.paths`` into a new snapshot. A backup that fails once it has begun
    leaves a ``failed`` evidence record (its id on the error) and says what it uploaded that
    the next backup will reuse."""
    sources = resolve_sources(request.paths)
    started = repo.clock.now().isoformat()
    began: list[BlobWriter] = []  # the writer, once the backup holds its lock
    try:
        return _run_backup(repo, request, sources, started, progress, began)
    except Interrupted:
        raise
    except BcdrError as exc:
        if began:
            _kept(exc, began[0])
            exc.evidence = _record_failure(repo, request, exc, started, began[0])
        raise


def _kept(exc: BcdrError, writer: BlobWriter) -> None:
    if not writer.packs:
        return
    kept = (
        f"the {len(writer.packs)} pack(s) ({human_bytes(writer.bytes_committed)}) this run "
        "uploaded are kept: the next backup finds them and sends only the rest"
    )
    exc.hint = f"{exc.hint}; {kept}" if exc.hint else kept


def _record_failure(
    repo: Repository, request: BackupRequest, exc: BcdrError, started: str, writer: BlobWriter
) -> str | None:
    context = request.context or RunContext(request.plan, None, request.job, started)
    facts = BackupFacts(
        error=exc.message,
        transient=isinstance(exc, TransientStorageError),
        kept_packs=len(writer.packs),
        kept_bytes=writer.bytes_committed,
        paths=list(request.paths),
    )
    return record_failure(repo, facts, context)  # None: said by the caller's own error


def _run_backup(
    repo: Repository,
    request: BackupRequest,
    sources: list[bytes],
    started: str,
    progress: ProgressFn | None,
    began: list[BlobWriter],
) -> BackupResult:
    paths = [os.fsdecode(p) for p in sources]
    immutability.require_support(repo.storage)
    with repo.lock(BACKUP) as lock:
        notes = load_for_writing(repo, "backup")
        began.append(repo.writer)
        parent = _parent(repo, request, paths)
        bytes_read = 0
        for attempt in range(1, GUARD_PASSES + 1):
            repo.begin_snapshot()
            archiver = Archiver(
                repo,
                parent_tree=bytes.fromhex(parent.tree) if parent else None,
                excludes=PathMatcher(request.excludes),
                force_read=request.force_read,
                progress=progress,
                prepared=request.prepared,
                one_file_system=request.one_file_system,
            )
            with repo.writing():
                root = archiver.run(sources)
            bytes_read += archiver.stats.bytes_read
            lock.ensure_valid()  # an expired lock may have let a prune sweep what we reused
            # The commit guard: what the snapshot reuses must still be stored, and not in a
            # pack a prune may sweep without waiting for us. If not, store it again.
            gone, lost = repo.lost_references(lock.session)
            if not lost:
                break
            notes.append(
                f"{lost} reused blob(s) were no longer safely stored"
                f"{pack_list(gone)}; pass {attempt + 1} stores them again from the source"
            )
        else:
            raise RepositoryError(
                f"the snapshot would still refer to {lost} blob(s) that are not stored after "
                f"{GUARD_PASSES} passes{pack_list(gone)}; no snapshot was written",
                where=repo.storage.url,
                hint="something is deleting packs while backups run: look for a prune or a "
                "lifecycle rule that does not honour bcdr's locks, then run "
                f"`bcdr repair index --repo {repo.storage.url}` and back up again",
            )
        repo.unlist_lost_own_packs()
        stats = archiver.finish_stats()
        stats.bytes_read = bytes_read + request.shard_bytes[0]
        stats.bytes_added += request.shard_bytes[1]
        snap = Snapshot(
            **repo.new_snapshot_fields(),
            hostname=socket.gethostname(),
            username=getpass.getuser(),
            paths=tuple(paths),
            tree=root.hex(),
            job=request.job,
            parent=parent.id if parent else None,
            plan=request.plan,
            excludes=request.excludes,
            tags=request.tags,
            stats=stats.to_dict(),
            skipped=tuple(archiver.problems.skipped),
            placement=request.placement,
            shard_run=request.shard_run,
        )
        lock.ensure_valid()
        # The commit: an interrupt from here on is held until the snapshot has its record.
        with held_interrupts() as interrupts:
            snap = repo.save_snapshot(snap)
            result = _commit(repo, request, snap, stats, archiver, notes, started)
        if not interrupts:  # upkeep, after the commit: what is due gets more days
            note = immutability.after_writing(repo).note()
            if note:
                result.notes.append(note)
    if interrupts:
        raise Interrupted(
            f"interrupted after snapshot {snap.short_id} was committed"
            + (" and recorded as evidence" if result.evidence else "")
            + f" ({snap.id})",
            hint="the snapshot is complete and restores; nothing else was left half-done",
        )
    return result


def _commit(
    repo: Repository,
    request: BackupRequest,
    snap: Snapshot,
    stats: BackupStats,
    archiver: Archiver,
    notes: list[str],
    started: str,
) -> BackupResult:
    result = BackupResult(
        snap,
        stats,
        archiver.problems.skipped,
        archiver.problems.warnings,
        uploaded=transfer(repo, "up"),
        notes=notes,
    )
    # written last (DESIGN: packs, index, snapshot, then evidence): a crash before this leaves
    # a good snapshot without its record, never a record of a snapshot that does not exist
    context = request.context or RunContext(request.plan, None, request.job, started)
    try:
        result.evidence = _record(repo, result, request, context)
    except BcdrError as exc:  # the snapshot stands; the run says it is not recorded
        result.evidence_error = str(exc)
    return result


def _record(
    repo: Repository, result: BackupResult, request: BackupRequest, context: RunContext
) -> str:
    snap, stats = result.snapshot, result.stats
    return write_record(
        repo,
        BackupFacts(
            snapshot=snap.id,
            snapshot_time=parse_aware(snap.time),
            paths=list(snap.paths),
            parent=snap.parent,
            files=stats.files_new + stats.files_changed + stats.files_unchanged,
            bytes_read=stats.bytes_read,
            bytes_added=stats.bytes_added,
            skipped=len(result.skipped),
            healed=list(result.notes),
            placement=Placement.of(request.placement),
            encryption=repo.config.encryption,
            shards=request.shards,
            shard_run=request.shard_run,
            slurm_jobs=list(request.slurm_jobs),
        ),
        context=context,
        result="partial" if result.partial else "ok",
    )


def backup(
    where: StorageSpec | str,
    request: BackupRequest,
    *,
    progress: ProgressFn | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> BackupResult:
    resolve_sources(request.paths)  # fail on a missing path before touching the repository
    repo = open_repo(where, clock=clock, env=env)
    try:
        return run_backup(repo, request, progress=progress)
    finally:
        repo.close()
