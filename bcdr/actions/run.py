"""``bcdr run PLAN``: run a plan's jobs now, one after another; a failed job does not stop
the others. Backups (then their retention), disk snapshots, drills, checks and prunes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bcdr import retrybudget
from bcdr.actions import shard, slurm
from bcdr.actions.backup import BackupRequest, BackupResult, resolve_sources, run_backup
from bcdr.actions.check import check
from bcdr.actions.common import (
    open_or_init,
    open_plan_repo,
    password_env,
    plan_storage_spec,
    run_context,
)
from bcdr.actions.copy import CopyRequest, CopyResult, run_copy
from bcdr.actions.disks import run_disk_job
from bcdr.actions.drill import DrillReport, drill_measures, run_drill
from bcdr.actions.forget import ForgetResult, apply_retention
from bcdr.actions.placement import establish_placement
from bcdr.actions.prune import prune
from bcdr.clock import Clock, SystemClock, parse_aware
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import FACTS
from bcdr.disks.job import PROTECTED, DiskJobReport
from bcdr.errors import (
    BcdrError,
    Interrupted,
    MissingPermission,
    RepositoryNotFound,
    TransientStorageError,
    UsageError,
)
from bcdr.geo.verify import PlacementRecord
from bcdr.plan.kinds import BY_NAME, kind_of
from bcdr.plan.model import BackupJob, CheckJob, CopyJob, CopyTarget, Plan, PruneJob, Retention
from bcdr.plan.schema import did_you_mean
from bcdr.repository.check import CheckReport
from bcdr.repository.prune import PruneReport
from bcdr.repository.repo import Repository as Repo
from bcdr.scheduler.history import FAILED as FAILED
from bcdr.scheduler.history import OK as OK
from bcdr.scheduler.history import PARTIAL as PARTIAL
from bcdr.units import human_bytes

DRY_RUN = "dry-run"
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
    retention_waits: bool = False  # not applied: the credential may not delete (partial)
    prune: PruneReport | None = None
    disks: DiskJobReport | None = None  # a disk snapshot job's per-disk outcome
    drill: DrillReport | None = None
    evidence: str | None = None  # the evidence record the run wrote
    # destination (and source job, for a copies job naming several) -> its copy
    copies: dict[str, CopyResult] = field(default_factory=dict)
    copy_points: dict[str, str] = field(default_factory=dict)  # destination -> newest there

    @property
    def snapshot_id(self) -> str | None:
        return self.backup.snapshot.id if self.backup else None

    repository_figures: dict[str, float] = field(default_factory=dict)  # after a backup

    @property
    def recovery_point(self) -> str | None:
        """The time of the recovery point this run made: a backup's snapshot, or a disk job's
        snapshots when every disk got one."""
        if self.backup is not None:
            return self.backup.snapshot.time
        if self.disks is not None and self.disks.status == "ok":
            return self.disks.started
        return None

    @property
    def measures(self) -> dict[str, float]:
        """Figures the run history keeps for metrics: a drill's RTO and RPO against their
        targets, the repository's size after a backup."""
        out = dict(self.repository_figures)
        if self.drill is not None:
            out.update(drill_measures(self.drill))
        return out

    @property
    def bytes_added(self) -> int | None:
        return self.backup.stats.bytes_added if self.backup else None

    @property
    def copied_points(self) -> dict[str, str]:
        """Destination repository -> the newest recovery point it holds after this run."""
        return dict(self.copy_points)

    def to_dict(self) -> dict[str, object]:
        objects = ("backup", "placement", "check", "forget", "prune", "disks", "drill", "copies")
        out = {k: v for k, v in vars(self).items() if k not in objects}
        out["check"] = self.check.to_dict() if self.check else None
        out["forget"] = self.forget.to_dict() if self.forget else None
        out["prune"] = self.prune.to_dict() if self.prune else None
        out["backup"] = self.backup.to_dict() if self.backup else None
        out["placement"] = self.placement.to_dict() if self.placement else None
        out["disks"] = self.disks.to_dict() if self.disks else None
        out["drill"] = self.drill.to_dict() if self.drill else None
        out["copies"] = {k: v.to_dict() for k, v in self.copies.items()}
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
    on_done: Callable[[JobResult], None] | None = None,
) -> list[JobResult]:
    """Run the named jobs (all when none are named). ``execute`` runs one job (the scheduler
    passes one that takes the job's lock, retries and records it); default: ``run_job``.
    ``on_done`` gets each job's result as soon as it ends."""
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
        if on_done:
            on_done(result)
    return results


def run_job(
    plan: Plan, name: str, *, dry_run: bool = False, clock: Clock | None = None
) -> JobResult:
    """Run one job of the plan now. Never raises a BcdrError: the result says what happened
    (``transient`` when a retry may succeed)."""
    started = time.monotonic()
    retrybudget.set_from_plan(plan.retry_budget.seconds if plan.retry_budget else None)
    context = run_context(plan, name, (clock or SystemClock()).now().isoformat())
    kind, _ = plan.job(name)
    runner = RUNNERS.get(kind)
    if runner is None:
        result = JobResult(
            name, kind, NOT_AVAILABLE, f"{kind} jobs are not available in this version of bcdr yet"
        )
    else:
        result = runner(plan, name, dry_run, clock, context)
    result.duration_s = time.monotonic() - started
    if result.status == FAILED and result.evidence is None and not dry_run:
        _record_failure(plan, name, kind, result, context, clock)
    return result


def evidence_repository_of(plan: Plan, name: str) -> str:
    """The repository that keeps a job's evidence."""
    k, job = kind_of(plan, name)
    repo = k.repository(plan, job)
    assert repo is not None  # the plan check requires a repository for every kind that runs
    return repo


def _record_failure(
    plan: Plan, name: str, kind: str, result: JobResult, context: RunContext, clock: Clock | None
) -> None:
    """A run that failed before writing its own record still leaves one, in its repository if
    that exists (a failure never creates one) and, for a backup, only once the repository's
    placement was verified: a run refused by residency writes nothing there."""
    repo_name = evidence_repository_of(plan, name)
    if kind == "backup" and result.placement is None:
        try:
            establish_placement(plan, repo_name)
        except BcdrError:
            return  # residency not verified (or refused): write nothing there
    try:
        repo = open_plan_repo(plan, repo_name, clock)
    except RepositoryNotFound:
        return
    except BcdrError as exc:
        result.notes.append(f"the failure could not be recorded as evidence: {exc}")
        return
    try:
        facts = FACTS[BY_NAME[kind].evidence[0]]
        result.evidence = write_record(
            repo,
            facts(error=result.message, transient=result.transient),
            context=context,
            result="failed",
        )
    except BcdrError as exc:
        result.notes.append(f"the failure could not be recorded as evidence: {exc}")
    finally:
        repo.close()


def _disk_snapshots(plan: Plan, name: str, dry_run: bool, clock: Clock | None) -> JobResult:
    job = plan.snapshots[name]
    result = JobResult(name, "snapshot", OK)
    if dry_run:
        result.status = DRY_RUN
        how = (
            "application-consistent restore points of"
            if job.consistency == "application"
            else "incremental snapshots of"
        )
        result.message = f"would take {how} {len(job.disks)} disk(s) in {job.region}" + (
            f", copied to {', '.join(job.copy_to)}" if job.copy_to else ""
        )
        return result
    try:
        run = run_disk_job(plan, name, clock)
    except BcdrError as exc:
        return _failed(result, exc)
    report = run.report
    result.disks, result.evidence = report, run.evidence
    result.notes.extend(run.notes)
    if run.evidence:
        result.notes.append(f"evidence record {run.evidence[:12]} written")
    protected = [d.name for d in report.disks if d.status == PROTECTED]
    result.message = f"{len(protected)} of {len(report.disks)} disk(s) protected" + (
        f" ({', '.join(protected)})" if protected and len(protected) < len(report.disks) else ""
    )
    for d in report.disks:
        line = f"{d.name}: {d.status}"
        if d.recovery_point:
            line += f", {d.kind} {d.recovery_point.rsplit('/', 1)[-1]}"
        for c in d.copies:
            line += f"; copy to {c.region} {c.state}" + (f" ({c.error})" if c.error else "")
        if d.removed:
            line += f"; retention removed {len(d.removed)}"
        if d.error:
            line += f" — {d.error}"
        result.notes.append(line)
        result.notes.extend(f"{d.name}: {n}" for n in d.notes)
    status = report.status
    result.status = {"ok": OK, "partial": PARTIAL}.get(status, FAILED)
    failed = [d for d in report.disks if d.status != PROTECTED]
    result.transient = bool(failed) and all(d.transient for d in failed)
    return result


def drill_job(
    plan: Plan,
    name: str,
    *,
    dry_run: bool = False,
    clock: Clock | None = None,
    snapshot: str | None = None,
    seed: int | None = None,
) -> JobResult:
    """A drill as a job: ``ok`` when it passed, ``failed`` when a target was missed, a file did
    not verify, or it could not run."""
    drill = plan.drills[name]
    result = JobResult(name, "drill", OK)
    what = f"backup job {drill.backup!r}" if drill.backup else f"disk job {drill.snapshot!r}"
    if dry_run:
        result.status = DRY_RUN
        result.message = f"would restore {drill.sample} of {what} and verify it (rto {drill.rto})"
        return result
    try:
        report = run_drill(plan, name, snapshot=snapshot, seed=seed, clock=clock)
    except BcdrError as exc:
        return _failed(result, exc)
    result.drill, result.evidence = report, report.evidence
    if report.passed:
        rto = f"RTO {report.rto_s:.1f}s of {drill.rto}" if report.rto_s is not None else ""
        result.message = f"passed: {report.files_verified} verified, {rto}"
    else:
        result.status = FAILED
        result.message = "; ".join(report.reasons)
    for d in report.drift:
        result.notes.append(f"drift: {d['path']}: {d['finding']}")
    return result


def _failed(result: JobResult, exc: BcdrError) -> JobResult:
    result.status = FAILED
    result.message = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
    result.transient = isinstance(exc, TransientStorageError)
    return result


def _check(plan: Plan, name: str, job: CheckJob, dry_run: bool, context: RunContext) -> JobResult:
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
            plan_storage_spec(declared),
            subset_percent=subset or None,
            env={**os.environ, **env},
            context=context,
        )
    except BcdrError as exc:
        return _failed(result, exc)
    result.check, result.evidence = report, report.evidence
    if report.errors:
        result.status = FAILED
        result.message = f"{len(report.errors)} problem(s): {report.errors[0]}"
    else:
        result.message = (
            f"no errors found: {report.snapshots} snapshots, {report.packs} packs, "
            f"{report.read_fraction:.0%} of the data read"
        )
    return result


def _prune(
    plan: Plan,
    name: str,
    job: PruneJob,
    dry_run: bool,
    clock: Clock | None,
    context: RunContext,
) -> JobResult:
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
            context=context,
            clock=clock,
            env={**os.environ, **env},
        )
    except RepositoryNotFound:
        result.message = f"repository {job.repository!r} does not exist yet: nothing to prune"
        return result
    except BcdrError as exc:
        return _failed(result, exc)
    result.prune, result.evidence = report, report.evidence
    result.message = (
        f"{report.packs_deleted} pack(s) deleted ({human_bytes(report.bytes_deleted)}), "
        f"{report.packs_unused + report.packs_unindexed + report.packs_repacked} marked"
        + (f"; {report.pending} mark(s) pending" if report.pending else "")
    )
    result.notes.extend(f"postponed: {p}" for p in report.postponed)
    result.notes.extend(report.problems)
    return result


def _retention(
    result: JobResult, plan: Plan, name: str, job: BackupJob, repo: Repo, context: RunContext
) -> BcdrError | None:
    """Apply the job's retention after its backup; the error, if it failed."""
    if job.retention is None:
        return None
    try:
        forgot = apply_retention(
            repo,
            job.retention.policy(),
            plan.timezone.zone,
            job=name,
            plan=plan.name,
            context=context,
        )
    except MissingPermission:
        # an append-only host (docs/immutability.md): the snapshot is saved; the retention
        # is for a host that may delete
        result.retention_waits = True
        result.notes.append(
            "retention not applied: this credential may not delete (append-only); apply it "
            "where one may: `bcdr forget` with the job's --keep-* options, then prune"
        )
        return None
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


def _copies(
    result: JobResult,
    plan: Plan,
    name: str,
    job: BackupJob,
    repo: Repo,
    clock: Clock | None,
    context: RunContext,
) -> BcdrError | None:
    """Copy the job's new snapshot, and those an earlier failed copy missed, to each of its
    ``copy_to`` repositories (residency checked first, for each), then apply the retention
    kept there; the first error, if any failed (the others are still tried)."""
    errors: list[BcdrError] = []
    for target in job.copy_targets():
        try:
            result.copies[target.repository] = _copy_into(
                result, plan, repo, target, clock, context, job=name, retention=job.retention
            )
        except BcdrError as exc:
            exc.message = f"the copy to {target.repository!r} failed: {exc.message}"
            errors.append(exc)
            continue
        if result.recovery_point:  # it copied the newest: this run's snapshot
            result.copy_points[target.repository] = result.recovery_point
    return errors[0] if errors else None


def _copy_into(
    result: JobResult,
    plan: Plan,
    src: Repo,
    target: CopyTarget,
    clock: Clock | None,
    context: RunContext,
    *,
    job: str | None,
    retention: Retention | None,
) -> CopyResult:
    """Copy ``src``'s snapshots (of ``job``) newer than the newest of each job the target
    holds into it, its placement checked first, then apply the retention kept there."""
    placement = establish_placement(plan, target.repository)
    dst, created = open_or_init(plan, target.repository, clock, chunker=src.config.chunker)
    if created:
        result.notes.append(created)
    try:
        request = CopyRequest(
            job=job,
            plan=plan.name,
            placement=placement.to_dict(),
            source_placement=result.placement.to_dict() if result.placement else None,
            context=context,
            catch_up=True,
        )
        copied = run_copy(src, dst, request)
        result.notes.append(
            f"copied to {target.repository!r}: {len(copied.copied)} snapshot(s), "
            f"{human_bytes(copied.stats.bytes_copied)} new"
        )
        keep = target.retention or retention
        if keep is not None:
            forgot = apply_retention(
                dst, keep.policy(), plan.timezone.zone, job=job, plan=plan.name, context=context
            )
            if forgot.removed:
                result.notes.append(
                    f"retention in {target.repository!r} ({forgot.policy.describe()}): "
                    f"forgot {len(forgot.removed)}"
                )
        return copied
    finally:
        dst.close()


def _copy_job(
    plan: Plan, name: str, job: CopyJob, dry_run: bool, clock: Clock | None, ctx: RunContext
) -> JobResult:
    """A ``copies`` job: the source's snapshots (of ``jobs``) copied to each destination."""
    result = JobResult(name, "copy", OK)
    targets = job.copy_targets()
    where = ", ".join(repr(t.repository) for t in targets)
    try:
        password_env(plan.repositories[job.repository])
        for t in targets:
            password_env(plan.repositories[t.repository])
            establish_placement(plan, t.repository)  # refused before a byte moves, dry or not
        if dry_run:
            result.status = DRY_RUN
            result.message = f"would copy repository {job.repository!r} to {where}"
            return result
        src = open_plan_repo(plan, job.repository, clock)
    except BcdrError as exc:
        return _failed(result, exc)
    errors: list[BcdrError] = []
    total = 0
    try:
        for target in targets:
            for source_job in job.jobs or (None,):
                try:
                    copied = _copy_into(
                        result, plan, src, target, clock, ctx, job=source_job, retention=None
                    )
                except BcdrError as exc:
                    exc.message = f"the copy to {target.repository!r} failed: {exc.message}"
                    errors.append(exc)
                    continue
                key = (
                    target.repository if source_job is None else f"{target.repository}:{source_job}"
                )
                result.copies[key] = copied
                total += len(copied.copied)
                result.evidence = result.evidence or copied.evidence
                times = [s.source.time for s in copied.snapshots]
                if times:
                    newest = max(times, key=parse_aware)
                    held = result.copy_points.get(target.repository)
                    if held is None or parse_aware(newest) > parse_aware(held):
                        result.copy_points[target.repository] = newest
    finally:
        src.close()
    if errors:
        return _failed(result, errors[0])
    result.message = f"copied {total} snapshot(s) to {where}"
    return result


def _backup(
    plan: Plan,
    name: str,
    job: BackupJob,
    dry_run: bool,
    clock: Clock | None,
    context: RunContext,
) -> JobResult:
    declared = plan.repositories[job.repository]
    result = JobResult(name, "backup", OK)
    try:
        resolve_sources(job.paths)
        password_env(declared)  # a missing password fails here, dry run or not
        placement = establish_placement(plan, job.repository)
        result.placement = placement
        if dry_run:
            result.status = DRY_RUN
            result.message = (
                f"would back up {', '.join(job.paths)} to repository {job.repository!r}"
            )
            return result
        repo, created = open_or_init(plan, job.repository, clock)
        if created:
            result.notes.insert(0, created)
        try:
            request = BackupRequest(
                paths=job.paths,
                job=name,
                excludes=job.exclude,
                plan=plan.name,
                placement=placement.to_dict(),
                context=context,
            )
            if job.scale_out is not None:
                backup = _scaled_backup(plan, job, repo, request)
            else:
                backup = run_backup(repo, request)
            result.backup, result.evidence = backup, backup.evidence
            retention_error = _retention(result, plan, name, job, repo, context)
            copy_error = _copies(result, plan, name, job, repo, clock, context)
            result.repository_figures = _figures(repo, result)
            after_error = retention_error or copy_error  # the snapshot is saved either way
        finally:
            repo.close()
    except Interrupted:
        raise  # not a failure: it names the snapshot it committed
    except BcdrError as exc:
        result.evidence = exc.evidence  # a backup that began records its own failure
        return _failed(result, exc)
    waits = backup.partial or backup.evidence_error or result.retention_waits
    result.status = PARTIAL if waits else OK
    result.message = f"snapshot {backup.snapshot.short_id} saved"
    if backup.evidence_error:
        result.notes.append(f"not recorded as evidence: {backup.evidence_error}")
    if after_error is not None:
        _failed(result, after_error)
        result.message = f"snapshot {backup.snapshot.short_id} saved, but {result.message}"
    return result


def _figures(repo: Repo, result: JobResult) -> dict[str, float]:
    """The repository's stored bytes and snapshot count after the backup, from two listings
    (nothing is read); nothing when they cannot be listed (the backup stands)."""
    try:
        stored = sum(p.size for p in repo.storage.list("data/"))
        snapshots = sum(1 for _ in repo.storage.list("snapshots/"))
    except BcdrError as exc:
        result.notes.append(f"the repository's size was not measured: {exc}")
        return {}
    return {"repository_stored_bytes": float(stored), "repository_snapshots": float(snapshots)}


def _scaled_backup(plan: Plan, job: BackupJob, repo: Repo, request: BackupRequest) -> BackupResult:
    """``scale_out``: the shards run with the plan's executor (waited for), then the commit
    here makes the snapshot, with the plan's placement and context in its evidence."""
    scale = job.scale_out
    assert scale is not None
    declared = plan.repositories[job.repository]
    manifest = shard.plan_run(repo, job.paths, scale.shards, job=request.job, excludes=job.exclude)
    shard.run_shards(
        repo,
        manifest,
        plan_storage_spec(declared).argv(),
        executor=scale.executor,
        options=slurm.options_of(scale.slurm),
        env=password_env(declared),
        name=request.job or "backup",
    )
    committed = shard.commit_run(
        repo,
        manifest.run,
        plan=request.plan,
        placement=request.placement,
        context=request.context,
    )
    assert committed.backup is not None  # a run planned just now was not committed before
    return committed.backup


Runner = Callable[[Plan, str, bool, "Clock | None", RunContext], JobResult]

#: How a run of each job kind (``plan/kinds.py``) is carried out.
RUNNERS: dict[str, Runner] = {
    "backup": lambda plan, name, dry, clock, ctx: _backup(
        plan, name, plan.backups[name], dry, clock, ctx
    ),
    "snapshot": lambda plan, name, dry, clock, ctx: _disk_snapshots(plan, name, dry, clock),
    "drill": lambda plan, name, dry, clock, ctx: drill_job(plan, name, dry_run=dry, clock=clock),
    "check": lambda plan, name, dry, clock, ctx: _check(plan, name, plan.checks[name], dry, ctx),
    "prune": lambda plan, name, dry, clock, ctx: _prune(
        plan, name, plan.prunes[name], dry, clock, ctx
    ),
    "copy": lambda plan, name, dry, clock, ctx: _copy_job(
        plan, name, plan.copies[name], dry, clock, ctx
    ),
}
