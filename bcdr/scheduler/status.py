"""``bcdr status``: per job, the last run, the next run, and the RPO status (age of the newest
good recovery point against the target), computed from the run history."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bcdr.plan.kinds import BY_NAME
from bcdr.plan.model import Plan
from bcdr.plan.schedules import cron_for
from bcdr.scheduler.due import next_slot
from bcdr.scheduler.history import History

RPO_OK, RPO_MISSED, RPO_NONE, NO_TARGET = "ok", "missed", "no recovery point", "no target"


@dataclass(frozen=True)
class JobStatus:
    plan: str
    job: str
    kind: str
    last_run: str | None
    last_status: str | None
    last_duration_s: float | None
    last_message: str | None
    next_run: str
    rpo: str | None
    recovery_point: str | None
    recovery_point_age_s: float | None
    rpo_status: str

    def to_dict(self) -> dict[str, object]:
        return dict(vars(self))


def job_statuses(plan: Plan, history: History, now: datetime) -> list[JobStatus]:
    out = []
    for name in plan.job_names():
        kind, job = plan.job(name)
        cron = cron_for(job.schedule, plan.name, name, job.at, job.on)
        last = history.last(plan.name, name)
        good = history.newest_good(plan.name, name)
        rpo = getattr(job, "rpo", None)
        age = None
        if good is not None and good.recovery_point:
            age = max(0.0, (now - datetime.fromisoformat(good.recovery_point)).total_seconds())
        if not BY_NAME[kind].recovery_points or rpo is None:
            rpo_status = NO_TARGET
        elif age is None:
            rpo_status = RPO_NONE  # a job with a target and no recovery point misses it
        else:
            rpo_status = RPO_OK if age <= rpo.delta.total_seconds() else RPO_MISSED
        out.append(
            JobStatus(
                plan.name,
                name,
                kind,
                last.started if last else None,
                last.status if last else None,
                last.duration_s if last else None,
                last.message if last else None,
                next_slot(cron, plan.timezone.zone, now).isoformat(timespec="minutes"),
                str(rpo) if rpo else None,
                good.recovery_point if good else None,
                age,
                rpo_status,
            )
        )
    return out
