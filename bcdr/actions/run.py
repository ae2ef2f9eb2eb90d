"""``bcdr run PLAN``: run a plan's jobs now, one after another; a failed job does not stop
the others. Backups (then their retention), checks and prunes run here; disk snapshot jobs and
drills say they are not available yet."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bcdr.actions.backup import BackupRequest, BackupResult, resolve_sources, run_backup
from bcdr.actions.check import check
from bcdr.actions.common import (
    PASSWORD_ENV,
    PASSWORD_FILE_ENV,
    plan_storage_spec,
    read_password,
)
from bcdr.actions.forget import ForgetResult, apply_retention
from bcdr.actions.placement import establish_placement
from bcdr.actions.prune import prune
from bcdr.clock import Clock
from bcdr.errors import (
    BcdrError,
    PasswordRequired,
    RepositoryNotFound,
    TransientStorageError,
    UsageError,
)
from bcdr.geo.verify import PlacementRecord
from bcdr.plan.model import BackupJob, CheckJob, Plan, PruneJob, Repository
from bcdr.plan.schema import did_you_mean
from bcdr.repository.check import CheckReport
from bcdr.repository.prune import PruneReport
from bcdr.repository.repo import Repository as Repo
from bcdr.storage.url import open_storage
from bcdr.units import human_bytes

OK, PARTIAL, FAILED, DRY_RUN = "ok", "partial", "failed", "dry-run"
NOT_AVAILABLE, SKIPPED = "not available", "skipped"


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
    transient: bool = False  # failed in a way a retry may fix (unreachable, throttled)
    check: CheckReport | None = None
    forget: ForgetResult | None = None  # the job's retention, applied after its backup
    prune: PruneReport | None = None

    def to_dict(self) -> dict[str, object]:
        objects = ("backup", "placement", "check", "forget", "prune")
        out = {k: v for k, v in vars(self).items() if k not in objects}
        out["check"] = self.check.to_dict() if self.check else None
        out["forget"] = self.forget.to_dict() if self.forget else None
        out["prune"] = self.prune.to_dict() if self.prune else None
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
    execute: Callable[[Plan, str], JobResult] | None = None,
) -> list[JobResult]:
    """Run the named jobs (all when none are named). ``execute`` runs one job (the scheduler
    passes one that takes the job's lock, retries and records it); default: ``run_job``."""
    results = []
    for name in select_jobs(plan, names):
        if on_start:
            on_start(name)
        if execute is not None and not dry_run:
            result = execute(plan, name)
        else:
            result = run_job(plan, name, dry_run=dry_run, clock=clock)
        if result.status == NOT_AVAILABLE and not names:
            result.status = SKIPPED  # part of the whole plan: reported, not a failure
        results.append(result)
    return results


def run_job(
    plan: Plan, name: str, *, dry_run: bool = False, clock: Clock | None = None
) -> JobResult:
    """Run one job of the plan now. Never raises a BcdrError: the result says what happened
    (``transient`` when a retry may succeed)."""
    started = time.monotonic()
    kind, _ = plan.job(name)
    if kind == "backup":
        result = _backup(plan, name, plan.backups[name], dry_run, clock)
    elif kind == "check":
        result = _check(plan, name, plan.checks[name], dry_run)
    elif kind == "prune":
        result = _prune(plan, name, plan.prunes[name], dry_run, clock)
    else:
        what = "disk snapshot" if kind == "snapshot" else kind
        result = JobResult(
            name, kind, NOT_AVAILABLE, f"{what} jobs are not available in this version of bcdr yet"
        )
    result.duration_s = time.monotonic() - started
    return result


def _failed(result: JobResult, exc: BcdrError) -> JobResult:
    result.status = FAILED
    result.message = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
    result.transient = isinstance(exc, TransientStorageError)
    return result


def _check(plan: Plan, name: str, job: CheckJob, dry_run: bool) -> JobResult:
    declared = plan.repositories[job.repository]
    result = JobResult(name, "check", OK)
    if dry_run:
        result.status = DRY_RUN
        result.message = f"would check repository {job.repository!r}"
        return result
    try:
        env = password_env(declared)
        subset = job.read_data.value
        report = check(
            plan_storage_spec(declared), subset_percent=subset or None, env={**os.environ, **env}
        )
    except BcdrError as exc:
        return _failed(result, exc)
    result.check = report
    if report.errors:
        result.status = FAILED
        result.message = f"{len(report.errors)} problem(s): {report.errors[0]}"
    else:
        result.message = (
            f"no errors found: {report.snapshots} snapshots, {report.packs} packs, "
            f"{report.read_fraction:.0%} of the data read"
        )
    return result


def _prune(plan: Plan, name: str, job: PruneJob, dry_run: bool, clock: Clock | None) -> JobResult:
    declared = plan.repositories[job.repository]
    result = JobResult(name, "prune", OK)
    if dry_run:
        result.status = DRY_RUN
        result.message = (
            f"would prune repository {job.repository!r} (max unused {job.max_unused}, "
            f"grace {job.grace})"
        )
        return result
    try:
        env = password_env(declared)
        report = prune(
            plan_storage_spec(declared),
            max_unused=job.max_unused.value,
            grace=job.grace.delta,
            plan=plan.name,
            clock=clock,
            env={**os.environ, **env},
        )
    except RepositoryNotFound:
        result.message = f"repository {job.repository!r} does not exist yet: nothing to prune"
        return result
    except BcdrError as exc:
        return _failed(result, exc)
    result.prune = report
    result.message = (
        f"{report.packs_deleted} pack(s) deleted ({human_bytes(report.bytes_deleted)}), "
        f"{report.packs_unused + report.packs_unindexed + report.packs_repacked} marked"
        + (f"; {report.pending} mark(s) pending" if report.pending else "")
    )
    result.notes.extend(f"postponed: {p}" for p in report.postponed)
    result.notes.extend(report.problems)
    return result


def password_env(repo: Repository) -> dict[str, str]:
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


def _retention(
    result: JobResult, plan: Plan, name: str, job: BackupJob, repo: Repo
) -> BcdrError | None:
    """Apply the job's retention after its backup; the error, if it failed."""
    if job.retention is None:
        return None
    try:
        forgot = apply_retention(
            repo, job.retention.policy(), plan.timezone.zone, job=name, plan=plan.name
        )
    except BcdrError as exc:
        exc.message = f"retention failed: {exc.message}"
        return exc
    result.forget = forgot
    note = (
        f"retention ({forgot.policy.describe()}): kept {forgot.kept}, forgot {len(forgot.removed)}"
    )
    if forgot.removed:
        note += "; a prune job or `bcdr prune` frees their data"
    result.notes.append(note)
    return None


def _backup(plan: Plan, name: str, job: BackupJob, dry_run: bool, clock: Clock | None) -> JobResult:
    declared = plan.repositories[job.repository]
    result = JobResult(name, "backup", OK)
    try:
        resolve_sources(job.paths)
        env = password_env(declared)
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
            result.backup = backup
            retention_error = _retention(result, plan, name, job, repo)
        finally:
            repo.close()
    except BcdrError as exc:
        return _failed(result, exc)
    result.status = PARTIAL if backup.partial else OK
    result.message = f"snapshot {backup.snapshot.short_id} saved"
    if retention_error is not None:
        _failed(result, retention_error)
        result.message = f"snapshot {backup.snapshot.short_id} saved, but {result.message}"
    return result
