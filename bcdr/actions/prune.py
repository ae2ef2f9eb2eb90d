"""``bcdr prune``: delete data no snapshot needs (two phases; backups keep running)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from bcdr.actions.common import open_repo, transfer
from bcdr.actions.shard import ShardRuns
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import PruneFacts
from bcdr.errors import UsageError
from bcdr.repository.prune import LogFn, PruneReport, prune_repository
from bcdr.storage.url import StorageSpec


def prune(
    where: StorageSpec | str,
    *,
    max_unused: float = 10.0,
    grace: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    log: LogFn | None = None,
    plan: str | None = None,
    context: RunContext | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> PruneReport:
    if not 0 <= max_unused <= 100:
        raise UsageError(f"--max-unused must be between 0 and 100 percent, not {max_unused}")
    repo = open_repo(where, clock=clock, env=env)
    try:
        if not dry_run:
            repo.require_delete("prune")
        runs = ShardRuns(repo)
        report = prune_repository(
            repo, max_unused=max_unused, grace=grace, dry_run=dry_run, log=log, held=runs.held
        )
        report.shard_runs_removed = runs.remove_finished(dry_run=dry_run)
        report.shard_runs_kept = runs.kept
        report.problems += runs.problems
        if not dry_run:  # every run, also one with nothing to do: schedules are audited
            facts = {"plan": plan, "max_unused": max_unused, "grace_s": grace.total_seconds()}
            report.evidence = write_record(
                repo,
                PruneFacts.of({**facts, **report.to_dict()}),
                context=context or RunContext(plan),
                result="ok" if not report.problems else "partial",
            )
    finally:
        repo.close()
    up, down = transfer(repo, "up"), transfer(repo, "down")
    report.uploaded = up.to_dict() if up else None
    report.downloaded = down.to_dict() if down else None
    return report
