"""``bcdr drill``: prove that a plan's backups (or disk snapshots) restore, and how fast.

A backup drill:

1. opens the repository and picks the job's newest snapshot (or the one asked for);
2. chooses the files: all of them (`sample: 100%`), or a random share of them drawn with a seed
   that is recorded, so ``--seed`` replays the same choice;
3. restores them into scratch space under a read lock;
4. reads every restored file back from disk and compares its size and digest with the ones the
   snapshot recorded (independently of the restore's own check);
5. optionally (``compare_source``) compares source files unchanged since the snapshot (same size
   and mtime) with what was restored: a difference is drift, reported, not failed;
6. measures time to first byte and the time to a verified restore (achieved RTO), and the
   snapshot's age (achieved RPO, against the backup job's ``rpo``);
7. cleans up (unless ``keep``) and writes an evidence record.

A disk drill creates a disk from the newest recovery point in the scratch region, waits until it
succeeded, checks its size, and deletes it (``bcdr.disks.restore``).

The verdict is ``pass`` when everything verified and every target was met, else ``fail`` with
the reasons (the files or disks at fault named).
"""

from __future__ import annotations

import math
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bcdr import retrybudget
from bcdr.actions import shardrestore, slurm
from bcdr.actions.common import (
    open_or_init,
    open_plan_repo,
    password_env,
    plan_storage_spec,
    run_context,
)
from bcdr.actions.disks import ServiceFor, azure_service, disk_job, evidence_repository
from bcdr.actions.restore import restore_snapshot
from bcdr.actions.shard import SLURM_POLL
from bcdr.actions.snapshots import walk
from bcdr.archive import readback
from bcdr.archive.filerestore import file_digest
from bcdr.archive.patterns import PathSet
from bcdr.archive.restore import ProgressFn, RestoreStats
from bcdr.archive.statahead import StatAhead
from bcdr.clock import Clock, SystemClock
from bcdr.compliance.controls import rto_estimate
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import DrillFacts
from bcdr.disks.restore import delete_restored, restore_disk
from bcdr.errors import BcdrError, RepositoryNotFound, SnapshotNotFound, UsageError
from bcdr.plan.model import Drill, Plan, ScaleOut
from bcdr.plan.types import Duration
from bcdr.repository.bounds import check_snapshot_size
from bcdr.repository.hashing import new_fingerprint
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import FILE, Node
from bcdr.units import human_seconds

PASS, FAIL = "pass", "fail"
EVIDENCE_KIND = "drill"
MAX_NAMED = 20  # files named in a verdict; the evidence record has them all
Timer = Callable[[], float]


def _hs(seconds: float) -> str:
    return human_seconds(seconds, precision=2)


@dataclass
class DrillReport:
    plan: str
    drill: str
    kind: str  # backup | disk
    job: str  # the backup or snapshot job drilled
    started: str
    verdict: str = FAIL
    reasons: list[str] = field(default_factory=list)
    snapshot: str | None = None  # snapshot id / recovery point id
    snapshot_time: str | None = None
    repository: str | None = None  # the plan's name of the repository restored from
    shards: int | None = None  # scale_out: the parts the restore was spread over, and where
    executor: str | None = None
    slurm_jobs: list[str] = field(default_factory=list)
    read_back: str | None = None  # who read the restored files back: drill | parts
    recovery_point: str | None = None  # the snapshot's id where it was backed up (a copy's)
    seed: int | None = None
    sample_percent: float = 100.0
    sample_digest: str | None = None  # of the chosen paths: a replay with the seed matches it
    files_total: int = 0
    files_selected: int = 0
    bytes_selected: int = 0
    bytes_total: int = 0  # of every file in the snapshot: a sample's share of the bytes
    files_verified: int = 0
    bytes_verified: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)  # path, error
    drift: list[dict[str, str]] = field(default_factory=list)  # compare_source findings
    source_compared: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    ttfb_s: float | None = None
    rto_s: float | None = None
    rto_target_s: float | None = None
    rto_target: str | None = None  # as the plan writes it ("15m")
    rto_estimate_s: float | None = None  # sampled drills: a full restore's time, estimated
    rto_estimate_method: str | None = None
    rpo_s: float | None = None
    rpo_target_s: float | None = None
    rpo_target: str | None = None
    scratch: str | None = None
    kept: bool = False
    scratch_region: str | None = None  # disk drills: where the trial disks were made
    restored_disks: list[dict[str, Any]] = field(default_factory=list)  # made, then deleted
    evidence: str | None = None
    error: str | None = None  # the drill could not run

    @property
    def passed(self) -> bool:
        return self.verdict == PASS

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Phases:
    def __init__(self, timer: Timer, report: DrillReport):
        self.timer = timer
        self.report = report
        self.t0 = timer()

    def done(self, name: str, since: float) -> float:
        now = self.timer()
        self.report.phases[name] = round(now - since, 6)
        return now


def run_drill(
    plan: Plan,
    name: str,
    *,
    snapshot: str | None = None,
    seed: int | None = None,
    clock: Clock | None = None,
    timer: Timer = time.monotonic,
    service_for: ServiceFor = azure_service,
    progress: ProgressFn | None = None,
) -> DrillReport:
    """Run one drill of the plan; the report says pass or fail and why. Raises BcdrError only
    when the drill could not run at all (no repository, no snapshot, unreadable)."""
    drill = plan.drills[name]
    clock = clock or SystemClock()
    retrybudget.set_from_plan(plan.retry_budget.seconds if plan.retry_budget else None)
    if drill.backup is not None:
        report = DrillReport(plan.name, name, "backup", drill.backup, clock.now().isoformat())
        _backup_drill(plan, drill, report, snapshot, seed, clock, timer, progress)
        repo_name = plan.backups[drill.backup].repository
    else:
        assert drill.snapshot is not None
        report = DrillReport(plan.name, name, "disk", drill.snapshot, clock.now().isoformat())
        _disk_drill(plan, drill, report, snapshot, clock, timer, service_for)
        repo_name = evidence_repository(plan, plan.snapshots[drill.snapshot])
    _judge(report)
    repo, _ = open_or_init(plan, repo_name, clock)
    try:
        report.evidence = write_record(
            repo,
            DrillFacts.of(report.to_dict()),
            context=run_context(plan, name, report.started),
            result="ok" if report.passed else "failed",
        )
    finally:
        repo.close()
    return report


def _targets(report: DrillReport, drill: Drill, rpo: Duration | None) -> None:
    report.rto_target_s, report.rto_target = float(drill.rto.seconds), drill.rto.text
    if rpo is not None:
        report.rpo_target_s, report.rpo_target = float(rpo.seconds), rpo.text


def _judge(report: DrillReport) -> None:
    reasons = report.reasons
    if report.failures:
        named = ", ".join(f["path"] for f in report.failures[:MAX_NAMED])
        more = len(report.failures) - MAX_NAMED
        reasons.append(
            f"{len(report.failures)} restored item(s) failed verification: {named}"
            + (f" and {more} more" if more > 0 else "")
        )
    if report.rto_estimate_s is not None and report.rto_target_s is not None:
        if report.rto_estimate_s > report.rto_target_s:
            reasons.append(
                f"RTO missed: the sample ({report.sample_percent:g}%) took "
                f"{_hs(report.rto_s or 0)}, so a full restore would take about "
                f"{_hs(report.rto_estimate_s)}; the target is {report.rto_target}"
            )
    elif report.rto_s is not None and report.rto_target_s is not None:
        if report.rto_s > report.rto_target_s:
            reasons.append(
                f"RTO missed: the restore took {_hs(report.rto_s)}, the target is "
                f"{report.rto_target}"
            )
    if report.rpo_s is not None and report.rpo_target_s is not None:
        if report.rpo_s > report.rpo_target_s:
            reasons.append(
                f"RPO missed: the recovery point is {_hs(report.rpo_s)} old, the "
                f"target is {report.rpo_target}"
            )
    report.verdict = PASS if not reasons else FAIL


# --- backup drills ---------------------------------------------------------------------------


def _files(
    repo: Repository, tree_id: bytes, failures: list[dict[str, str]]
) -> list[tuple[bytes, Node]]:
    """Every file of the snapshot; a folder listing that cannot be read is a failure (its
    files cannot be restored) and the walk goes on."""

    def unreadable(path: bytes, exc: BcdrError) -> None:
        failures.append(
            {"path": os.fsdecode(path), "error": f"cannot read directory listing: {exc}"}
        )

    return [(p, n) for p, n in walk(repo, tree_id, on_error=unreadable) if n.type == FILE]


def choose(files: list[tuple[bytes, Node]], percent: float, seed: int) -> list[tuple[bytes, Node]]:
    """A random ``percent`` of ``files`` (at least one), the same for the same seed and files."""
    if percent >= 100 or not files:
        return files
    ordered = sorted(files, key=lambda f: f[0])
    k = max(1, math.ceil(len(ordered) * percent / 100))
    picked = random.Random(seed).sample(range(len(ordered)), k)
    return [ordered[i] for i in sorted(picked)]


def _backup_drill(
    plan: Plan,
    drill: Drill,
    report: DrillReport,
    ref: str | None,
    seed: int | None,
    clock: Clock,
    timer: Timer,
    progress: ProgressFn | None,
) -> None:
    assert drill.backup is not None
    job = plan.backups[drill.backup]
    phases = _Phases(timer, report)
    t = phases.t0
    source = drill.repository or job.repository  # a copy_to one: the region-loss drill
    report.repository = source
    try:
        repo = open_plan_repo(plan, source, clock)
    except RepositoryNotFound as exc:
        raise RepositoryNotFound(
            f"repository {source!r} does not exist yet: nothing to drill",
            where=exc.where,
            hint=f"run the backup job first: bcdr run {plan.file} --job {drill.backup}",
        ) from None
    scratch_parent = drill.scratch
    target = ""
    try:
        with repo.lock(READ, wait=read_wait()):
            try:
                snap = repo.resolve_snapshot(ref or "latest", drill.backup)
            except SnapshotNotFound as exc:
                exc.hint = exc.hint or f"run the backup job first: bcdr run --job {drill.backup}"
                raise
            report.snapshot, report.snapshot_time = snap.id, snap.time
            report.recovery_point = snap.recovery_point
            repo.load_index(verify_packs=True)
            t = phases.done("open", t)

            check_snapshot_size(repo, bytes.fromhex(snap.tree), f"snapshot {snap.short_id}")
            files = _files(repo, bytes.fromhex(snap.tree), report.failures)
            report.seed = seed if seed is not None else secrets.randbits(63)
            report.sample_percent = drill.sample.value
            chosen = choose(files, drill.sample.value, report.seed)
            report.files_total = len(files)
            report.files_selected = len(chosen)
            report.bytes_selected = sum(n.size for _, n in chosen)
            report.bytes_total = sum(n.size for _, n in files)
            listing = new_fingerprint()
            for p, _ in chosen:
                listing.update(p + b"\0")
            report.sample_digest = listing.hexdigest()
            t = phases.done("select", t)

            if scratch_parent is not None:
                os.makedirs(scratch_parent, exist_ok=True)
            target = tempfile.mkdtemp(prefix=f"bcdr-drill-{report.drill}-", dir=scratch_parent)
            report.scratch = target
            restore_started = t
            parts_read_back = False
            if drill.scale_out is not None:
                stats, parts_read_back = _scaled_restore(
                    plan, source, snap, target, drill.scale_out, report
                )
            else:
                stats = restore_snapshot(
                    repo,
                    snap,
                    target,
                    includes=PathSet(p for p, _ in chosen) if len(chosen) < len(files) else None,
                    progress=progress,
                    sized=True,
                )
            t = phases.done("restore", t)
            if stats.first_byte_s is not None:
                report.ttfb_s = round(restore_started - phases.t0 + stats.first_byte_s, 6)
        seen = {f["path"] for f in report.failures}
        report.failures.extend(
            {"path": e["path"], "error": e["error"]} for e in stats.errors if e["path"] not in seen
        )
        failed = {e["path"] for e in stats.errors}
        if parts_read_back:  # each part read back its own files, all as the snapshot has them
            report.read_back = "parts"
            report.files_verified = len(chosen)
            report.bytes_verified = report.bytes_selected
        else:
            report.read_back = "drill"
            _verify(report, target, chosen, failed)
        t = phases.done("verify", t)
        report.rto_s = round(t - phases.t0, 6)
        estimate, report.rto_estimate_method = rto_estimate(DrillFacts.of(report.to_dict()))
        report.rto_estimate_s = None if estimate is None else round(estimate, 6)
        _targets(report, drill, job.rpo)
        report.rpo_s = round((clock.now() - snap.datetime).total_seconds(), 3)
        if drill.compare_source:
            _compare_source(report, target, chosen, failed)
            t = phases.done("compare_source", t)
    finally:
        repo.close()
        if target:
            if drill.keep:
                report.kept = True
            else:
                shutil.rmtree(target, ignore_errors=True)
            phases.done("cleanup", t)


def _scaled_restore(
    plan: Plan, source: str, snap: Snapshot, target: str, scale: ScaleOut, report: DrillReport
) -> tuple[RestoreStats, bool]:
    """``scale_out``: the whole snapshot restored by the plan's executor in parts (waited
    for), each reading back the files it wrote (``--verify``), then finished here. The stats
    of the whole, a failed part's as an error; and whether every file was read back by the
    parts, all as the snapshot has them (every part succeeded, and the finish found every
    file in place; else the drill reads everything back itself, to name what is wrong)."""
    declared = plan.repositories[source]
    spec, env = plan_storage_spec(declared), password_env(declared)
    options = shardrestore.RestoreOptions(verify=True)
    report.shards, report.executor = scale.shards, scale.executor
    if scale.executor == "slurm":
        sub = shardrestore.submit_slurm(
            spec,
            snap,
            target,
            scale.shards,
            options,
            slurm.options_of(scale.slurm),
            finish_job=False,
            env=env,
        )
        report.slurm_jobs = [sub.array]
        outcome = slurm.wait(sub, poll=SLURM_POLL)
        result = shardrestore.ShardedRestore(
            snap, target, shardrestore.slurm_parts(sub, outcome, scale.shards)
        )
        if not result.failed:
            result.finish = shardrestore.finish(spec, snap, target, options, env=env)
    else:
        result = shardrestore.restore_local(spec, snap, target, scale.shards, options, env=env)
    stats = result.finish.stats if result.finish is not None else RestoreStats()
    for part in result.parts:
        if not part.ok:
            stats.errors.append({"path": f"(part {part.index})", "error": part.error})
    read_back = result.ok
    if scale.executor == "local":  # their counts are at hand: each read back what it wrote
        read_back = read_back and all(p.files_read_back == p.files for p in result.parts)
    return stats, read_back


def _verify(
    report: DrillReport, target: str, chosen: list[tuple[bytes, Node]], failed: set[str]
) -> None:
    """Read every restored file back and compare size and digest with the snapshot's
    (bcdr/archive/readback.py), READERS files at a time."""
    base = os.fsencode(target)
    todo = [(path, node) for path, node in chosen if os.fsdecode(path) not in failed]
    readers = StatAhead(threads=readback.READERS)
    try:
        items = [(os.path.join(base, path.lstrip(b"/")), node) for path, node in todo]
        results = readers.map(readback.read_path, items, readers.reads_ahead())
        for (path, node), result in zip(todo, results, strict=True):
            _count_read_back(report, os.fsdecode(path), node, result)
    finally:
        readers.close()


def _count_read_back(
    report: DrillReport, shown: str, node: Node, result: readback.ReadBack
) -> None:
    """Count a file read back as the snapshot has it, or record how it differs."""
    wrong = readback.finding(node, result)
    if wrong is not None:
        report.failures.append({"path": shown, "error": wrong})
    else:
        report.files_verified += 1
        report.bytes_verified += node.size


def _compare_source(
    report: DrillReport, target: str, chosen: list[tuple[bytes, Node]], failed: set[str]
) -> None:
    """Source files with the size and mtime the snapshot recorded should hold the same bytes."""
    for path, node in chosen:
        if os.fsdecode(path) in failed:
            continue
        try:
            st = os.lstat(path)
        except OSError:
            continue  # gone from the source since: nothing to compare
        if st.st_size != node.size or st.st_mtime_ns != node.mtime_ns:
            continue  # changed since the snapshot, legitimately
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            digest = file_digest(fd, st.st_size, node.digest)
        finally:
            os.close(fd)
        report.source_compared += 1
        if digest != node.digest:
            report.drift.append(
                {
                    "path": os.fsdecode(path),
                    "finding": "the source file has the size and mtime of the snapshot but "
                    "different bytes (silent corruption on the source, or an in-place write "
                    "that kept the mtime)",
                }
            )


# --- disk drills -----------------------------------------------------------------------------


def _disk_drill(
    plan: Plan,
    drill: Drill,
    report: DrillReport,
    ref: str | None,
    clock: Clock,
    timer: Timer,
    service_for: ServiceFor,
) -> None:
    assert drill.snapshot is not None
    job = plan.snapshots[drill.snapshot]
    runner = disk_job(plan, drill.snapshot, clock, service_for)
    region = drill.scratch_region or job.region
    phases = _Phases(timer, report)
    t = phases.t0
    made = report.restored_disks
    oldest: datetime | None = None
    for disk in (str(d) for d in job.disks):
        restored = None
        try:
            restored = restore_disk(runner, disk, region, point=ref)
            made.append(restored.to_dict())
            when = datetime.fromisoformat(restored.point_time)
            oldest = when if oldest is None or when < oldest else oldest
            if not restored.size_ok:
                report.failures.append(
                    {
                        "path": disk,
                        "error": f"restored disk has {restored.size_gb} GiB, the recovery point "
                        f"{restored.expected_size_gb} GiB",
                    }
                )
            else:
                report.files_verified += 1
        except BcdrError as exc:
            report.failures.append({"path": disk, "error": str(exc)})
        finally:
            if restored is not None and not drill.keep:
                try:
                    delete_restored(runner, restored)
                    made[-1]["deleted"] = True
                except BcdrError as exc:
                    report.reasons.append(f"could not delete trial disk {restored.name}: {exc}")
    t = phases.done("restore", t)
    report.scratch_region = region
    report.files_total = report.files_selected = len(job.disks)
    report.kept = drill.keep
    report.rto_s = round(t - phases.t0, 6)
    _targets(report, drill, job.rpo)
    if oldest is not None:
        report.rpo_s = round((clock.now() - oldest).total_seconds(), 3)
        report.snapshot_time = oldest.isoformat()


def drills_to_run(plan: Plan, names: list[str]) -> list[str]:
    if not plan.drills:
        raise UsageError(
            "the plan has no drills",
            where=str(plan.file),
            hint="add a `drills:` entry naming a backup job and an rto (docs/plans.md)",
        )
    for n in names:
        if n not in plan.drills:
            from bcdr.plan.schema import did_you_mean

            raise UsageError(
                f"the plan has no drill named {n!r}",
                where=str(plan.file),
                hint=did_you_mean(n, plan.drills) or f"drills: {', '.join(plan.drills)}",
            )
    return names or list(plan.drills)


class _Measured(Protocol):
    """A drill's figures, as its report or its evidence record carries them."""

    @property
    def rto_s(self) -> float | None: ...
    @property
    def rto_estimate_s(self) -> float | None: ...
    @property
    def rto_target_s(self) -> float | None: ...
    @property
    def rpo_s(self) -> float | None: ...
    @property
    def rpo_target_s(self) -> float | None: ...
    @property
    def bytes_verified(self) -> int: ...


def drill_measures(d: _Measured) -> dict[str, float]:
    """What the run history keeps of a drill for metrics: the RTO it achieved (its estimate
    for a full restore when it restored a sample) and its target, the RPO likewise, the bytes
    it verified. Nothing for a drill that never restored."""
    if d.rto_s is None:
        return {}
    figures = {
        "rto_s": d.rto_estimate_s if d.rto_estimate_s is not None else d.rto_s,
        "rto_target_s": d.rto_target_s,
        "rpo_s": d.rpo_s,
        "rpo_target_s": d.rpo_target_s,
        "bytes_verified": float(d.bytes_verified),
    }
    return {k: float(v) for k, v in figures.items() if v is not None}
