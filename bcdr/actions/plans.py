"""``bcdr validate``, ``bcdr plan`` and ``bcdr plan init``: read plans, describe them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from bcdr.errors import PlanInvalid, PlanProblem
from bcdr.geo.catalog import catalog
from bcdr.geo.residency import Placement
from bcdr.plan.kinds import KINDS, JobKind
from bcdr.plan.loader import load_plan
from bcdr.plan.model import Plan
from bcdr.plan.residency import placements
from bcdr.plan.schedules import cron_for, next_runs


@dataclass
class ValidateResult:
    file: str
    plan: Plan | None = None
    problems: list[PlanProblem] = field(default_factory=list)

    @property
    def summary(self) -> str:
        p = self.plan
        if p is None:
            return f"{self.file}: {len(self.problems)} problem(s)"
        counts = ", ".join(f"{len(k.jobs(p))} {k.label}" for k in KINDS)
        return (
            f"{self.file}: valid — plan {p.name!r}, {len(p.repositories)} repository(ies), {counts}"
        )


def validate(files: list[str]) -> list[ValidateResult]:
    """Each file's plan or every problem in it. Raises UsageError for an unreadable file."""
    out = []
    for f in files:
        try:
            out.append(ValidateResult(f, plan=load_plan(f)))
        except PlanInvalid as exc:
            out.append(ValidateResult(f, problems=exc.problems))
    return out


@dataclass(frozen=True)
class JobView:
    name: str
    kind: str  # a job kind's name (plan/kinds.py)
    target: str  # repository name, disks, or the job a drill restores
    region: str | None
    cron: str
    next_runs: list[str]
    targets: dict[str, str]
    placements: list[Placement] = field(default_factory=list)  # every region its data lives in
    verb: str = "to"  # joins it to its target in text: "restores", "checks"

    def to_dict(self) -> dict[str, object]:
        d = dict(vars(self))
        d["placements"] = [
            {"region": p.region, "role": p.role, "geography": p.geography, "via": p.via}
            for p in self.placements
        ]
        return d


def describe(plan: Plan, now: datetime) -> list[JobView]:
    tz = plan.timezone.zone
    views = []
    where: dict[str, list[Placement]] = {}
    for p in placements(plan):
        where.setdefault(p.job, []).append(p)

    def view(
        k: JobKind, name: str, job: object, target: str, region: str | None, targets: dict[str, str]
    ) -> None:
        cron = cron_for(job.schedule, plan.name, name, job.at, job.on)  # type: ignore[attr-defined]
        runs = [t.isoformat(timespec="minutes") for t in next_runs(cron, tz, now, 3)]
        if region is not None:
            known = catalog().get(region)
            region = known.name if known else region
        views.append(
            JobView(name, k.name, target, region, cron, runs, targets, where.get(name, []), k.verb)
        )

    for k in KINDS:
        for name, job in k.jobs(plan).items():
            view(k, name, job, k.target(plan, job), k.region(plan, job), k.targets(job))
    return views
