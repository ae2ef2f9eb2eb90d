"""Prometheus textfile-collector metrics, computed from the run history and written atomically
(temporary file in the same folder, then rename), so node_exporter never reads half a file."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from bcdr.atomicfile import write_atomic
from bcdr.compliance.anchors import Anchor, HeadStore
from bcdr.errors import UsageError
from bcdr.plan.model import Plan
from bcdr.scheduler.history import History

METRICS = (
    ("bcdr_last_success_timestamp_seconds", "Unix time the job last finished successfully."),
    ("bcdr_last_duration_seconds", "Duration of the job's last finished attempt."),
    ("bcdr_last_bytes_added", "Bytes the job's last successful run added to the repository."),
    ("bcdr_recovery_point_age_seconds", "Age of the job's newest recovery point."),
    ("bcdr_rpo_target_seconds", "The job's recovery point objective."),
    ("bcdr_failures_total", "Failed or crashed attempts of the job, ever."),
    ("bcdr_last_status_ok", "1 if the job's last finished attempt succeeded, else 0."),
    (
        "bcdr_evidence_head_sequence",
        "Sequence number of the newest evidence record this host has seen in each repository "
        "(head_id: the record's id); a chain later found shorter was cut.",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(plans: list[Plan], history: History, now: datetime) -> str:
    samples: dict[str, list[str]] = {name: [] for name, _ in METRICS}
    for plan in plans:
        for job_name in plan.job_names():
            kind, job = plan.job(job_name)
            labels = f'plan="{_label(plan.name)}",job="{_label(job_name)}",kind="{kind}"'

            def put(metric: str, value: float, labels: str = labels) -> None:
                samples[metric].append(f"{metric}{{{labels}}} {value:.17g}")

            success = history.last_success(plan.name, job_name)
            if success is not None and success.finished:
                put(
                    "bcdr_last_success_timestamp_seconds",
                    datetime.fromisoformat(success.finished).timestamp(),
                )
                if success.bytes_added is not None:
                    put("bcdr_last_bytes_added", success.bytes_added)
            finished = [r for r in history.runs(plan.name, job_name, 20) if r.finished]
            if finished:
                last = finished[0]
                if last.duration_s is not None:
                    put("bcdr_last_duration_seconds", last.duration_s)
                put("bcdr_last_status_ok", 1 if last.status in ("ok", "partial") else 0)
            good = history.newest_good(plan.name, job_name)
            if good is not None and good.recovery_point:
                age = now - datetime.fromisoformat(good.recovery_point)
                put("bcdr_recovery_point_age_seconds", max(0.0, age.total_seconds()))
            rpo = getattr(job, "rpo", None)
            if rpo is not None:
                put("bcdr_rpo_target_seconds", rpo.delta.total_seconds())
            put("bcdr_failures_total", history.failures(plan.name, job_name))
    for head in _heads(history):
        samples["bcdr_evidence_head_sequence"].append(
            f'bcdr_evidence_head_sequence{{repository_id="{_label(head.repository_id or "")}",'
            f'head_id="{_label(head.id)}"}} {head.seq}'
        )
    lines = []
    for name, help_text in METRICS:
        kind = "counter" if name.endswith("_total") else "gauge"
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def _heads(history: History) -> list[Anchor]:
    """The evidence heads kept in the same state folder (none when they cannot be read)."""
    import sqlite3

    try:
        store = HeadStore(history.state_dir)
        try:
            return store.all_newest()
        finally:
            store.close()
    except (OSError, sqlite3.Error):
        return []


def write_metrics(path: Path, text: str) -> None:
    """Atomically replace ``path`` with ``text``, mode 0640 (bcdr/atomicfile.py)."""
    try:
        write_atomic(path, text.encode())
    except OSError as exc:
        raise UsageError(
            f"cannot write the metrics file: {exc.strerror}",
            where=str(path),
            hint="point --metrics-textfile (or the plan's metrics_textfile) at a writable file, "
            "e.g. in node_exporter's --collector.textfile.directory",
        ) from None
