"""``bcdr run PLAN``: run a plan's jobs now, one after another; a failed job does not stop
the others. Backups run here; disk snapshot jobs and drills say they are not available yet."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bcdr.actions.backup import BackupRequest, BackupResult, resolve_sources, run_backup
from bcdr.actions.common import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    plan_storage_spec,
    read_password,
)
from bcdr.clock import Clock
from bcdr.errors import BcdrError, PasswordRequired, RepositoryNotFound, UsageError
from bcdr.geo.verify import PlacementRecord, establish_placement
from bcdr.plan.model import BackupJob, Plan, Repository
from bcdr.plan.schema import did_you_mean
from bcdr.repository.repo import Repository as Repo
from bcdr.storage.url import open_storage

OK, PARTIAL, FAILED, DRY_RUN, NOT_AVAILABLE = "ok", "partial", "failed", "dry-run", "not available"


@dataclass
class JobResult:
    name: str
    kind: str
    status: str
    message: str = ""
    backup: BackupResult | None = None
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    placement: PlacementRecord | None = None  # where the data went

    def to_dict(self) -> dict[str, object]:
        out = {k: v for k, v in vars(self).items() if k not in ("backup", "placement")}
        out["backup"] = self.backup.to_dict() if self.backup else None
        out["placement"] = self.placement.to_dict() if self.placement else None
        return out


def select_jobs(plan: Plan, names: list[str]) -> list[str]:
    known = plan.job_names()
    for n in names:
        if n not in known:
            raise UsageError(
                f"the plan has no job named {n!r}",
                where=str(plan.file),
                hint=did_you_mean(n, known) or f"jobs: {', '.join(known)}",
            )
    return [n for n in known if not names or n in names]


def run_plan(
    plan: Plan,
    names: list[str],
    *,
    dry_run: bool = False,
    clock: Clock | None = None,
    on_start: Callable[[str], None] | None = None,
) -> list[JobResult]:
    results = []
    for name in select_jobs(plan, names):
        if on_start:
            on_start(name)
        started = time.monotonic()
        if name in plan.backups:
            result = _backup(plan, name, plan.backups[name], dry_run, clock)
        else:
            kind = "disk snapshot" if name in plan.snapshots else "drill"
            result = JobResult(
                name,
                kind,
                NOT_AVAILABLE,
                f"{kind} jobs are not available in this version of bcdr yet",
            )
            if not names:  # part of the whole plan: reported, not a failure
                result.status = "skipped"
        result.duration_s = time.monotonic() - started
        results.append(result)
    return results


def _password_env(repo: Repository) -> dict[str, str]:
    enc = repo.encryption
    if enc is None:
        return {}
    if enc.password_env is not None:
        value = os.environ.get(enc.password_env.name)
        if not value:
            raise PasswordRequired(
                f"environment variable {enc.password_env.name} is not set or empty",
                hint="the plan's encryption.password_env names it; set it to the password",
            )
        return {PASSWORD_ENV: value}
    return {PASSWORD_FILE_ENV: str(enc.password_file)}


def _notes(plan: Plan, job: BackupJob) -> list[str]:
    notes = []
    if job.retention is not None:
        notes.append("retention is not applied yet: every snapshot is kept")
    if plan.hooks is not None:
        notes.append("hooks are not run yet")
    return notes


def _backup(plan: Plan, name: str, job: BackupJob, dry_run: bool, clock: Clock | None) -> JobResult:
    declared = plan.repositories[job.repository]
    result = JobResult(name, "backup", OK, notes=_notes(plan, job))
    try:
        resolve_sources(job.paths)
        env = _password_env(declared)
        placement = establish_placement(plan, job.repository)
        result.placement = placement
        if dry_run:
            result.status = DRY_RUN
            result.message = (
                f"would back up {', '.join(job.paths)} to repository {job.repository!r}"
            )
            return result
        storage = open_storage(plan_storage_spec(declared))
        try:
            repo = Repo.open(storage, password=lambda: read_password(env), clock=clock)
        except RepositoryNotFound:
            repo = Repo.init(storage, password=read_password(env) if env else None, clock=clock)
            result.notes.insert(0, f"created repository {job.repository!r} at {storage.url}")
        try:
            request = BackupRequest(
                paths=job.paths,
                job=name,
                excludes=job.exclude,
                plan=plan.name,
                placement=placement.to_dict(),
            )
            backup = run_backup(repo, request)
        finally:
            repo.close()
    except BcdrError as exc:
        result.status = FAILED
        result.message = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
        return result
    result.status = PARTIAL if backup.partial else OK
    result.backup = backup
    result.message = f"snapshot {backup.snapshot.short_id} saved"
    return result
