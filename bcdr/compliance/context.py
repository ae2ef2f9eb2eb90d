"""The run a record belongs to (kept apart from evidence.py so the plan model can name it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunContext:
    """What a record says about the run beyond its facts: which plan (and the digest of the
    plan file as it was), which job, when it started."""

    plan: str | None = None
    plan_digest: str | None = None
    job: str | None = None
    started: str | None = None
    targets: dict[str, str] | None = None  # the job's targets as the plan writes them
