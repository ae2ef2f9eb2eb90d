"""``bcdr repair index|snapshots``: make a damaged repository whole again, recording what was
lost. See :mod:`bcdr.repository.repair` and docs/repair.md."""

from __future__ import annotations

from collections.abc import Mapping

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import RepairFacts
from bcdr.repository.locks import BACKUP, PRUNE
from bcdr.repository.repair import (
    IndexRepair,
    SnapshotRepair,
    repair_index,
    repair_snapshots,
)
from bcdr.storage.url import StorageSpec


def repair_index_action(
    where: StorageSpec | str,
    *,
    dry_run: bool = False,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[IndexRepair, str | None]:
    """Rebuild the index from the packs (under the ``prune`` lock: no prune deletes packs
    meanwhile). Returns the report and the id of its evidence record (None on a dry run or
    when nothing changed)."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        if not dry_run:
            repo.require_delete("repair index")
        started = repo.clock.now().isoformat()
        with repo.lock(PRUNE):
            report = repair_index(repo, dry_run=dry_run)
        evidence = None
        if report.changed and not dry_run:
            evidence = write_record(
                repo,
                RepairFacts.of({"what": "index", **report.to_dict()}),
                context=RunContext(started=started),
            )
        return report, evidence
    finally:
        repo.close()


def repair_snapshots_action(
    where: StorageSpec | str,
    *,
    forget: bool = False,
    dry_run: bool = False,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[SnapshotRepair, str | None]:
    """Rewrite snapshots around lost trees and chunks (under a ``backup`` lock, as forget)."""
    repo = open_repo(where, clock=clock, env=env)
    try:
        if not dry_run:
            repo.require_delete("repair snapshots")
        started = repo.clock.now().isoformat()
        with repo.lock(BACKUP):
            repo.load_index(verify_packs=True)
            report = repair_snapshots(repo, forget=forget, dry_run=dry_run)
        evidence = None
        if report.changed and not dry_run:
            evidence = write_record(
                repo,
                RepairFacts.of({"what": "snapshots", **report.to_dict()}),
                context=RunContext(started=started),
                result="partial" if any(r.new is None for r in report.repaired) else "ok",
            )
        return report, evidence
    finally:
        repo.close()
