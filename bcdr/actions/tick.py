"""``bcdr tick``, ``schedule run``, ``schedule rebuild`` and the job runs of ``bcdr run``.

The engine (``scheduler/engine.py``: what is due, locks, retries, history, hooks, metrics) with
this version's jobs wired in (``actions.run.run_job``). ``bcdr tick`` calls
:meth:`Scheduler.tick` once per plan; ``bcdr schedule run`` (``run_daemon``) calls it, then
sleeps until the next slot.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from bcdr.actions import monitorlogs
from bcdr.actions.common import open_plan_repo, password_env, plan_storage_spec
from bcdr.actions.drill import drill_measures
from bcdr.actions.run import FAILED, JobResult, run_job
from bcdr.actions.snapshots import list_snapshots
from bcdr.clock import Clock
from bcdr.compliance.evidence import read_records
from bcdr.compliance.records import CopyFacts, DrillFacts, Facts, Record, typed
from bcdr.errors import BcdrError, RepositoryNotFound
from bcdr.plan.kinds import KINDS
from bcdr.plan.loader import load_plan
from bcdr.plan.model import Plan
from bcdr.plan.schedules import cron_for
from bcdr.scheduler import engine
from bcdr.scheduler.due import latest_slot
from bcdr.scheduler.engine import BUSY as BUSY
from bcdr.scheduler.engine import MAX_RETRY_WAIT_S as MAX_RETRY_WAIT_S
from bcdr.scheduler.engine import EventLog as EventLog
from bcdr.scheduler.engine import JobRunner
from bcdr.scheduler.engine import Outcome as Outcome
from bcdr.scheduler.engine import retry_delay as retry_delay
from bcdr.scheduler.history import History


def default_runner(plan: Plan, name: str, clock: Clock) -> JobResult:
    return run_job(plan, name, clock=clock)


def _failed(name: str, kind: str, message: str) -> JobResult:
    return JobResult(name, kind, FAILED, message)


class Scheduler(engine.Scheduler):
    """The engine (``scheduler/engine.py``) running this version's jobs (``run_job``)."""

    def __init__(
        self,
        history: History,
        clock: Clock,
        *,
        runner: JobRunner = default_runner,
        rng: random.Random | None = None,
        log: Callable[..., None] | None = None,
        source: str = "tick",
    ):
        super().__init__(
            history, clock, runner=runner, failed=_failed, rng=rng, log=log, source=source
        )

    def after_job(self, plan: Plan, out: Outcome) -> list[str]:
        notes = monitorlogs.publish(plan, out)
        for note in notes:
            self.log("monitor-failed", plan=plan.name, job=out.job, reason=note)
        return notes

    def after_tick(self, plan: Plan) -> None:
        for note in monitorlogs.publish(plan, None):
            self.log("monitor-failed", plan=plan.name, reason=note)

    def run_job_now(self, plan: Plan, name: str) -> JobResult:
        """``bcdr run``: one job on demand, with the scheduler's lock, retries, history and
        hooks; the result carries every note."""
        out = self.run_due(plan, name, None)
        result = out.result if isinstance(out.result, JobResult) else None
        result = result or JobResult(name, out.kind, out.status, out.message)
        result.notes = out.notes
        result.duration_s = out.duration_s
        return result


def rebuild(plan: Plan, history: History) -> dict[str, int]:
    """Add the runs the repositories hold for this plan to the history (those already there are
    skipped): backups from their snapshots, and every job of every kind from its evidence
    records (failed runs and drills, checks, prunes and disk snapshots included). Returns rows
    added per job. Raises BcdrError if a repository cannot be read."""
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
    records: dict[str, list[Record[Facts]]] = {}
    for k in KINDS:
        for name, job in k.jobs(plan).items():
            repo_name = k.repository(plan, job)
            if repo_name is None:
                continue
            if repo_name not in records:
                records[repo_name] = _evidence_of(plan, repo_name)
            cron = cron_for(job.schedule, plan.name, name, job.at, job.on)
            count = 0
            for d in records[repo_name]:
                if d.plan != plan.name or d.job != name or d.kind not in k.evidence:
                    continue
                if k.name == "backup" and d.result != "failed":
                    continue  # its good runs came from the snapshots above
                started = d.begun
                good = d.result in ("ok", "partial")
                facts = d.facts
                count += history.add_rebuilt(
                    plan.name,
                    name,
                    k.name,
                    slot=latest_slot(cron, plan.timezone.zone, started),
                    when=started.isoformat(),
                    status=str(d.result),
                    snapshot=None,
                    bytes_added=None,
                    recovery_point=good and k.recovery_points,
                    measures=drill_measures(facts) if isinstance(facts, DrillFacts) else None,
                )
            added[name] = added.get(name, 0) + count
    _rebuild_copies(plan, history, records)
    return added


def _rebuild_copies(plan: Plan, history: History, records: dict[str, list[Record[Facts]]]) -> None:
    """The newest recovery point each copy destination holds, from the copy records the
    plan's jobs wrote there (``status`` shows it)."""
    targets = [(n, j.copy_targets()) for n, j in plan.backups.items()]
    targets += [(n, j.copy_targets()) for n, j in plan.copies.items()]
    for name, copy_targets in targets:
        for target in copy_targets:
            repo_name = target.repository
            if repo_name not in records:
                records[repo_name] = _evidence_of(plan, repo_name)
            runs = typed(records[repo_name], CopyFacts)
            times = [
                (p.snapshot_time, d.time)
                for d in runs
                if d.plan == plan.name and d.job == name and d.result == "ok"
                for p in d.facts.points
            ]
            if times:
                point, when = max(times)
                history.record_copies(plan.name, name, {repo_name: point.isoformat()}, when)


def _evidence_of(plan: Plan, repo_name: str) -> list[Record[Facts]]:
    """The evidence records of a plan's repository (none when it does not exist)."""
    try:
        repo = open_plan_repo(plan, repo_name)
    except RepositoryNotFound:
        return []
    try:
        return read_records(repo)
    finally:
        repo.close()


#: The daemon wakes at least this often, to pick up edited plans and rewrite the metrics file
#: (bcdr_metrics_written_timestamp_seconds shows it alive).
DAEMON_MAX_SLEEP_S = 300.0


def metrics_path(plan: Plan, given: str | None) -> Path | None:
    """Where a tick writes the plan's metrics: ``--metrics-textfile``, else the plan's
    ``metrics_textfile`` (relative to its folder), else nowhere."""
    if given:
        return Path(given)
    if plan.metrics_textfile:
        return plan.folder / plan.metrics_textfile
    return None


def load_plans(files: list[str], log: EventLog) -> tuple[list[Plan], int]:
    """Every plan that loads; a plan that does not is logged (with its problems on stderr) and
    the others still run. Returns the plans and how many did not load."""
    plans, bad = [], 0
    for f in files:
        try:
            plans.append(load_plan(f))
        except BcdrError as exc:
            bad += 1
            log("plan-invalid", plan_file=f, error=exc.message, where=exc.where)
            for problem in getattr(exc, "problems", ())[:20]:
                sys.stderr.write(f"{problem}\n")
    return plans, bad


def watch_metrics(sched: Scheduler, plans: list[Plan], paths: dict[str, Path | None]) -> None:
    """Tell the scheduler every plan's metrics file before the first job runs, so each
    write holds every plan of its file."""
    for plan in plans:
        path = paths[plan.name]
        if path is not None:
            sched.metrics.watch(plan, path)


def run_daemon(
    files: list[str], history: History, clock: Clock, log: EventLog, metrics: str | None
) -> None:
    """``bcdr schedule run``: tick every plan, sleep until the next slot (at most
    ``DAEMON_MAX_SLEEP_S``, re-reading the plans each time), repeat; returns when interrupted
    (SIGTERM is turned into KeyboardInterrupt by the caller), the running job stopped cleanly."""
    sched = Scheduler(history, clock, log=log, source="daemon")
    log("daemon-start", plans=" ".join(files), state_dir=str(history.state_dir))
    try:
        while True:
            plans, _ = load_plans(files, log)
            paths = {p.name: metrics_path(p, metrics) for p in plans}
            watch_metrics(sched, plans, paths)
            for plan in plans:
                sched.tick(plan, paths[plan.name])
            wake = sched.next_wake(plans)
            now = clock.now()
            limit = now + timedelta(seconds=DAEMON_MAX_SLEEP_S)
            until = min(wake, limit) if wake else limit
            log("sleep", until=until.isoformat(timespec="seconds"))
            clock.sleep((until - now).total_seconds() + 1)
    except KeyboardInterrupt:
        log("daemon-stop", reason="signal; the current job (if any) was stopped cleanly")
