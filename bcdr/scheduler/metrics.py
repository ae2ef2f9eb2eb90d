"""Prometheus metrics in node_exporter's textfile-collector format, computed from the run
history and rendered by ``prometheus_client``; written atomically (a temporary file beside it,
then one rename), so node_exporter never reads half a file.

Times are **timestamps**, never ages: an age frozen when the file was written would stop
growing when the scheduler stops, and the alert on it would never fire. A job that never
succeeded has its timestamps at 0 from the first write, so ``time() - ...`` is huge and the
RPO alert fires for it too. docs/monitoring.md lists every metric; monitoring/ holds the alert
rules and the Grafana dashboard built on them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bcdr.atomicfile import write_atomic
from bcdr.compliance.anchors import kept_on_host
from bcdr.errors import UsageError
from bcdr.plan.kinds import BY_NAME
from bcdr.plan.model import Plan
from bcdr.plan.schedules import cron_for
from bcdr.scheduler.due import next_slot
from bcdr.scheduler.history import OK, PARTIAL, RUNNING, History, Run

JOB = ("plan", "job", "kind")
#: ``bcdr_job_state``'s states: exactly one is 1 per job. ``never``: no attempt yet.
STATES = ("ok", "partial", "failed", "running", "never")

#: Every metric bcdr writes: name -> (type, labels, help). The dashboard and alert tests read
#: this table (a panel may only query what is here).
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "bcdr_job_state": (
        "gauge",
        (*JOB, "state"),
        "1 for the job's current state (ok, partial, failed, running, never), 0 for the others.",
    ),
    "bcdr_last_attempt_timestamp_seconds": (
        "gauge",
        JOB,
        "Unix time the job's last attempt started; 0 if it never ran.",
    ),
    "bcdr_last_success_timestamp_seconds": (
        "gauge",
        JOB,
        "Unix time the job last finished ok or partial; 0 if it never did.",
    ),
    "bcdr_last_duration_seconds": ("gauge", JOB, "Duration of the job's last finished attempt."),
    "bcdr_last_added_bytes": (
        "gauge",
        JOB,
        "Bytes the backup job's last successful run added to the repository (after dedup and "
        "compression).",
    ),
    "bcdr_recovery_point_timestamp_seconds": (
        "gauge",
        JOB,
        "Unix time of the job's newest recovery point; 0 if it has none (jobs that make "
        "recovery points: backup, snapshot).",
    ),
    "bcdr_rpo_target_seconds": ("gauge", JOB, "The job's recovery point objective."),
    "bcdr_next_run_timestamp_seconds": (
        "gauge",
        JOB,
        "Unix time of the job's next scheduled slot, as of when the file was written.",
    ),
    "bcdr_failures": ("counter", JOB, "Failed or crashed attempts of the job, ever."),
    "bcdr_drill_rto_seconds": (
        "gauge",
        JOB,
        "Restore time the drill's last measured run achieved (the estimate for a full restore "
        "when it restored a sample).",
    ),
    "bcdr_drill_rto_target_seconds": ("gauge", JOB, "The drill's recovery time objective."),
    "bcdr_drill_rpo_seconds": (
        "gauge",
        JOB,
        "Age of the recovery point the drill's last measured run restored, when it ran.",
    ),
    "bcdr_drill_rpo_target_seconds": ("gauge", JOB, "The drill's recovery point objective."),
    "bcdr_drill_verified_bytes": (
        "gauge",
        JOB,
        "Bytes the drill's last measured run restored and verified.",
    ),
    "bcdr_copy_recovery_point_timestamp_seconds": (
        "gauge",
        (*JOB, "repository"),
        "Unix time of the job's newest recovery point held in a copy_to repository; 0 if none.",
    ),
    "bcdr_copy_lag_seconds": (
        "gauge",
        (*JOB, "repository"),
        "How far the copy_to repository's newest recovery point is behind the newest snapshot "
        "the job saved (also by a run whose copy failed).",
    ),
    "bcdr_repository_stored_bytes": (
        "gauge",
        ("plan", "repository"),
        "Bytes the repository's packs take, as the last backup into it found.",
    ),
    "bcdr_repository_snapshots": (
        "gauge",
        ("plan", "repository"),
        "Snapshots in the repository, as the last backup into it found.",
    ),
    "bcdr_evidence_head_sequence": (
        "gauge",
        ("repository_id", "head_id"),
        "Sequence number of the newest evidence record this host has seen in each repository "
        "(head_id: the record's id); a chain later found shorter was cut.",
    ),
    "bcdr_evidence_chain_ok": (
        "gauge",
        ("repository_id",),
        "1 if the last check of the repository's evidence chain on this host found it intact, "
        "0 if records were missing, changed or cut from its end.",
    ),
    "bcdr_evidence_chain_checked_timestamp_seconds": (
        "gauge",
        ("repository_id",),
        "Unix time the repository's evidence chain was last checked on this host.",
    ),
    "bcdr_metrics_written_timestamp_seconds": (
        "gauge",
        ("host",),
        "Unix time this file was written: the scheduler is alive.",
    ),
}

#: What each run status counts as in ``bcdr_job_state``.
_STATE_OF = {OK: "ok", PARTIAL: "partial", RUNNING: "running"}
#: Measures of a run (``measures`` in the history) that become a drill's metrics.
DRILL_MEASURES = {
    "rto_s": "bcdr_drill_rto_seconds",
    "rto_target_s": "bcdr_drill_rto_target_seconds",
    "rpo_s": "bcdr_drill_rpo_seconds",
    "rpo_target_s": "bcdr_drill_rpo_target_seconds",
    "bytes_verified": "bcdr_drill_verified_bytes",
}


@dataclass
class _Samples:
    by_name: dict[str, list[tuple[tuple[str, ...], float]]] = field(
        default_factory=lambda: {name: [] for name in METRICS}
    )

    def put(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.by_name[name].append((labels, float(value)))

    def families(self) -> Iterator[Metric]:
        for name, (kind, labels, help_text) in METRICS.items():
            family: GaugeMetricFamily | CounterMetricFamily
            if kind == "counter":
                family = CounterMetricFamily(name, help_text, labels=list(labels))
            else:
                family = GaugeMetricFamily(name, help_text, labels=list(labels))
            for values, value in self.by_name[name]:
                family.add_metric(list(values), value)
            yield family


class _Collector(Collector):
    def __init__(self, samples: _Samples):
        self.samples = samples

    def collect(self) -> Iterable[Metric]:
        return self.samples.families()


def _ts(iso: str | None) -> float:
    return datetime.fromisoformat(iso).timestamp() if iso else 0.0


def job_state(history: History, plan: str, job: str) -> str:
    """The job's state for ``bcdr_job_state``: its newest attempt's result, ``running`` while
    a live process runs it, ``never`` before its first attempt."""
    rows = history.runs(plan, job, 1)
    if not rows:
        return "never"
    last = rows[0]
    if last.status == RUNNING and not _alive(last):
        return "failed"  # its process died: crashed
    return _STATE_OF.get(last.status, "failed")


def _alive(run: Run) -> bool:
    if run.host != socket.gethostname():
        return True  # another host's run: trust its row
    try:
        os.kill(run.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _job_samples(out: _Samples, plan: Plan, name: str, history: History, now: datetime) -> None:
    kind, job = plan.job(name)
    labels = (plan.name, name, kind)
    state = job_state(history, plan.name, name)
    for s in STATES:
        out.put("bcdr_job_state", (*labels, s), 1 if s == state else 0)
    last = history.last(plan.name, name)
    out.put("bcdr_last_attempt_timestamp_seconds", labels, _ts(last.started if last else None))
    success = history.last_success(plan.name, name)
    out.put(
        "bcdr_last_success_timestamp_seconds", labels, _ts(success.finished if success else None)
    )
    if success is not None and success.bytes_added is not None:
        out.put("bcdr_last_added_bytes", labels, success.bytes_added)
    finished = [r for r in history.runs(plan.name, name, 20) if r.finished and r.status != RUNNING]
    if finished and finished[0].duration_s is not None:
        out.put("bcdr_last_duration_seconds", labels, finished[0].duration_s)
    rpo = getattr(job, "rpo", None)
    newest = history.newest_good(plan.name, name)
    newest_point = newest.recovery_point if newest else None
    if BY_NAME[kind].recovery_points:
        out.put("bcdr_recovery_point_timestamp_seconds", labels, _ts(newest_point))
    if rpo is not None:
        out.put("bcdr_rpo_target_seconds", labels, rpo.delta.total_seconds())
    cron = cron_for(job.schedule, plan.name, name, job.at, job.on)
    out.put(
        "bcdr_next_run_timestamp_seconds",
        labels,
        next_slot(cron, plan.timezone.zone, now).timestamp(),
    )
    out.put("bcdr_failures", labels, history.failures(plan.name, name))
    if kind == "drill":
        measured = history.last_measured(plan.name, name, "rto_s")
        for key, metric in DRILL_MEASURES.items():
            if measured is not None and key in measured.measures:
                out.put(metric, labels, measured.measures[key])
    targets = getattr(job, "copy_targets", None)
    if targets is not None:
        held = history.copies(plan.name, name)
        # the newest snapshot the job saved, even by a run that failed afterwards (a copy
        # failing fails the run): what a copy that keeps failing falls behind
        saved = history.newest_saved(plan.name, name)
        for target in targets():
            point = held.get(target.repository)
            where = (*labels, target.repository)
            out.put("bcdr_copy_recovery_point_timestamp_seconds", where, _ts(point))
            if point is not None and saved is not None:
                out.put("bcdr_copy_lag_seconds", where, max(0.0, _ts(saved) - _ts(point)))


def _repository_samples(out: _Samples, plan: Plan, history: History) -> None:
    """Each repository's size and snapshot count, from the newest backup run into it that
    measured them."""
    for repository in plan.repositories:
        newest: Run | None = None
        for name, job in plan.backups.items():
            if job.repository != repository:
                continue
            run = history.last_measured(plan.name, name, "repository_stored_bytes")
            if run is not None and (
                newest is None or (run.finished or "") > (newest.finished or "")
            ):
                newest = run
        if newest is None:
            continue
        labels = (plan.name, repository)
        out.put("bcdr_repository_stored_bytes", labels, newest.measures["repository_stored_bytes"])
        if "repository_snapshots" in newest.measures:
            out.put("bcdr_repository_snapshots", labels, newest.measures["repository_snapshots"])


def render_metrics(plans: list[Plan], history: History, now: datetime) -> str:
    """The textfile for ``plans``: every job of every plan has its series from the first
    write on."""
    out = _Samples()
    for plan in plans:
        for name in plan.job_names():
            _job_samples(out, plan, name, history, now)
        _repository_samples(out, plan, history)
    heads, verdicts = kept_on_host(history.state_dir)
    for head in heads:
        out.put("bcdr_evidence_head_sequence", (head.repository_id or "", head.id), head.seq or 0)
    for v in verdicts:
        out.put("bcdr_evidence_chain_ok", (v.repository_id,), 1 if v.ok else 0)
        out.put("bcdr_evidence_chain_checked_timestamp_seconds", (v.repository_id,), _ts(v.checked))
    out.put("bcdr_metrics_written_timestamp_seconds", (socket.gethostname(),), now.timestamp())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(out))
    return generate_latest(registry).decode()


def write_metrics(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0640 (bcdr/atomicfile.py)."""
    try:
        write_atomic(path, text.encode())
    except OSError as exc:
        why = exc.strerror
        if isinstance(exc, FileExistsError | NotADirectoryError):
            why = "a file is in the way of its folder"
        raise UsageError(
            f"cannot write the metrics file: {why}",
            where=str(path),
            hint="point --metrics-textfile (or the plan's metrics_textfile) at a writable file, "
            "e.g. in node_exporter's --collector.textfile.directory",
        ) from None
