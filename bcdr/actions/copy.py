"""``bcdr copy``: recovery points of one repository copied into another (docs/copies.md).

The destination is written as a backup writes it, under a ``backup`` lock with the same
commit guard (a prune of the destination at the same time loses nothing), packs and index
first, then the copy map, then each snapshot, then one ``copy`` evidence record for the run.
The source is read under a ``read`` lock, which a prune's sweep waits for. A copy killed at
any point leaves the destination consistent: a rerun adopts the packs it uploaded, finds the
snapshots already committed (by their recovery point) and copies the rest.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bcdr.actions.backup import GUARD_PASSES, load_for_writing, pack_list
from bcdr.actions.common import open_repo, record_failure, transfer
from bcdr.archive.copy import Copier, CopyMap, CopyStats, ProgressFn, same_chunker_note
from bcdr.clock import Clock, parse_aware
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import CopiedPoint, CopyFacts, Placement
from bcdr.errors import (
    BcdrError,
    Interrupted,
    PasswordRequired,
    RepositoryError,
    TransientStorageError,
    UsageError,
    WrongPassword,
)
from bcdr.interrupts import held_interrupts
from bcdr.password import PASSWORD_ENV, PASSWORD_FILE_ENV
from bcdr.repository import immutability
from bcdr.repository.locks import BACKUP, READ, RepoLock, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.storage.url import StorageSpec
from bcdr.storage.wrap import Transfer

#: The source repository's password, for ``bcdr copy`` (the destination's is BCDR_PASSWORD).
FROM_PASSWORD_ENV = "BCDR_FROM_PASSWORD"
FROM_PASSWORD_FILE_ENV = "BCDR_FROM_PASSWORD_FILE"


@dataclass(frozen=True)
class CopyRequest:
    snapshots: tuple[str, ...] = ()  # ids, prefixes or "latest"; none: every one (of job)
    job: str | None = None
    plan: str | None = None
    placement: dict[str, Any] | None = None  # the destination's, from geo.verify
    source_placement: dict[str, Any] | None = None
    context: RunContext | None = None
    # only the job's snapshots newer than its newest recovery point in the destination (a
    # plan's copy_to: the new one, and those a failed copy missed; never one retention
    # there removed)
    catch_up: bool = False


@dataclass
class CopiedSnapshot:
    source: Snapshot
    copy: Snapshot | None  # None: the destination held it already (``existing`` names it)
    existing: str | None = None
    stats: CopyStats | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source.id,
            "snapshot": self.copy.id if self.copy is not None else self.existing,
            "recovery_point": self.source.recovery_point,
            "time": self.source.time,
            "job": self.source.job,
            "copied": self.copy is not None,
            "stats": self.stats.to_dict() if self.stats is not None else None,
        }


@dataclass
class CopyResult:
    snapshots: list[CopiedSnapshot]
    stats: CopyStats
    uploaded: Transfer | None = None
    downloaded: Transfer | None = None
    notes: list[str] = field(default_factory=list)
    evidence: str | None = None
    evidence_error: str | None = None

    @property
    def copied(self) -> list[CopiedSnapshot]:
        return [s for s in self.snapshots if s.copy is not None]

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshots": [s.to_dict() for s in self.snapshots],
            "copied": len(self.copied),
            "already_present": len(self.snapshots) - len(self.copied),
            "stats": self.stats.to_dict(),
            "uploaded": self.uploaded.to_dict() if self.uploaded else None,
            "downloaded": self.downloaded.to_dict() if self.downloaded else None,
            "notes": self.notes,
            "evidence": self.evidence,
            "evidence_error": self.evidence_error,
        }


def source_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment the source repository is opened with: ``env`` with the source's
    password settings (BCDR_FROM_PASSWORD, BCDR_FROM_PASSWORD_FILE) in place of the
    destination's, never falling back to them."""
    out = {k: v for k, v in env.items() if k not in (PASSWORD_ENV, PASSWORD_FILE_ENV)}
    if env.get(FROM_PASSWORD_ENV):
        out[PASSWORD_ENV] = env[FROM_PASSWORD_ENV]
    if env.get(FROM_PASSWORD_FILE_ENV):
        out[PASSWORD_FILE_ENV] = env[FROM_PASSWORD_FILE_ENV]
    return out


def select(src: Repository, request: CopyRequest) -> list[Snapshot]:
    """The source snapshots the request names, oldest first (every one of the job, or of
    the repository, when it names none)."""
    if not request.snapshots:
        return src.list_snapshots(request.job)
    chosen = {s.id: s for s in (src.resolve_snapshot(r, request.job) for r in request.snapshots)}
    return sorted(chosen.values(), key=lambda s: (s.datetime, s.id))


def run_copy(
    src: Repository,
    dst: Repository,
    request: CopyRequest,
    *,
    progress: ProgressFn | None = None,
) -> CopyResult:
    """Copy the recovery points ``request`` names from ``src`` into ``dst``. A run that fails
    once it has begun writing leaves a ``failed`` evidence record in ``dst``."""
    if src.config.id == dst.config.id:
        raise UsageError(
            f"the source and the destination are the same repository (id {src.config.id[:8]})",
            where=dst.storage.url,
            hint="copy into another repository: a second region, account or container",
        )
    started = dst.clock.now().isoformat()
    began: list[bool] = []
    try:
        return _run_copy(src, dst, request, progress, started, began)
    except Interrupted:
        raise
    except BcdrError as exc:
        if began:
            exc.evidence = _record_failure(src, dst, request, exc, started)
        raise


def _run_copy(
    src: Repository,
    dst: Repository,
    request: CopyRequest,
    progress: ProgressFn | None,
    started: str,
    began: list[bool],
) -> CopyResult:
    immutability.require_support(dst.storage)
    with src.lock(READ, wait=read_wait()), dst.lock(BACKUP) as lock:
        wanted = select(src, request)
        if not src.index_loaded:
            src.load_index()
        notes = load_for_writing(dst)
        began.append(True)
        held = dst.list_snapshots()
        present: dict[str, str] = {}  # recovery point (or id) -> a snapshot holding it here
        for snap in held:
            present.setdefault(snap.recovery_point, snap.id)
            present.setdefault(snap.id, snap.id)
        if request.catch_up:
            wanted = _newer_than_held(wanted, held)
        cmap = CopyMap(dst, src.config.id)
        cmap.load()
        total = CopyStats()
        done: list[CopiedSnapshot] = []
        planned = sum(
            int(snap.stats.get("bytes_total", 0))
            for snap in wanted
            if snap.recovery_point not in present
        )
        for snap in wanted:
            existing = present.get(snap.recovery_point)
            if existing is not None:
                done.append(CopiedSnapshot(snap, None, existing))
                continue
            shown = _overall(progress, total, planned)
            copied, one = _copy_one(src, dst, snap, cmap, request, present, lock, shown, notes)
            for key, value in vars(one).items():
                setattr(total, key, getattr(total, key) + value)
            present[copied.recovery_point] = copied.id
            done.append(CopiedSnapshot(snap, copied, stats=one))
        note = same_chunker_note(src, dst)
        if note and total.rechunked_files:
            notes.append(note)
        result = CopyResult(done, total, transfer(dst, "up"), transfer(src, "down"), notes=notes)
        with held_interrupts() as interrupts:
            try:
                result.evidence = _record(src, dst, request, result, started)
            except BcdrError as exc:  # the snapshots stand; the run says it is not recorded
                result.evidence_error = str(exc)
        if not interrupts:  # upkeep, after the commit: what is due gets more days
            extended = immutability.after_writing(dst).note()
            if extended:
                result.notes.append(extended)
    if interrupts:
        raise Interrupted(
            f"interrupted after {len(result.copied)} snapshot(s) were copied",
            hint="every snapshot committed is complete; run the copy again for the rest",
        )
    return result


def _overall(progress: ProgressFn | None, before: CopyStats, planned: int) -> ProgressFn | None:
    """Progress of one snapshot's copy shown as part of the whole run: the counts of the
    snapshots copied before it added, against every snapshot's bytes."""
    if progress is None:
        return None
    base = CopyStats(**vars(before))

    def shown(stats: CopyStats, path: str) -> None:
        merged = CopyStats(**{k: getattr(base, k) + v for k, v in vars(stats).items()})
        merged.bytes_planned = planned
        progress(merged, path)

    return shown


def _copy_one(
    src: Repository,
    dst: Repository,
    snap: Snapshot,
    cmap: CopyMap,
    request: CopyRequest,
    present: dict[str, str],
    lock: RepoLock,
    progress: ProgressFn | None,
    notes: list[str],
) -> tuple[Snapshot, CopyStats]:
    """Copy one snapshot's trees and blobs, then commit its snapshot in ``dst`` (what the
    commit guard found is added to ``notes``)."""
    for attempt in range(1, GUARD_PASSES + 1):
        dst.begin_snapshot()
        copier = Copier(src, dst, cmap, progress=progress)
        with dst.writing():
            root = copier.copy_tree(bytes.fromhex(snap.tree))
        lock.ensure_valid()
        gone, lost = dst.lost_references(lock.session)
        if not lost:
            break
        notes.append(
            f"{lost} reused blob(s) were no longer safely stored{pack_list(gone)}; "
            f"pass {attempt + 1} copies them again"
        )
    else:
        raise RepositoryError(
            f"the copy of snapshot {snap.short_id} would still refer to {lost} blob(s) that "
            f"are not stored after {GUARD_PASSES} passes{pack_list(gone)}; it was not "
            "committed",
            where=dst.storage.url,
            hint="something is deleting packs while copies run: look for a prune or a "
            "lifecycle rule that does not honour bcdr's locks",
        )
    dst.unlist_lost_own_packs()
    cmap.save()  # after the blobs it names are indexed
    parent = present.get(_source_parent_point(src, snap)) if snap.parent else None
    copy = Snapshot(
        time=snap.time,
        hostname=snap.hostname,
        username=snap.username,
        paths=snap.paths,
        tree=root.hex(),
        job=snap.job,
        parent=parent,
        plan=snap.plan,
        excludes=snap.excludes,
        tags=snap.tags,
        stats=snap.stats,
        skipped=snap.skipped,
        program_version=dst.new_snapshot_fields()["program_version"],
        placement=request.placement,
        copy_of={
            "snapshot": snap.id,
            "repository": src.config.id,
            "copied": dst.clock.now().isoformat(),
            "by": f"{getpass.getuser()}@{socket.gethostname()}",
        },
        original=snap.recovery_point,
    )
    lock.ensure_valid()
    with held_interrupts() as interrupts:
        copy = dst.save_snapshot(copy)
    if interrupts:
        raise Interrupted(
            f"interrupted after snapshot {snap.short_id} was copied as {copy.short_id}",
            hint="the copy is complete; run the copy again for the rest",
        )
    return copy, copier.stats


def _newer_than_held(wanted: list[Snapshot], held: list[Snapshot]) -> list[Snapshot]:
    """The snapshots of ``wanted`` newer than the newest snapshot of their own job in
    ``held`` (all of a job the destination holds none of)."""
    newest: dict[str | None, datetime] = {}
    for s in held:
        if s.job not in newest or s.datetime > newest[s.job]:
            newest[s.job] = s.datetime
    return [s for s in wanted if s.job not in newest or s.datetime > newest[s.job]]


def _source_parent_point(src: Repository, snap: Snapshot) -> str:
    """The recovery point of ``snap``'s parent in the source ("" when it cannot be read)."""
    try:
        return src.load_snapshot(snap.parent or "").recovery_point
    except BcdrError:
        return ""


def _points(result: CopyResult) -> list[CopiedPoint]:
    return [
        CopiedPoint(
            snapshot=(s.copy.id if s.copy is not None else s.existing) or "",
            source_snapshot=s.source.id,
            recovery_point=s.source.recovery_point,
            snapshot_time=parse_aware(s.source.time),
            job=s.source.job,
            already=s.copy is None,
        )
        for s in result.snapshots
    ]


def _record(
    src: Repository,
    dst: Repository,
    request: CopyRequest,
    result: CopyResult,
    started: str,
) -> str:
    context = request.context or RunContext(request.plan, None, request.job, started)
    stats = result.stats
    return write_record(
        dst,
        CopyFacts(
            source_repository=src.config.id,
            source_placement=Placement.of(request.source_placement),
            placement=Placement.of(request.placement),
            points=_points(result),
            blobs_copied=stats.blobs_copied,
            blobs_skipped=stats.blobs_skipped,
            bytes_copied=stats.bytes_copied,
            bytes_skipped=stats.bytes_skipped,
            bytes_uploaded=result.uploaded.bytes if result.uploaded else None,
            rechunked=stats.rechunked_files > 0,
            healed=list(result.notes),
        ),
        context=context,
        result="ok",
    )


def _record_failure(
    src: Repository, dst: Repository, request: CopyRequest, exc: BcdrError, started: str
) -> str | None:
    context = request.context or RunContext(request.plan, None, request.job, started)
    facts = CopyFacts(
        error=exc.message,
        transient=isinstance(exc, TransientStorageError),
        source_repository=src.config.id,
    )
    return record_failure(dst, facts, context)


def copy(
    source: StorageSpec | str,
    dest: StorageSpec | str,
    request: CopyRequest,
    *,
    progress: ProgressFn | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
    source_env: Mapping[str, str] | None = None,
) -> CopyResult:
    """Open both repositories (the source's password from ``source_env``) and copy."""
    try:
        src = open_repo(source, clock=clock, env=source_env)
    except (PasswordRequired, WrongPassword) as exc:
        exc.message = f"source repository: {exc.message}"
        exc.args = (exc.message,)
        exc.hint = (
            f"the source's password comes from {FROM_PASSWORD_ENV}, or "
            f"{FROM_PASSWORD_FILE_ENV} naming a file that holds it (BCDR_PASSWORD is the "
            "destination's)"
        )
        raise
    try:
        dst = open_repo(dest, clock=clock, env=env)
        try:
            return run_copy(src, dst, request, progress=progress)
        finally:
            dst.close()
    finally:
        src.close()
