"""``bcdr forget``: apply a retention policy to a repository's snapshots.

Snapshots are grouped by job (snapshots without a job: by host and paths); the policy decides
per group, and the newest snapshot of every group is always kept. Forgetting removes snapshot
manifests only; the data they alone used is deleted by ``bcdr prune``. Every forget that
removes something writes an evidence record with each decision and its reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import tzinfo

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import ForgetFacts
from bcdr.errors import UsageError
from bcdr.repository import immutability
from bcdr.repository.locks import BACKUP
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.retention import Decision, Point, Policy, decide
from bcdr.storage.url import StorageSpec


@dataclass
class Group:
    job: str | None
    hostname: str | None  # for snapshots without a job
    paths: tuple[str, ...]
    decisions: list[Decision]

    @property
    def label(self) -> str:
        if self.job is not None:
            return f"job {self.job}"
        return f"host {self.hostname}, paths {' '.join(self.paths)}"

    def to_dict(self) -> dict[str, object]:
        return {
            "job": self.job,
            "hostname": self.hostname,
            "paths": list(self.paths),
            "decisions": [d.to_dict() for d in self.decisions],
        }


@dataclass
class ForgetResult:
    policy: Policy
    dry_run: bool
    groups: list[Group]
    removed: list[str] = field(default_factory=list)
    # dropped by the policy, but still under an immutability policy or a legal hold: a later
    # forget removes them (docs/immutability.md)
    waiting: list[str] = field(default_factory=list)
    waiting_note: str | None = None
    immutability: dict[str, object] | None = None  # the kept snapshots' policies extended
    evidence: str | None = None

    @property
    def kept(self) -> int:
        return sum(d.keep for g in self.groups for d in g.decisions)

    def to_dict(self) -> dict[str, object]:
        return {
            "policy": self.policy.to_dict(),
            "dry_run": self.dry_run,
            "kept": self.kept,
            "removed": self.removed,
            "waiting": self.waiting,
            "waiting_note": self.waiting_note,
            "immutability": self.immutability,
            "groups": [g.to_dict() for g in self.groups],
            "evidence": self.evidence,
        }


def _groups(snaps: list[Snapshot]) -> dict[tuple[object, ...], list[Snapshot]]:
    out: dict[tuple[object, ...], list[Snapshot]] = {}
    for s in snaps:
        key: tuple[object, ...] = (
            ("job", s.job) if s.job is not None else ("host", s.hostname, tuple(sorted(s.paths)))
        )
        out.setdefault(key, []).append(s)
    return out


def apply_retention(
    repo: Repository,
    policy: Policy,
    tz: tzinfo,
    *,
    job: str | None = None,
    dry_run: bool = False,
    plan: str | None = None,
    context: RunContext | None = None,
) -> ForgetResult:
    """Decide for every group (only ``job``'s when given) and, unless ``dry_run``, remove the
    snapshots the policy does not keep. The caller holds no lock; this takes a ``backup``
    lock (forgetting never conflicts with backups)."""
    if not policy.keeps_something():
        raise UsageError(
            "this retention policy keeps nothing",
            hint="give at least one --keep-* option with a value above zero",
        ) from None
    if not dry_run:
        repo.require_delete("forget")
    with repo.lock(BACKUP):
        now = repo.clock.now()
        groups = []
        for _, snaps in sorted(
            _groups(repo.list_snapshots(job)).items(), key=lambda kv: str(kv[0])
        ):
            first = snaps[0]
            points = [Point(s.id, s.datetime) for s in snaps]
            groups.append(
                Group(
                    first.job,
                    None if first.job is not None else first.hostname,
                    tuple(sorted(first.paths)),
                    decide(policy, points, now, tz),
                )
            )
        result = ForgetResult(policy, dry_run, groups)
        if dry_run:
            return result
        decisions = [d for group in groups for d in group.decisions]
        found = immutability.protections(repo, "snapshots/")
        free, waiting = immutability.deletable(
            repo, [f"snapshots/{d.point.id}" for d in decisions if not d.keep], found
        )
        for key in free:
            repo.storage.delete(key)
            result.removed.append(key.removeprefix("snapshots/"))
        if waiting.count:
            result.waiting = sorted(
                d.point.id for d in decisions if not d.keep and d.point.id not in result.removed
            )
            result.waiting_note = waiting.describe("forgotten snapshot(s)")
        kept = {f"snapshots/{d.point.id}" for d in decisions if d.keep}
        if immutability.capability(repo) is not None:
            ext = immutability.extend(repo, kept.__contains__, found=found)
            result.immutability = ext.to_dict()
        # recorded even when nothing was removed: the report shows retention was applied
        result.evidence = write_record(
            repo,
            ForgetFacts.of(
                {
                    "plan": plan,
                    "policy": policy.to_dict(),
                    "timezone": str(tz),
                    "groups": [g.to_dict() for g in groups],
                    "removed": result.removed,
                    "waiting": result.waiting,
                }
            ),
            context=context or RunContext(plan, None, job),
        )
    return result


def forget(
    where: StorageSpec | str,
    policy: Policy,
    tz: tzinfo,
    *,
    job: str | None = None,
    dry_run: bool = False,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> ForgetResult:
    repo = open_repo(where, clock=clock, env=env)
    return apply_retention(repo, policy, tz, job=job, dry_run=dry_run)
