"""``bcdr status``: per job, the last run, the next run, and the RPO status (age of the newest
good recovery point against the target); and rebuilding the history from the repositories."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from bcdr.actions.common import plan_storage_spec
from bcdr.actions.run import password_env
from bcdr.actions.snapshots import list_snapshots
from bcdr.plan.model import Plan
from bcdr.plan.schedules import cron_for
from bcdr.scheduler.due import latest_slot, next_slot
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
        if kind not in ("backup", "snapshot") or rpo is None:
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


def rebuild(plan: Plan, history: History) -> dict[str, int]:
    """Add the backups each job's repository holds for this plan to the history (those already
    there are skipped). Returns rows added per job. Raises BcdrError if a repository cannot be
    read."""
    added: dict[str, int] = {}
    for name, job in plan.backups.items():
        declared = plan.repositories[job.repository]
        env = {**os.environ, **password_env(declared)}
        snaps, _ = list_snapshots(plan_storage_spec(declared), job=name, env=env)
        cron = cron_for(job.schedule, plan.name, name, job.at, job.on)
        count = 0
        for snap in snaps:
            if snap.plan not in (None, plan.name):
                continue
            slot = latest_slot(cron, plan.timezone.zone, snap.datetime)
            count += history.add_rebuilt(
                plan.name,
                name,
                "backup",
                slot=slot,
                when=snap.time,
                status="partial" if snap.skipped else "ok",
                snapshot=snap.id,
                bytes_added=int(snap.stats.get("bytes_added", 0)) or None,
            )
        added[name] = count
    return added
