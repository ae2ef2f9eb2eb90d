"""Rules that span fields: references, duplicate names, retention, RPO against schedule,
overlapping paths, exactly-one choices. Each problem is located in the source."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from bcdr.cloud import azmonitor
from bcdr.cloud.arm import check_arm_endpoint
from bcdr.disks.limits import MAX_DISK_SNAPSHOTS
from bcdr.errors import UsageError
from bcdr.plan.model import (
    BackupJob,
    CheckJob,
    CopyJob,
    DiskSnapshotJob,
    Drill,
    Plan,
    PruneJob,
    Repository,
    Retention,
    ScaleOut,
    Timing,
)
from bcdr.plan.residency import violations
from bcdr.plan.schedules import cron_for, longest_interval
from bcdr.plan.schema import did_you_mean
from bcdr.plan.source import Source
from bcdr.storage.azureauth import check_endpoint, parse_azure_url

RESOURCE_GROUP_RE = re.compile(r"[-\w.()]{0,89}[-\w()]")
EPOCH = datetime(2025, 1, 6, tzinfo=UTC)  # a fixed start: validation does not depend on today


def check_plan(src: Source, plan: Plan) -> None:
    _names(src, plan)
    if plan.azure_monitor is not None:
        target = plan.azure_monitor
        for name, rule, value in (
            ("endpoint", azmonitor.check_endpoint, target.endpoint),
            ("rule_id", azmonitor.check_rule_id, target.rule_id),
            ("stream", azmonitor.check_stream, target.stream),
        ):
            _storage_rule(src, ("azure_monitor", name), rule, value)
    for v in violations(plan):
        src.problem(v.path, f"{v.message} [rule: {v.rule}]", v.hint)
    for name, job in plan.backups.items():
        path = ("backups", name)
        _reference(src, (*path, "repository"), job.repository, plan.repositories, "repository")
        _overlaps(src, path, job, plan)
        _timing(src, path, plan, name, job)
        _copy_targets(src, path, plan, job, "copy_to")
        _scale_out(src, (*path, "scale_out"), job.scale_out)
    for name, snap in plan.snapshots.items():
        _timing(src, ("snapshots", name), plan, name, snap)
        _disk_job(src, ("snapshots", name), plan, snap)
    for name, drill in plan.drills.items():
        _drill(src, ("drills", name), plan, name, drill)
    repo_jobs: list[tuple[str, str, CheckJob | PruneJob]] = [
        *(("checks", n, j) for n, j in plan.checks.items()),
        *(("prunes", n, j) for n, j in plan.prunes.items()),
    ]
    for section, name, repo_job in repo_jobs:
        path = (section, name)
        _reference(src, (*path, "repository"), repo_job.repository, plan.repositories, "repository")
        _timing(src, path, plan, name, repo_job)
    for name, cjob in plan.copies.items():
        path = ("copies", name)
        _reference(src, (*path, "repository"), cjob.repository, plan.repositories, "repository")
        _copy_targets(src, path, plan, cjob, "to")
        _timing(src, path, plan, name, cjob)
    for name, repo in plan.repositories.items():
        _repository(src, ("repositories", name), repo)


def _drill(src: Source, path: tuple[str, ...], plan: Plan, name: str, drill: Drill) -> None:
    if (drill.backup is None) == (drill.snapshot is None):
        src.problem(path, "name exactly one of `backup` or `snapshot`")
    elif drill.backup is not None:
        _reference(src, (*path, "backup"), drill.backup, plan.backups, "backup job")
    elif drill.snapshot is not None:
        _reference(src, (*path, "snapshot"), drill.snapshot, plan.snapshots, "snapshot job")
    if drill.repository is not None:
        _drill_repository(src, path, plan, drill)
    if drill.sample.value == 0:
        src.problem((*path, "sample"), "a drill must restore something", "e.g. 100% or 5%")
    if drill.scale_out is not None:
        _scale_out(src, (*path, "scale_out"), drill.scale_out)
        if drill.backup is None:
            src.problem((*path, "scale_out"), "`scale_out` applies to drills of a backup job")
        elif drill.scale_out.executor == "slurm" and drill.scratch is None:
            src.problem(
                (*path, "scratch"),
                "a drill through Slurm restores into `scratch`, and none is set",
                "set `scratch` to a folder every node mounts",
            )
        if drill.backup is not None and drill.sample.value != 100:
            src.problem(
                (*path, "sample"),
                "a scale_out drill restores the whole snapshot (it measures a full restore's RTO)",
                "remove `sample`, or `scale_out` for a sampled drill",
            )
    _timing(src, path, plan, name, drill)


def _scale_out(src: Source, path: tuple[str, ...], scale: ScaleOut | None) -> None:
    if scale is not None and scale.slurm is not None and scale.executor != "slurm":
        src.problem(
            (*path, "slurm"),
            f"`slurm` settings with executor {scale.executor!r}: they would not be used",
            "set `executor: slurm`, or remove `slurm`",
        )


def _copy_targets(
    src: Source, path: tuple[str, ...], plan: Plan, job: BackupJob | CopyJob, field: str
) -> None:
    seen: set[str] = set()
    for i, target in enumerate(job.copy_targets()):
        at: tuple[str | int, ...] = (*path, field, i)
        name = target.repository
        if name not in plan.repositories:
            _reference(src, at, name, plan.repositories, "repository")
        elif name == job.repository:
            src.problem(
                at,
                f"the job's own repository is {name!r}: a copy must go to another repository",
                "name a repository in another region or account",
            )
        elif name in seen:
            src.problem(at, f"repository {name!r} is named twice")
        seen.add(name)


def _drill_repository(src: Source, path: tuple[str, ...], plan: Plan, drill: Drill) -> None:
    at, name = (*path, "repository"), drill.repository or ""
    job = plan.backups.get(drill.backup or "")
    if drill.backup is None:
        src.problem(at, "`repository` applies to drills of a backup job")
    elif name not in plan.repositories:
        _reference(src, at, name, plan.repositories, "repository")
    elif job is not None and name not in (
        job.repository,
        *(t.repository for t in job.copy_targets()),
    ):
        src.problem(
            at,
            f"backup job {drill.backup!r} neither backs up into nor copies to {name!r}",
            f"add it to backups.{drill.backup}.copy_to, or name one of: "
            + ", ".join([job.repository, *(t.repository for t in job.copy_targets())]),
        )


def _repository(src: Source, path: tuple[str, ...], repo: Repository) -> None:
    if repo.encryption is not None and (
        (repo.encryption.password_env is None) == (repo.encryption.password_file is None)
    ):
        src.problem((*path, "encryption"), "give exactly one of password_env or password_file")
    cred = repo.credential
    if not isinstance(cred, str):
        given = [
            v
            for v in (cred.connection_string_env, cred.account_key_env, cred.sas_env)
            if v is not None
        ]
        if len(given) != 1:
            src.problem(
                (*path, "credential"),
                "give exactly one of connection_string_env, "
                "account_key_env or sas_env (or `default`)",
            )
    is_azure = repo.url.startswith("azure://")
    if not is_azure and (repo.endpoint or not isinstance(cred, str)):
        src.problem(path, "`credential` and `endpoint` apply to azure:// repositories only")
    if is_azure:
        _storage_rule(src, (*path, "url"), parse_azure_url, repo.url)
    if repo.endpoint is not None:
        _storage_rule(src, (*path, "endpoint"), check_endpoint, repo.endpoint, "endpoint")
    if repo.immutability is not None and not is_azure:
        src.problem(
            (*path, "immutability"),
            "`immutability` applies to azure:// repositories only",
            "Azure's version-level immutability protects the blobs; a local folder has none",
        )
    if repo.management is None:
        return
    if not is_azure:
        src.problem(
            (*path, "management"),
            "`management` applies to azure:// repositories only",
            "a local repository's region can only be declared",
        )
    if repo.management.endpoint is not None:
        _storage_rule(
            src, (*path, "management", "endpoint"), check_arm_endpoint, repo.management.endpoint
        )


def _disks_and_copies(src: Source, path: tuple[str, ...], job: DiskSnapshotJob) -> None:
    """No disk listed twice; copies to other regions, each once, of crash-consistent points."""
    seen: set[str] = set()
    for i, disk in enumerate(job.disks):
        if disk.id.lower() in seen:
            src.problem((*path, "disks", i), "this disk is listed twice")
        seen.add(disk.id.lower())
    for i, region in enumerate(job.copy_to):
        if region == job.region:
            src.problem(
                (*path, "copy_to", i),
                f"{region} is the disks' own region",
                "copy_to names other regions, for disaster recovery",
            )
        elif region in job.copy_to[:i]:
            src.problem((*path, "copy_to", i), f"{region} is listed twice")
    if job.copy_to and job.consistency == "application":
        src.problem(
            (*path, "copy_to"),
            "copies of application-consistent restore points are not supported yet",
            "use consistency: crash for a job that copies to other regions, or a second job "
            "without copy_to for the application-consistent restore points",
        )


def _disk_job(src: Source, path: tuple[str, ...], plan: Plan, job: DiskSnapshotJob) -> None:
    _disks_and_copies(src, path, job)
    if job.evidence is not None:
        _reference(src, (*path, "evidence"), job.evidence, plan.repositories, "repository")
    elif len(plan.repositories) > 1:
        src.problem(
            path,
            "name the repository that keeps this job's evidence records",
            f"add `evidence: NAME` (one of {', '.join(plan.repositories)})",
        )
    if job.resource_group is not None and not RESOURCE_GROUP_RE.fullmatch(job.resource_group):
        src.problem(
            (*path, "resource_group"),
            "this is not a resource group name",
            "1 to 90 letters, digits, `-`, `_`, `.`, `(` or `)`, not ending in `.`",
        )
    if job.endpoint is not None:
        _storage_rule(src, (*path, "endpoint"), check_arm_endpoint, job.endpoint)
    ret = job.retention
    if ret is not None and ret.keep_within is None:
        counted = sum(
            n or 0
            for n in (
                ret.keep_last,
                ret.keep_hourly,
                ret.keep_daily,
                ret.keep_weekly,
                ret.keep_monthly,
                ret.keep_yearly,
            )
        )
        if counted >= MAX_DISK_SNAPSHOTS:
            src.problem(
                (*path, "retention"),
                f"this retention may keep {counted} snapshots per disk; Azure allows "
                f"{MAX_DISK_SNAPSHOTS} incremental snapshots per disk",
                f"keep fewer than {MAX_DISK_SNAPSHOTS}",
            )


def _storage_rule(
    src: Source, path: tuple[str, ...], check: Callable[..., object], *args: str
) -> None:
    """Apply one of the storage layer's own rules (the same code that opens the storage)."""
    try:
        check(*args)
    except UsageError as exc:
        src.problem(path, exc.message, exc.hint)


def _reference(
    src: Source, path: tuple[str | int, ...], name: str, known: Mapping[str, object], what: str
) -> None:
    """A job names another entry of the plan: it must exist."""
    if name not in known:
        src.problem(
            path,
            f"no {what} named {name!r}",
            did_you_mean(name, known) or f"defined: {', '.join(known) or 'none'}",
        )


def _names(src: Source, plan: Plan) -> None:
    seen: dict[str, str] = {}
    for section in ("backups", "snapshots", "drills", "checks", "prunes"):
        for name in getattr(plan, section):
            if name in seen:
                src.problem(
                    (section, name),
                    f"the name {name!r} is also used in {seen[name]}",
                    "job names must be unique across backups, snapshots, drills, checks and prunes",
                    key=True,
                )
            seen.setdefault(name, section)


def _overlaps(src: Source, path: tuple[str, ...], job: BackupJob, plan: Plan) -> None:
    resolved = [os.path.normpath(p) for p in job.paths]
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i < j and (
                a == b or b.startswith(a.rstrip("/") + "/") or a.startswith(b.rstrip("/") + "/")
            ):
                src.problem(
                    (*path, "paths", j),
                    f"overlaps {job.paths[i]!r}",
                    "list each folder once; use `exclude` to leave parts out",
                )


def _timing(src: Source, path: tuple[str, ...], plan: Plan, name: str, job: Timing) -> None:
    schedule, at, on = job.schedule, job.at, job.on
    if at is not None and not schedule.is_shorthand:
        src.problem(
            (*path, "at"), "`at` pins a shorthand schedule; a cron expression has its own time"
        )
    if on is not None and schedule.spec != "weekly":
        src.problem((*path, "on"), "`on` applies to `weekly` schedules only")
    retention: Retention | None = getattr(job, "retention", None)
    if retention is not None and not retention.keeps_something():
        src.problem(
            (*path, "retention"),
            "this retention keeps nothing",
            "keep at least one recovery point, e.g. keep_last: 1",
        )
    rpo = getattr(job, "rpo", None)
    if rpo is not None:
        cron = cron_for(schedule, plan.name, name, at, on)
        interval = longest_interval(cron, plan.timezone.zone, EPOCH)
        if rpo.delta < interval:
            src.problem(
                (*path, "rpo"),
                f"rpo {rpo} is shorter than the schedule's interval ({_human(interval)})",
                "run the job more often or allow a longer rpo",
            )


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= size:
            return f"up to {seconds // size}{unit}"
    return f"up to {seconds}s"
