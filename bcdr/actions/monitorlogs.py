"""A plan's ``azure_monitor``: after each job, a row with its result (and one per evidence head
this host keeps, an anchor outside the repository) goes to Azure Monitor Logs
(``bcdr/cloud/azmonitor.py``). Sending never changes a job's result: rows that cannot be sent
stay in the state folder's spool and go with the next job or tick."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from bcdr.cloud import azmonitor
from bcdr.compliance.anchors import kept_on_host
from bcdr.errors import UsageError
from bcdr.plan.model import Plan
from bcdr.scheduler.engine import Outcome
from bcdr.statedir import default_state_dir


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_row(out: Outcome) -> dict[str, Any]:
    """One job's result, as the table's columns (docs/monitoring.md)."""
    result = out.result
    return {
        "TimeGenerated": _now(),
        "Record": "job-result",
        "Host": socket.gethostname(),
        "Plan": out.plan,
        "Job": out.job,
        "Kind": out.kind,
        "Status": out.status,
        "Message": out.message[:2000],
        "Attempts": out.attempts,
        "DurationSeconds": round(out.duration_s, 3),
        "Slot": out.slot,
        "Snapshot": result.snapshot_id if result else None,
        "RecoveryPoint": result.recovery_point if result else None,
        "BytesAdded": result.bytes_added if result else None,
        "EvidenceRecord": getattr(result, "evidence", None),
        "Measures": result.measures if result else {},
        "Notes": out.notes[:20],
    }


def head_rows() -> list[dict[str, Any]]:
    """The newest evidence head this host keeps for each repository."""
    heads, _ = kept_on_host(default_state_dir())
    return [
        {
            "TimeGenerated": _now(),
            "Record": "evidence-head",
            "Host": socket.gethostname(),
            "RepositoryId": h.repository_id,
            "Sequence": h.seq,
            "EvidenceRecord": h.id,
        }
        for h in heads
    ]


def publish(plan: Plan, outcome: Outcome | None) -> list[str]:
    """Spool this job's rows (none for ``outcome`` None: only what waits) and send the
    spool; notes for the job's result when it could not be sent."""
    target = plan.azure_monitor
    if target is None:
        return []
    spool = azmonitor.Spool(default_state_dir(), target.endpoint, target.rule_id, target.stream)
    with spool.locked():
        if outcome is not None:
            spool.add([job_row(outcome), *head_rows()])
        rows, dropped, lines = spool.take()
        if not rows:
            return []
        if dropped:
            rows[0] = {**rows[0], "DroppedBefore": dropped}
        try:
            azmonitor.send(
                target.endpoint,
                target.rule_id,
                target.stream,
                rows,
                token_env=target.token_env.name if target.token_env else None,
                env=os.environ,
            )
        except (azmonitor.SendFailed, UsageError) as exc:
            return [f"not sent to Azure Monitor ({exc}); {len(rows)} row(s) kept for the next run"]
        spool.sent(lines)
    return []
