"""``bcdr status``: per job, the last run, the next run, and the RPO status (age of the newest
good recovery point against the target), computed from the run history."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # copy_to repository -> {recovery_point (newest there, or None), lag_s (behind the job's
    # newest), age_s, status: ok | behind (older than the RPO) | none}
    copies: dict[str, dict[str, object]] = field(default_factory=dict)

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
                _copies(history, plan.name, name, job, good.recovery_point if good else None, now),
            )
        )
    return out


COPY_OK, COPY_BEHIND, COPY_NONE = "ok", "behind", "none"


def _copies(
    history: History, plan: str, name: str, job: object, newest: str | None, now: datetime
) -> dict[str, dict[str, object]]:
    """Each copy_to repository's newest recovery point of the job, how far it is behind the
    job's newest, and whether it is older than the RPO."""
    targets = getattr(job, "copy_targets", None)
    if targets is None:
        return {}
    held = history.copies(plan, name)
    rpo = getattr(job, "rpo", None)
    out: dict[str, dict[str, object]] = {}
    for target in targets():
        point = held.get(target.repository)
        if point is None:
            out[target.repository] = {"recovery_point": None, "status": COPY_NONE}
            continue
        when = datetime.fromisoformat(point)
        age = max(0.0, (now - when).total_seconds())
        lag = max(0.0, (datetime.fromisoformat(newest) - when).total_seconds()) if newest else 0.0
        behind = rpo is not None and age > rpo.delta.total_seconds()
        out[target.repository] = {
            "recovery_point": point,
            "lag_s": lag,
            "age_s": age,
            "status": COPY_BEHIND if behind else COPY_OK,
        }
    return out
