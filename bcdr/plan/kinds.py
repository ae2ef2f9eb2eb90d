"""The job kinds: the one list every place that handles jobs iterates.

A kind names its plan section and model, the evidence records its runs write, the repository
that keeps them, whether its runs make recovery points (so an RPO applies), and how ``bcdr
plan`` shows a job of it. What a kind *does* lives in the layers above, each in one table keyed
by the kind's name, and ``tests/test_job_kinds.py`` fails when a kind lacks any of them:

- ``actions/run.py`` ``RUNNERS``: how a run of it is carried out;
- ``compliance/controls.py`` ``JOB_CONTROLS``: the report's controls for it;
- ``actions/tick.py`` ``rebuild``: how ``schedule rebuild`` reads its runs back (backups from
  their snapshots, every kind from its evidence records).

Adding a kind: its model in ``model.py`` and a section on ``Plan``, an entry here, then one
entry in each table above.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bcdr.plan.model import (
    BackupJob,
    CheckJob,
    CopyJob,
    DiskSnapshotJob,
    Drill,
    PruneJob,
    Timing,
)

if TYPE_CHECKING:
    from bcdr.plan.model import Plan


@dataclass(frozen=True)
class JobKind:
    name: str  # as runs, history, evidence contexts and reports name it
    section: str  # the Plan field that holds jobs of this kind
    model: type[Timing]
    label: str  # for counts: "backup(s)"
    verb: str  # how `bcdr plan` joins it to its target: "backup b: to local"
    evidence: tuple[str, ...]  # evidence record kinds its runs write (the first is current)
    recovery_points: bool  # its runs make recovery points: an RPO applies
    repository: Callable[[Plan, Any], str | None]  # the repository keeping its evidence
    target: Callable[[Plan, Any], str]  # what it works on, for `bcdr plan`
    region: Callable[[Plan, Any], str | None]  # where its data is, for `bcdr plan`
    targets: Callable[[Any], dict[str, str]]  # its targets as the plan writes them

    def jobs(self, plan: Plan) -> dict[str, Any]:
        return dict(getattr(plan, self.section))


def _first_repository(plan: Plan) -> str | None:
    return next(iter(plan.repositories), None)


def _snapshot_repository(plan: Plan, job: DiskSnapshotJob) -> str | None:
    return job.evidence or _first_repository(plan)


def _drill_repository(plan: Plan, job: Drill) -> str | None:
    if job.backup is not None:
        return plan.backups[job.backup].repository
    if job.snapshot is not None:
        return _snapshot_repository(plan, plan.snapshots[job.snapshot])
    return _first_repository(plan)


def _drill_region(plan: Plan, job: Drill) -> str | None:
    if job.scratch_region:
        return job.scratch_region
    if job.backup:
        return plan.repositories[plan.backups[job.backup].repository].region
    return None


def _rpo(job: Any) -> dict[str, str]:
    return {"rpo": str(job.rpo)} if job.rpo else {}


KINDS: tuple[JobKind, ...] = (
    JobKind(
        "backup",
        "backups",
        BackupJob,
        "backup(s)",
        "to",
        ("backup",),
        True,
        repository=lambda plan, job: job.repository,
        target=lambda plan, job: job.repository,
        region=lambda plan, job: plan.repositories[job.repository].region,
        targets=_rpo,
    ),
    JobKind(
        "snapshot",
        "snapshots",
        DiskSnapshotJob,
        "disk snapshot job(s)",
        "of",
        ("disk-snapshot", "snapshot"),
        True,
        repository=_snapshot_repository,
        target=lambda plan, job: f"{len(job.disks)} disk(s)",
        region=lambda plan, job: job.region,
        targets=_rpo,
    ),
    JobKind(
        "drill",
        "drills",
        Drill,
        "drill(s)",
        "restores",
        ("drill",),
        False,
        repository=_drill_repository,
        target=lambda plan, job: job.backup or job.snapshot or "",
        region=_drill_region,
        targets=lambda job: {"rto": str(job.rto), "sample": str(job.sample)},
    ),
    JobKind(
        "check",
        "checks",
        CheckJob,
        "check(s)",
        "checks",
        ("check",),
        False,
        repository=lambda plan, job: job.repository,
        target=lambda plan, job: job.repository,
        region=lambda plan, job: plan.repositories[job.repository].region,
        targets=lambda job: {"read_data": str(job.read_data)},
    ),
    JobKind(
        "prune",
        "prunes",
        PruneJob,
        "prune(s)",
        "prunes",
        ("prune",),
        False,
        repository=lambda plan, job: job.repository,
        target=lambda plan, job: job.repository,
        region=lambda plan, job: plan.repositories[job.repository].region,
        targets=lambda job: {},
    ),
    JobKind(
        "copy",
        "copies",
        CopyJob,
        "copy job(s)",
        "copies",
        ("copy",),
        False,
        # each destination keeps the records of the copies into it; the first, the job's
        repository=lambda plan, job: job.copy_targets()[0].repository,
        target=lambda plan, job: (
            f"{job.repository} to {', '.join(t.repository for t in job.copy_targets())}"
        ),
        region=lambda plan, job: plan.repositories[job.copy_targets()[0].repository].region,
        targets=_rpo,
    ),
)
BY_NAME = {k.name: k for k in KINDS}


def kind_of(plan: Plan, name: str) -> tuple[JobKind, Any]:
    """The kind of job ``name`` and the job; KeyError if the plan has none of that name."""
    for k in KINDS:
        jobs = getattr(plan, k.section)
        if name in jobs:
            return k, jobs[name]
    raise KeyError(name)
