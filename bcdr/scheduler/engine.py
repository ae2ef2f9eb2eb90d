"""The scheduler's engine: what is due, each due job run under its locks with retries, every
attempt recorded in the history, hooks, metrics. It knows jobs only through the injected
``runner`` and the result protocol below: what a run *does* is ``actions/run.py``'s, wired in
by ``actions/tick.py``.

Time comes from an injected Clock (tests move a fake clock through weeks).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from bcdr.clock import Clock
from bcdr.errors import Interrupted, UsageError
from bcdr.plan.model import Plan, secret_env_names
from bcdr.plan.schedules import cron_for
from bcdr.scheduler.due import due_slot, next_slot
from bcdr.scheduler.eventlog import EventLog as EventLog
from bcdr.scheduler.history import FAILED, INTERRUPTED, OK, PARTIAL, History
from bcdr.scheduler.hooks import hook_base_env, run_hook
from bcdr.scheduler.locks import job_lock, plan_slot
from bcdr.scheduler.metrics import render_metrics, write_metrics


class RunResult(Protocol):
    """What the engine needs of a job's result (``actions.run.JobResult``)."""

    status: str
    message: str
    transient: bool
    notes: list[str]

    @property
    def snapshot_id(self) -> str | None: ...

    @property
    def recovery_point(self) -> str | None: ...

    @property
    def bytes_added(self) -> int | None: ...

    @property
    def copied_points(self) -> dict[str, str]:
        """copy_to repository -> the newest recovery point it holds after this run."""
        ...

    @property
    def measures(self) -> dict[str, float]:
        """Figures the history keeps for metrics (a drill's RTO, a repository's size)."""
        ...

    def to_dict(self) -> dict[str, object]: ...


JobRunner = Callable[[Plan, str, Clock], RunResult]
FailedResult = Callable[[str, str, str], RunResult]  # (job, kind, message): a failed result
BUSY = "busy"
MAX_RETRY_WAIT_S = 3600.0


def retry_delay(base_s: float, attempt: int, rng: random.Random) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times [0.5, 1.5)."""
    capped: float = min(MAX_RETRY_WAIT_S, base_s * 2.0 ** (attempt - 1))
    return capped * (0.5 + rng.random())


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
    result: RunResult | None = None

    def to_dict(self) -> dict[str, object]:
        d = {k: v for k, v in vars(self).items() if k != "result"}
        d["result"] = self.result.to_dict() if self.result else None
        return d


class MetricsFiles:
    """Which plans each metrics textfile covers: a file named for several plans (one
    ``--metrics-textfile`` for ``tick plans/*.yaml``) holds all of them, never only the plan
    written last."""

    def __init__(self, history: History, clock: Clock):
        self.history = history
        self.clock = clock
        self.files: dict[Path, dict[str, Plan]] = {}
        self._lock = threading.Lock()  # jobs running in parallel write one at a time

    def watch(self, plan: Plan, path: Path) -> None:
        for plans in self.files.values():
            plans.pop(plan.name, None)  # a plan moved to another file leaves the old one
        self.files.setdefault(path, {})[plan.name] = plan

    def write(self, plan_name: str | None = None) -> None:
        """Rewrite the files that cover ``plan_name`` (every file when None)."""
        with self._lock:
            for path, plans in self.files.items():
                if plans and (plan_name is None or plan_name in plans):
                    text = render_metrics(list(plans.values()), self.history, self.clock.now())
                    write_metrics(path, text)


class Scheduler:
    def __init__(
        self,
        history: History,
        clock: Clock,
        *,
        runner: JobRunner,
        failed: FailedResult,
        rng: random.Random | None = None,
        log: Callable[..., None] | None = None,
        source: str = "tick",
    ):
        self.history = history
        self.state_dir: Path = history.state_dir
        self.clock = clock
        self.runner = runner
        self.failed = failed
        self.rng = rng or random.Random()
        self.log = log or (lambda event, **facts: None)
        self.source = source
        self.metrics = MetricsFiles(history, clock)

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

    def tick(
        self,
        plan: Plan,
        metrics: Path | None = None,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Run every job of ``plan`` that is due; write metrics when a path is given (with
        every other plan ``watch``ed into the same file), also as each job starts and ends.
        ``on_done`` gets each job's outcome as soon as it ends."""
        if metrics is not None:
            self.metrics.watch(plan, metrics)
        due = self.due(plan)
        lock = threading.Lock()

        def run(name: str, slot: datetime | None) -> Outcome:
            outcome = self.run_due(plan, name, slot)
            if on_done is not None:
                with lock:  # jobs run in parallel end in any order; lines never mix
                    on_done(outcome)
            return outcome

        if plan.max_parallel > 1 and len(due) > 1:
            with ThreadPoolExecutor(plan.max_parallel) as pool:
                outcomes = list(pool.map(lambda d: run(*d), due))
        else:
            outcomes = [run(name, slot) for name, slot in due]
        self.metrics.write(plan.name)
        self.after_tick(plan)
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
        out.notes += self.after_job(plan, out)
        return out

    def after_job(self, plan: Plan, out: Outcome) -> list[str]:
        """What a job's end sends elsewhere (``actions/tick.py``: Azure Monitor); notes for
        its result. Never changes the result."""
        return []

    def after_tick(self, plan: Plan) -> None:
        """At the end of every tick, due jobs or not (rows waiting to be sent go then)."""

    def _attempt(
        self, plan: Plan, name: str, kind: str, slot: datetime | None, attempt: int
    ) -> RunResult:
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
        self._metrics_now(plan)  # the job shows as running
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
            result = self.failed(name, kind, f"internal error: {type(exc).__name__}: {exc}")
        duration = time.monotonic() - t0
        self.history.finish(
            run_id,
            status=result.status,
            finished=self.clock.now(),
            duration_s=duration,
            message=result.message,
            transient=result.transient,
            snapshot=result.snapshot_id,
            recovery_point=result.recovery_point,
            bytes_added=result.bytes_added,
            measures=result.measures,
        )
        if result.copied_points:
            self.history.record_copies(plan.name, name, result.copied_points, self.clock.now())
        self._metrics_now(plan)
        self.log(
            "job-end",
            plan=plan.name,
            job=name,
            kind=kind,
            attempt=attempt,
            status=result.status,
            duration_s=round(duration, 3),
            bytes_added=result.bytes_added,
            detail=result.message,
        )
        return result

    def _metrics_now(self, plan: Plan) -> None:
        """Metrics as a job starts or ends: a file that cannot be written is logged, the job
        goes on (the write at the end of the tick reports it as an error)."""
        try:
            self.metrics.write(plan.name)
        except UsageError as exc:
            self.log("metrics-failed", plan=plan.name, reason=str(exc), status="failed")

    def _hooks(self, plan: Plan, out: Outcome) -> list[str]:
        if plan.hooks is None:
            return []
        spec = plan.hooks.on_success if out.status in (OK, PARTIAL) else None
        if out.status == FAILED:
            spec = plan.hooks.on_failure
        if not spec:
            return []
        result = out.result
        facts = {
            "plan": out.plan,
            "job": out.job,
            "kind": out.kind,
            "status": out.status,
            "slot": out.slot,
            "attempts": out.attempts,
            "duration_s": round(out.duration_s, 3),
            "message": out.message,
            "snapshot": result.snapshot_id if result else None,
            "bytes_added": result.bytes_added if result else None,
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
