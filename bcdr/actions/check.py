"""``bcdr check``: verify a repository's structure and, on request, its data."""

from __future__ import annotations

from collections.abc import Mapping

from bcdr.actions.common import open_repo, transfer
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import CheckFacts
from bcdr.errors import BcdrError, StoragePermission, UsageError
from bcdr.repository.check import Checker, CheckReport, ProgressFn
from bcdr.repository.locks import READ, read_wait
from bcdr.storage.url import StorageSpec


def check(
    where: StorageSpec | str,
    *,
    read_data: bool = False,
    subset_percent: float | None = None,
    seed: int | None = None,
    progress: ProgressFn | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
    context: RunContext | None = None,
) -> CheckReport:
    if subset_percent is not None and not 0 < subset_percent <= 100:
        raise UsageError(f"--read-data-subset must be in (0, 100], not {subset_percent}")
    fraction = 1.0 if read_data else (subset_percent or 0.0) / 100
    repo = open_repo(where, clock=clock, env=env)
    started = repo.clock.now().isoformat()
    with repo.lock(READ, wait=read_wait()):
        report = Checker(repo, progress).run(fraction, seed)
    report.downloaded = transfer(repo, "down")
    facts = {k: v for k, v in report.to_dict().items() if k not in ("downloaded", "evidence")}
    facts["errors"] = report.errors[:100]  # the count is in the report; the first ones named
    facts["error_count"] = len(report.errors)
    try:
        report.evidence = write_record(
            repo,
            CheckFacts.of(facts),
            context=context or RunContext(started=started),
            result="ok" if report.ok else "failed",
        )
    except StoragePermission:
        pass  # read-only access (an auditor's SAS): the check stands, unrecorded
    except BcdrError as exc:
        report.errors.append(f"the check could not be recorded as evidence: {exc}")
    return report
