"""Disk snapshot jobs as actions: run one (with its evidence record), list what a plan's jobs
hold in Azure (``bcdr disk-snapshots``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from bcdr.actions.common import open_or_init, run_context
from bcdr.clock import Clock, SystemClock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import DiskSnapshotFacts
from bcdr.disks.azure import AzureDisks, poll_seconds
from bcdr.disks.job import DiskJob, DiskJobReport, DiskJobSpec, point_time
from bcdr.disks.service import ROLE_COPY, TAG_SOURCE, DiskService, ResourceId, SnapshotInfo
from bcdr.errors import BcdrError
from bcdr.plan.model import DiskSnapshotJob, Plan

EVIDENCE_KIND = DiskSnapshotFacts.KIND
ServiceFor = Callable[[DiskSnapshotJob], DiskService]


def azure_service(job: DiskSnapshotJob) -> DiskService:
    return AzureDisks(job.token_env.name if job.token_env else None, job.endpoint)


def evidence_repository(plan: Plan, job: DiskSnapshotJob) -> str:
    """The repository keeping a disk job's evidence (the plan check makes it unambiguous)."""
    return job.evidence or next(iter(plan.repositories))


def disk_job_spec(plan: Plan, name: str) -> DiskJobSpec:
    """The plan's `snapshots:` entry ``name`` as the disks layer takes it."""
    job = plan.snapshots[name]
    return DiskJobSpec(
        plan=plan.name,
        name=name,
        disks=tuple(str(d) for d in job.disks),
        region=job.region,
        copy_to=job.copy_to,
        consistency=job.consistency,
        resource_group=job.resource_group,
        timeout_s=float(job.timeout.seconds),
        retention=job.retention.policy() if job.retention else None,
        timezone=plan.timezone.zone,
    )


def disk_job(
    plan: Plan,
    name: str,
    clock: Clock | None = None,
    service_for: ServiceFor = azure_service,
) -> DiskJob:
    service = service_for(plan.snapshots[name])
    return DiskJob(
        disk_job_spec(plan, name), service, clock or SystemClock(), poll_s=poll_seconds()
    )


@dataclass
class DiskRun:
    report: DiskJobReport
    evidence: str | None  # the record's id
    notes: list[str]


def run_disk_job(
    plan: Plan, name: str, clock: Clock | None = None, service_for: ServiceFor = azure_service
) -> DiskRun:
    """Run the job, then record what it did in the evidence repository."""
    started = (clock or SystemClock()).now().isoformat()
    return _run_disk_job(plan, name, clock, service_for, run_context(plan, name, started))


def _run_disk_job(
    plan: Plan, name: str, clock: Clock | None, service_for: ServiceFor, context: RunContext
) -> DiskRun:
    """Run the job, then record what it did in the evidence repository. Failures on disks are
    in the report; a failure to record evidence raises (the run is not auditable without it)."""
    job = plan.snapshots[name]
    report = disk_job(plan, name, clock, service_for).run()
    repo_name = evidence_repository(plan, job)
    notes: list[str] = []
    try:
        repo, created = open_or_init(plan, repo_name, clock)
    except BcdrError as exc:
        exc.message = (
            "the disk snapshots were taken, but their evidence could not be recorded in "
            f"repository {repo_name!r}: {exc.message}"
        )
        raise
    if created:
        notes.append(created)
    try:
        result = {"ok": "ok", "partial": "partial"}.get(report.status, "failed")
        record = write_record(
            repo, DiskSnapshotFacts.of(report.to_dict()), context=context, result=result
        )
    finally:
        repo.close()
    return DiskRun(report, record, notes)


@dataclass
class RecoveryPointRow:
    """One recovery point a disk job holds in Azure, for ``bcdr disk-snapshots``."""

    job: str
    disk: str  # disk name
    kind: str  # snapshot | copy | restore point
    name: str
    id: str
    region: str
    state: str  # ready | copying N% | creating | failed: ...
    time: str | None
    age_s: float | None
    source: str | None = None  # for copies: the snapshot copied

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _state(s: SnapshotInfo) -> str:
    if s.copy_error:
        return f"failed: {s.copy_error}"
    if s.provisioning == "Failed":
        return "failed"
    if s.provisioning != "Succeeded":
        return s.provisioning.lower() or "creating"
    if s.copying:
        return f"copying {s.completion or 0:.0f}%"
    return "ready"


def list_recovery_points(
    plan: Plan,
    names: list[str],
    clock: Clock | None = None,
    service_for: ServiceFor = azure_service,
) -> list[RecoveryPointRow]:
    """What each named disk job (all when none are) holds in Azure, oldest first per disk."""
    now = (clock or SystemClock()).now()
    rows: list[RecoveryPointRow] = []
    for name in names or list(plan.snapshots):
        runner = disk_job(plan, name, clock, service_for)
        for disk in runner.job.disks:
            rid = ResourceId.parse(disk)
            if runner.job.consistency == "application":
                rows += _points_of(runner, disk, rid, now)
                continue
            for s in runner.mine(rid.subscription, runner.resource_group(rid), disk):
                copy = s.tags.get("bcdr-role") == ROLE_COPY
                rows.append(
                    RecoveryPointRow(
                        name,
                        rid.name,
                        "copy" if copy else "snapshot",
                        s.name,
                        s.id,
                        s.location,
                        _state(s),
                        s.when.isoformat() if s.when else None,
                        _age(now, s.when),
                        s.tags.get(TAG_SOURCE) if copy else None,
                    )
                )
    return rows


def _points_of(
    runner: DiskJob, disk: str, rid: ResourceId, now: datetime
) -> list[RecoveryPointRow]:
    info = runner.svc.disk(disk)
    if not info.managed_by:
        return []
    vm = ResourceId.parse(info.managed_by)
    out = []
    for p in runner.svc.restore_points(runner.collection_id(info.managed_by, vm.name)):
        drp = p.disk_points.get(disk.lower())
        if drp is None:
            continue
        when = point_time(p)
        state = "ready" if p.provisioning == "Succeeded" else (p.provisioning.lower() or "creating")
        out.append(
            RecoveryPointRow(
                runner.name,
                rid.name,
                "restore point",
                p.name,
                drp,
                p.location or info.location,
                state,
                when.isoformat() if when else None,
                _age(now, when),
            )
        )
    return sorted(out, key=lambda r: r.time or "")


def _age(now: datetime, when: datetime | None) -> float | None:
    return round((now - when).total_seconds(), 1) if when else None
