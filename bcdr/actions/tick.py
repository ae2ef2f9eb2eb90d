"""``bcdr tick``, ``schedule run``, ``schedule rebuild`` and the job runs of ``bcdr run``.

The scheduler's loop body: find the jobs that are due (``scheduler.due``), run each under its
lock (``scheduler.locks``) with retries, record every attempt (``scheduler.history``), run
hooks, write metrics. ``bcdr tick`` calls :meth:`Scheduler.tick` once per plan; ``bcdr schedule
run`` calls it, then sleeps until the next slot.

Time comes from an injected Clock (tests move a fake clock through weeks), the job itself from
an injected runner (``actions.run.run_job`` in production).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from bcdr.actions.common import open_plan_repo, password_env, plan_storage_spec
from bcdr.actions.run import FAILED, OK, PARTIAL, JobResult, run_job
from bcdr.actions.snapshots import list_snapshots
from bcdr.clock import Clock, parse_aware
from bcdr.compliance.evidence import read_records, record_problem
from bcdr.errors import BcdrError, Interrupted, RepositoryNotFound
from bcdr.plan.kinds import KINDS
from bcdr.plan.loader import load_plan
from bcdr.plan.model import Plan, secret_env_names
from bcdr.plan.schedules import cron_for
from bcdr.scheduler.due import due_slot, latest_slot, next_slot
from bcdr.scheduler.history import INTERRUPTED, History
from bcdr.scheduler.hooks import hook_base_env, run_hook
from bcdr.scheduler.locks import job_lock, plan_slot
from bcdr.scheduler.metrics import render_metrics, write_metrics

JobRunner = Callable[[Plan, str, Clock], JobResult]
BUSY = "busy"
MAX_RETRY_WAIT_S = 3600.0


def default_runner(plan: Plan, name: str, clock: Clock) -> JobResult:
    return run_job(plan, name, clock=clock)


def retry_delay(base_s: float, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times [0.5, 1.5)."""
    capped: float = min(MAX_RETRY_WAIT_S, base_s * 2.0 ** (attempt - 1))
    return capped * (0.5 + rng.random())


class EventLog:
    """What the scheduler did, one line per event: text for people, JSON lines for machines."""

    def __init__(self, stream: TextIO | None = None, fmt: str = "text", clock: Clock | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.fmt = fmt
        self.clock = clock

    def __call__(self, event: str, **facts: object) -> None:
        when = (self.clock.now() if self.clock else datetime.now().astimezone()).isoformat(
            timespec="seconds"
        )
        if self.fmt == "json":
            doc = {"time": when, "event": event, **facts}
            self.stream.write(json.dumps(doc, default=str, sort_keys=False) + "\n")
        else:
            detail = " ".join(f"{k}={v}" for k, v in facts.items() if v not in (None, ""))
            self.stream.write(f"{when} {event} {detail}\n")
        self.stream.flush()


@dataclass
class Outcome:
    """What one due job came to in this tick (after its retries)."""

    plan: str
    job: str
    kind: str
    slot: str | None
    status: str
    message: str = ""
    attempts: int = 0
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    result: JobResult | None = None

    def to_dict(self) -> dict[str, object]:
        d = {k: v for k, v in vars(self).items() if k != "result"}
        d["result"] = self.result.to_dict() if self.result else None
        return d


class Scheduler:
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
        self.history = history
        self.state_dir: Path = history.state_dir
        self.clock = clock
        self.runner = runner
        self.rng = rng or random.Random()
        self.log = log or (lambda event, **facts: None)
        self.source = source

    # --- what is due -----------------------------------------------------------------------

    def cron(self, plan: Plan, name: str) -> str:
        _, job = plan.job(name)
        return cron_for(job.schedule, plan.name, name, job.at, job.on)

    def due(self, plan: Plan, names: list[str] | None = None) -> list[tuple[str, datetime]]:
        now = self.clock.now()
        out = []
        for name in names or plan.job_names():
            last = self.history.last_slot(plan.name, name)
            slot = due_slot(
                self.cron(plan, name), plan.timezone.zone, last, now, catch_up=plan.catch_up
            )
            if slot is not None:
                out.append((name, slot))
        return out

    def next_wake(self, plans: list[Plan]) -> datetime | None:
        """The earliest next slot of any job (when a daemon should wake)."""
        now = self.clock.now()
        slots = [
            next_slot(self.cron(p, name), p.timezone.zone, now)
            for p in plans
            for name in p.job_names()
        ]
        return min(slots) if slots else None

    # --- running ---------------------------------------------------------------------------

    def tick(self, plan: Plan, metrics: Path | None = None) -> list[Outcome]:
        """Run every job of ``plan`` that is due; write metrics when a path is given."""
        due = self.due(plan)
        if plan.max_parallel > 1 and len(due) > 1:
            with ThreadPoolExecutor(plan.max_parallel) as pool:
                outcomes = list(pool.map(lambda d: self.run_due(plan, *d), due))
        else:
            outcomes = [self.run_due(plan, name, slot) for name, slot in due]
        if metrics is not None:
            write_metrics(metrics, render_metrics([plan], self.history, self.clock.now()))
        return outcomes

    def run_due(self, plan: Plan, name: str, slot: datetime | None) -> Outcome:
        """Run one job for ``slot`` (None: on demand), holding a plan slot and the job lock."""
        kind, _ = plan.job(name)
        slot_text = slot.isoformat() if slot else None
        seat = plan_slot(self.state_dir, plan.name, plan.max_parallel)
        if seat is None:
            msg = f"plan busy: {plan.max_parallel} of its jobs are running; runs at a later tick"
            self.log("job-waiting", plan=plan.name, job=name, reason=msg)
            return Outcome(plan.name, name, kind, slot_text, BUSY, msg)
        try:
            lock = job_lock(self.state_dir, plan.name, name)
            if not lock.acquire():
                msg = f"already running (pid {lock.holder()}); not started twice"
                self.log("job-busy", plan=plan.name, job=name, reason=msg)
                return Outcome(plan.name, name, kind, slot_text, BUSY, msg)
            try:
                return self._attempts(plan, name, kind, slot)
            finally:
                lock.release()
        finally:
            seat.release()

    def run_job_now(self, plan: Plan, name: str) -> JobResult:
        """``bcdr run``: one job on demand, with the scheduler's lock, retries, history and
        hooks; the result carries every note."""
        out = self.run_due(plan, name, None)
        result = out.result or JobResult(name, out.kind, out.status, out.message)
        result.notes = out.notes
        result.duration_s = out.duration_s
        return result

    def _attempts(self, plan: Plan, name: str, kind: str, slot: datetime | None) -> Outcome:
        crashed = self.history.mark_crashed(plan.name, name)
        out = Outcome(plan.name, name, kind, slot.isoformat() if slot else None, FAILED)
        if crashed:
            out.notes.append(f"{crashed} earlier attempt(s) ended with their process; run again")
        attempt = 0
        started_all = time.monotonic()
        while True:
            attempt += 1
            result = self._attempt(plan, name, kind, slot, attempt)
            retry = result.status == FAILED and result.transient and attempt <= plan.retries
            if not retry:
                break
            delay = retry_delay(plan.retry_wait.delta.total_seconds(), attempt, self.rng)
            self.log(
                "job-retry",
                plan=plan.name,
                job=name,
                attempt=attempt,
                wait_s=round(delay, 1),
                reason=result.message,
            )
            self.clock.sleep(delay)
        out.status, out.message, out.result = result.status, result.message, result
        out.attempts, out.duration_s = attempt, time.monotonic() - started_all
        out.notes += result.notes
        out.notes += self._hooks(plan, out)
        return out

    def _attempt(
        self, plan: Plan, name: str, kind: str, slot: datetime | None, attempt: int
    ) -> JobResult:
        run_id = self.history.start(
            plan.name, name, kind, slot, attempt, self.clock.now(), self.source
        )
        self.log(
            "job-start",
            plan=plan.name,
            job=name,
            kind=kind,
            attempt=attempt,
            slot=slot.isoformat() if slot else None,
        )
        t0 = time.monotonic()
        try:
            result = self.runner(plan, name, self.clock)
        except (KeyboardInterrupt, Interrupted) as exc:
            self.history.finish(
                run_id,
                status=INTERRUPTED,
                finished=self.clock.now(),
                duration_s=time.monotonic() - t0,
                message=str(exc)
                if isinstance(exc, Interrupted)
                else "stopped by a signal; nothing half-written was committed",
            )
            self.log("job-interrupted", plan=plan.name, job=name)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug in one job must not stop the others
            result = JobResult(name, kind, FAILED, f"internal error: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - t0
        backup = result.backup
        self.history.finish(
            run_id,
            status=result.status,
            finished=self.clock.now(),
            duration_s=duration,
            message=result.message,
            transient=result.transient,
            snapshot=backup.snapshot.id if backup else None,
            recovery_point=backup.snapshot.time if backup else None,
            bytes_added=backup.stats.bytes_added if backup else None,
        )
        self.log(
            "job-end",
            plan=plan.name,
            job=name,
            kind=kind,
            attempt=attempt,
            status=result.status,
            duration_s=round(duration, 3),
            bytes_added=backup.stats.bytes_added if backup else None,
            message=result.message,
        )
        return result

    def _hooks(self, plan: Plan, out: Outcome) -> list[str]:
        if plan.hooks is None:
            return []
        spec = plan.hooks.on_success if out.status in (OK, PARTIAL) else None
        if out.status == FAILED:
            spec = plan.hooks.on_failure
        if not spec:
            return []
        backup = out.result.backup if out.result else None
        facts = {
            "plan": out.plan,
            "job": out.job,
            "kind": out.kind,
            "status": out.status,
            "slot": out.slot,
            "attempts": out.attempts,
            "duration_s": round(out.duration_s, 3),
            "message": out.message,
            "snapshot": backup.snapshot.id if backup else None,
            "bytes_added": backup.stats.bytes_added if backup else None,
        }
        environment = hook_base_env(
            os.environ, secret_env_names(plan), tuple(e.name for e in plan.hooks.pass_env)
        )
        problem = run_hook(spec, facts, base_env=environment, cwd=str(plan.folder))
        if problem is None:
            return []
        which = "on_success" if out.status in (OK, PARTIAL) else "on_failure"
        self.log("hook-failed", plan=plan.name, job=out.job, hook=which, reason=problem)
        return [f"hook {which} failed: {problem} (the job's result stands)"]


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
    records: dict[str, list[dict[str, object]]] = {}
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
                if (
                    d.get("plan") != plan.name
                    or d.get("job") != name
                    or d.get("kind") not in k.evidence
                ):
                    continue
                if k.name == "backup" and d.get("result") != "failed":
                    continue  # its good runs came from the snapshots above
                started = parse_aware(d.get("started") or d.get("time"))
                good = d.get("result") in ("ok", "partial")
                count += history.add_rebuilt(
                    plan.name,
                    name,
                    k.name,
                    slot=latest_slot(cron, plan.timezone.zone, started),
                    when=started.isoformat(),
                    status=str(d.get("result")),
                    snapshot=None,
                    bytes_added=None,
                    recovery_point=good and k.recovery_points,
                )
            added[name] = added.get(name, 0) + count
    return added


def _evidence_of(plan: Plan, repo_name: str) -> list[dict[str, object]]:
    """The readable evidence records of a plan's repository (none when it does not exist)."""
    try:
        repo = open_plan_repo(plan, repo_name)
    except RepositoryNotFound:
        return []
    try:
        return [d for d in read_records(repo) if record_problem(d) is None]
    finally:
        repo.close()


#: The daemon wakes at least this often, to pick up edited plans.
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
            for plan in plans:
                sched.tick(plan, metrics_path(plan, metrics))
            wake = sched.next_wake(plans)
            now = clock.now()
            limit = now + timedelta(seconds=DAEMON_MAX_SLEEP_S)
            until = min(wake, limit) if wake else limit
            log("sleep", until=until.isoformat(timespec="seconds"))
            clock.sleep((until - now).total_seconds() + 1)
    except KeyboardInterrupt:
        log("daemon-stop", reason="signal; the current job (if any) was stopped cleanly")
