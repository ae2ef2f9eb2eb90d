"""Controls: pure functions from a plan, its evidence records, a window and "now" to PASS, FAIL
or NO EVIDENCE, each with the evidence ids behind it (STYLE.md: decisions as pure functions).

``evaluate`` builds the whole report document (``docs/report-schema.md``, version 1); the
renderers (``compliance/render.py``) only lay it out. Nothing here reads storage or the clock.

Per job kind:

- backup: schedule adherence, RPO, RTO (its drills), restore verification (its drills),
  retention, residency, integrity (the repository's last check), encryption (when the plan
  asks for it);
- disk snapshot: schedule adherence, RPO (per disk), copies, RTO and restore verification
  (disk drills), retention, residency;
- drill, check, prune: schedule adherence and their latest result.

Every repository the plan names also gets an "evidence chain" control: records the chain marks
as altered, reordered or inserted are not used as evidence for anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from croniter import croniter
from msgspec import to_builtins

from bcdr.compliance.anchors import token as anchor_token
from bcdr.compliance.records import (
    BackupFacts,
    CheckFacts,
    CopyFacts,
    DiskSnapshotFacts,
    DrillFacts,
    Facts,
    ForgetFacts,
    Record,
    typed,
)
from bcdr.geo.catalog import Catalog, catalog
from bcdr.geo.residency import Allowed
from bcdr.plan.kinds import KINDS, JobKind
from bcdr.plan.model import Plan, Timing
from bcdr.plan.residency import allowed
from bcdr.plan.schedules import cron_for
from bcdr.units import human_bytes, human_seconds

SCHEMA = "bcdr.report/1"
PASS, FAIL, NO_EVIDENCE = "PASS", "FAIL", "NO EVIDENCE"
GOOD = ("ok", "partial")
SLOT_GRACE = timedelta(hours=1)  # the newest slot is "pending", not missed, this long
MAX_SLOTS = 20000  # a minutely cron over a year would be absurd to enumerate


@dataclass
class RepoEvidence:
    """What the report knows about one repository of the plan."""

    name: str
    url: str
    encryption: str | None = None  # "none", "aes-256-gcm"; None when it could not be read
    records: list[Record[Facts]] = field(default_factory=list)
    chain: dict[str, Any] = field(default_factory=dict)  # ChainReport.to_dict()
    error: str | None = None  # the repository could not be read
    immutable_days: int | None = None  # the plan's immutability (days), if any


AnyRecord = Record[Facts]
R = TypeVar("R", bound=Record[Any])


def _newest(runs: list[R]) -> R:
    return max(runs, key=lambda r: r.time)


def _at(when: datetime, length: int = 16) -> str:
    return when.isoformat()[:length]


def control(
    cid: str, title: str, status: str, summary: str, evidence: Iterable[str] = (), **details: Any
) -> dict[str, Any]:
    return {
        "id": cid,
        "title": title,
        "status": status,
        "summary": summary,
        "evidence": sorted(set(evidence)),
        "details": details,
    }


# --- the pieces ------------------------------------------------------------------------------


def schedule_control(
    plan: Plan,
    name: str,
    job: Timing,
    runs: Sequence[AnyRecord],
    start: datetime,
    now: datetime,
    meets: tuple[str, ...] | None = GOOD,
) -> tuple[dict[str, Any], list[str]]:
    """Slots of the job's schedule in [start, now] against the runs that meet a slot (results
    in ``meets``; None: any run that finished, for jobs whose result is a control of its own:
    a drill that ran and failed kept its schedule); and the missed slots."""
    tz = plan.timezone.zone
    cron = cron_for(job.schedule, plan.name, name, job.at, job.on)
    it = croniter(cron, start.astimezone(tz))
    slots: list[datetime] = []
    while len(slots) < MAX_SLOTS:
        s: datetime = it.get_next(datetime)
        if s > now:
            break
        slots.append(s)
    good = sorted(
        (r.started, r.id)
        for r in runs
        if (meets is None or r.result in meets) and r.started is not None
    )
    missed: list[str] = []
    met_by: set[str] = set()
    for i, slot in enumerate(slots):
        end = slots[i + 1] if i + 1 < len(slots) else croniter(cron, slot).get_next(datetime)
        hit = [rid for t, rid in good if slot <= t < end]
        if hit:
            met_by.add(hit[0])
        elif i == len(slots) - 1 and now - slot < SLOT_GRACE:
            continue  # the newest slot may still be running
        else:
            missed.append(slot.isoformat())
    expected = len(slots)
    if not runs:
        return (
            control(
                "schedule",
                "Schedule adherence",
                NO_EVIDENCE,
                f"no run recorded; {expected} slot(s) expected since {start:%Y-%m-%d}",
                expected=expected,
                missed=missed,
            ),
            missed,
        )
    status = FAIL if missed else PASS
    passed = sum(1 for r in runs if r.result in GOOD)
    done = f"{len(good)} good run(s)" if meets is not None else f"{len(runs)} run(s), {passed} ok"
    summary = (
        f"{expected - len(missed)} of {expected} slot(s) met, {done}"
        if expected
        else f"no slot due yet; {done}"
    )
    if missed:
        summary += f"; missed: {', '.join(m[:16] for m in missed[:5])}" + (
            f" and {len(missed) - 5} more" if len(missed) > 5 else ""
        )
    return (
        control(
            "schedule",
            "Schedule adherence",
            status,
            summary,
            met_by or {r.id for r in runs},
            expected=expected,
            done=len(good),
            missed=missed,
            cron=cron,
        ),
        missed,
    )


def rpo_control(
    target: Any, points: list[tuple[datetime, str]], since: datetime, now: datetime, what: str
) -> dict[str, Any]:
    """The longest time without a good recovery point, within the window and up to now."""
    if not points:
        return control("rpo", "RPO", NO_EVIDENCE, f"no recovery point of {what} recorded")
    points = sorted(points)
    before = [p for p in points if p[0] < since]
    inside = [p for p in points if p[0] >= since]
    chain = (before[-1:] + inside) or points[-1:]
    worst, worst_from, worst_to = 0.0, chain[0][0], chain[0][0]
    for (a, _), (b, _) in zip(chain, chain[1:], strict=False):
        if (b - a).total_seconds() > worst:
            worst, worst_from, worst_to = (b - a).total_seconds(), a, b
    age = (now - chain[-1][0]).total_seconds()
    if age > worst:
        worst, worst_from, worst_to = age, chain[-1][0], now
    ids = [rid for _, rid in chain]
    details = {
        "longest_gap_s": round(worst, 1),
        "gap_from": worst_from.isoformat(),
        "gap_to": worst_to.isoformat(),
        "newest_age_s": round(age, 1),
        "target_s": target.seconds if target else None,
        "target": target.text if target else None,
        "recovery_points": len(inside),
    }
    if target is None:
        return control(
            "rpo",
            "RPO",
            PASS,
            f"no target; longest gap {human_seconds(worst)}, newest {human_seconds(age)} old",
            ids,
            **details,
        )
    ok = worst <= target.seconds
    summary = (
        f"longest gap {human_seconds(worst)} ({worst_from:%Y-%m-%d %H:%M} to "
        f"{worst_to:%Y-%m-%d %H:%M}), newest {human_seconds(age)} old; target {target}"
    )
    return control("rpo", "RPO", PASS if ok else FAIL, summary, ids, **details)


def rto_estimate(facts: DrillFacts) -> tuple[float | None, str | None]:
    """A full restore's time estimated from a sampled drill, and how: the fixed phases (open,
    select) as measured, the phases that grow with the data (restore, verify) scaled by the
    snapshot's bytes over the bytes restored (by files when the record has no byte total).
    (None, None) for a full drill."""
    if facts.rto_s is None or not facts.sampled:
        return None, None
    if facts.bytes_total and facts.bytes_selected:
        scale, by = facts.bytes_total / facts.bytes_selected, "bytes"
    elif facts.files_total and facts.files_selected:
        scale, by = facts.files_total / facts.files_selected, "files"
    else:
        return None, None
    phases = facts.phases
    growing = sum(float(phases.get(k) or 0) for k in ("restore", "verify")) or facts.rto_s
    fixed = max(facts.rto_s - growing, 0.0)
    method = (
        f"restore and verify times scaled by the snapshot's {by} over the {by} restored "
        f"(x{scale:.3g}), open and select as measured"
    )
    return fixed + growing * scale, method


def sample_label(facts: DrillFacts) -> str | None:
    """ "sampled: 10% of files (12 of 120), 9.8% of bytes", or None for a full drill."""
    if not facts.sampled:
        return None
    label = (
        f"sampled: {facts.sample_percent:g}% of files ({facts.files_selected} of "
        f"{facts.files_total})"
    )
    if facts.bytes_total:
        label += f", {facts.bytes_selected / facts.bytes_total:.1%} of bytes"
    return label


def drill_controls(drills: list[Record[DrillFacts]], names: list[str]) -> list[dict[str, Any]]:
    """RTO and restore verification from the newest drill of the job. A sampled drill is
    labelled, and its RTO judged by the estimate of a full restore."""
    if not drills:
        why = (
            f"no drill recorded ({', '.join(names)} in the plan)"
            if names
            else "no drill in the plan restores this job"
        )
        return [
            control("rto", "RTO (drills)", NO_EVIDENCE, why),
            control("restore", "Restore verification (drills)", NO_EVIDENCE, why),
        ]
    latest = _newest(drills)
    f = latest.facts
    rto, target = f.rto_s, f.rto_target_s
    sampled = sample_label(f)
    estimate, method = rto_estimate(f)
    prefix = f"newest drill {_at(latest.time)}" + (f" ({sampled})" if sampled else "")
    if rto is None or target is None:
        rto_c = control("rto", "RTO (drills)", NO_EVIDENCE, "the newest drill measured no RTO")
    else:
        judged = estimate if estimate is not None else rto
        measured = f"{human_seconds(rto)} measured"
        if estimate is not None:
            measured += f", a full restore estimated at {human_seconds(estimate)}"
        rto_c = control(
            "rto",
            "RTO (drills)",
            PASS if judged <= target else FAIL,
            f"{prefix}: {measured}; target {f.rto_target or human_seconds(target)}",
            [latest.id],
            rto_s=rto,
            target_s=target,
            sampled=sampled is not None,
            sample_percent=f.sample_percent,
            rto_estimate_s=_rounded(estimate),
            estimate_method=method,
        )
    failures = f.failures
    restore_c = control(
        "restore",
        "Restore verification (drills)",
        FAIL if failures else PASS,
        (
            f"{prefix}: {len(failures)} item(s) failed verification"
            if failures
            else f"{prefix} verified {f.files_verified} item(s), {human_bytes(f.bytes_verified)}"
        ),
        [latest.id],
        failures=failures[:20],
        sampled=sampled is not None,
        sample_percent=f.sample_percent,
    )
    return [rto_c, restore_c]


def retention_control(
    configured: bool, records: list[Record[ForgetFacts]], what: str = "forget"
) -> dict[str, Any] | None:
    if not configured:
        return None
    if not records:
        return control("retention", "Retention", NO_EVIDENCE, f"no {what} recorded in the window")
    latest = _newest(records)
    f = latest.facts
    return control(
        "retention",
        "Retention",
        PASS,
        f"applied {_at(latest.time)}: kept {f.kept_count}, removed {len(f.removed)}",
        [latest.id],
        policy=f.policy,
        groups=[to_builtins(g) for g in f.groups],
    )


def residency_control(
    rule: Allowed | None, places: list[tuple[str, str, str | None]], cat: Catalog
) -> dict[str, Any]:
    """``places``: (region, how known: verified/declared/…, evidence id)."""
    if not places:
        return control("residency", "Residency", NO_EVIDENCE, "no region recorded")
    regions: dict[str, set[str]] = {}
    ids: list[str] = []
    for region, how, rid in places:
        regions.setdefault(region, set()).add(how)
        if rid:
            ids.append(rid)
    outside = []
    for region in regions:
        known = cat.get(region)
        if rule is not None and (known is None or not rule.admits(known)):
            outside.append(region)
    listed = ", ".join(f"{r} ({'/'.join(sorted(h))})" for r, h in sorted(regions.items()))
    if outside:
        return control(
            "residency",
            "Residency",
            FAIL,
            f"outside {rule.describe() if rule else 'the rule'}: {', '.join(outside)}; "
            f"all: {listed}",
            ids,
            regions=sorted(regions),
        )
    summary = f"data in {listed}" + (f"; allowed: {rule.describe()}" if rule else "")
    return control("residency", "Residency", PASS, summary, ids, regions=sorted(regions))


def copies_control(
    job: str,
    rpo: Any,
    points: list[tuple[datetime, str, str]],
    copies: dict[str, dict[str, tuple[datetime, str]]],
    now: datetime,
) -> dict[str, Any]:
    """Each recovery point of the window (time, snapshot, record) is present in every
    ``copy_to`` repository, within the RPO of its time (``copies``: repository -> recovery
    point -> when the copy record says it was there, and that record). Without an RPO, a
    point must be copied once a newer point exists (the next run copies what one missed)."""
    if not points:
        return control("copies", "Copies", NO_EVIDENCE, f"no recovery point of job {job} recorded")
    points = sorted(points)
    newest = points[-1][0]
    late: list[str] = []
    missing: list[str] = []
    pending = 0
    ids: list[str] = []
    worst = 0.0
    for repo, held in sorted(copies.items()):
        for when, snap, _ in points:
            found = held.get(snap)
            deadline = (when + timedelta(seconds=rpo.seconds)) if rpo else None
            if found is not None:
                lag = (found[0] - when).total_seconds()
                worst = max(worst, lag)
                ids.append(found[1])
                if rpo is not None and lag > rpo.seconds:
                    late.append(f"{snap[:8]} reached {repo} {human_seconds(lag)} after it was made")
            elif (deadline is not None and now > deadline) or (deadline is None and when < newest):
                missing.append(f"{snap[:8]} ({when:%Y-%m-%d %H:%M}) is not in {repo}")
            else:
                pending += 1
    where = ", ".join(sorted(copies))
    details = {
        "repositories": sorted(copies),
        "recovery_points": len(points),
        "missing": len(missing),
        "late": len(late),
        "pending": pending,
        "longest_lag_s": round(worst, 1),
        "target_s": rpo.seconds if rpo else None,
    }
    if missing or late:
        problems = missing + late
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        return control("copies", "Copies", FAIL, "; ".join(problems[:3]) + more, ids, **details)
    summary = (
        f"{len(points)} recovery point(s) in {where}, longest lag {human_seconds(worst)}"
        + (f" (target {rpo})" if rpo else "")
        + (f"; {pending} still within the RPO" if pending else "")
    )
    return control("copies", "Copies", PASS, summary, ids, **details)


def latest_result_control(cid: str, title: str, runs: list[AnyRecord]) -> dict[str, Any]:
    if not runs:
        return control(cid, title, NO_EVIDENCE, "no run recorded in the window")
    latest = _newest(runs)
    ok = latest.result in GOOD
    said = latest.facts.failure(", ")
    return control(
        cid,
        title,
        PASS if ok else FAIL,
        f"newest run {_at(latest.time)}: {latest.result}"
        + (f" ({said})" if said and not ok else ""),
        [latest.id],
    )


def integrity_control(checks: list[Record[CheckFacts]]) -> dict[str, Any]:
    if not checks:
        return control(
            "integrity", "Integrity check", NO_EVIDENCE, "no check of the repository recorded"
        )
    latest = _newest(checks)
    f = latest.facts
    errors = f.errors_found
    covered = (
        f"{f.read_fraction:.0%} of the data read ({human_bytes(f.bytes_read)}, "
        f"{f.packs_read} of {f.packs} packs), {f.snapshots} snapshots"
    )
    return control(
        "integrity",
        "Integrity check",
        FAIL if errors else PASS,
        f"last check {_at(latest.time)}: "
        + (f"{errors} error(s)" if errors else "no errors")
        + f"; {covered}",
        [latest.id],
        read_fraction=f.read_fraction,
        bytes_read=f.bytes_read,
    )


# --- the report --------------------------------------------------------------------------

#: Controls judged over the window's evidence: a window mostly without evidence cannot PASS
#: them. (Encryption is read from the repository as it is now; the chain covers itself.)
WINDOWED = (
    "schedule",
    "rpo",
    "rto",
    "restore",
    "retention",
    "residency",
    "integrity",
    "copies",
    "result",
)
#: The part of a window that may lack evidence and still PASS. Only a plan whose first record
#: falls inside the window has such a part; shorten the window to what the evidence covers.
UNCOVERED_SHARE = 0.01


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _event(time: datetime, kind: str, ok: bool, rid: str, label: str) -> dict[str, Any]:
    return {"time": time.isoformat(), "type": kind, "ok": ok, "evidence": rid, "label": label}


@dataclass
class _Evidence:
    """The records of a plan, as the controls ask for them."""

    plan: Plan
    repos: dict[str, RepoEvidence]
    untrusted: set[str]
    since: datetime
    now: datetime

    def records(self, repo: str | None) -> list[AnyRecord]:
        pool = self.repos[repo].records if repo in self.repos else []
        return [d for d in pool if d.id not in self.untrusted]

    def of_job(self, repo: str | None, name: str, kinds: tuple[str, ...]) -> list[AnyRecord]:
        """Records of job ``name`` of this plan. A backup run by hand (``bcdr backup --job``,
        no plan) into the job's repository is one of its recovery points too."""
        return [
            d
            for d in self.records(repo)
            if d.job == name
            and d.kind in kinds
            and (d.plan == self.plan.name or (d.plan is None and "backup" in kinds))
        ]

    def drills_of(self, repo: str | None, kind: str, job: str) -> list[Record[DrillFacts]]:
        """Drills of this plan that restored ``job`` (``kind`` backup or disk), as their records
        say: a drill counts for what it restored, whatever the plan says now."""
        return [
            d
            for d in self.window(typed(self.records(repo), DrillFacts))
            if d.plan == self.plan.name
            and d.result is not None
            and d.facts.job == job
            and d.facts.kind == kind
        ]

    def window(self, runs: list[R]) -> list[R]:
        return [d for d in runs if self.since <= d.time <= self.now]


def coverage(start: datetime, since: datetime, now: datetime) -> dict[str, Any]:
    """Which part of the window [since, now] has evidence: from ``start`` (the plan's first
    record, or ``since`` when evidence began before the window)."""
    span = max((now - since).total_seconds(), 1.0)
    covered = max((now - start).total_seconds(), 0.0)
    uncovered = timedelta(seconds=span - covered)
    complete = uncovered <= (now - since) * UNCOVERED_SHARE
    return {
        "from": start.isoformat(),
        "to": now.isoformat(),
        "fraction": round(min(covered / span, 1.0), 4),
        "complete": complete,
    }


def _cover(controls: list[dict[str, Any]], cov: dict[str, Any]) -> None:
    """Each windowed control says what part of the window it has evidence for; a PASS over a
    window mostly without evidence is NO EVIDENCE (the PASS stays in ``covered_status``)."""
    for c in controls:
        if c["id"] not in WINDOWED:
            continue
        c["coverage"] = cov
        if not cov["complete"] and c["status"] == PASS:
            c["details"]["covered_status"] = PASS
            c["status"] = NO_EVIDENCE
            c["summary"] = (
                f"evidence covers only {cov['fraction']:.1%} of the window (from "
                f"{cov['from'][:16]}); over that part PASS: {c['summary']}"
            )


def evaluate(
    plan: Plan, repos: list[RepoEvidence], now: datetime, since: datetime
) -> dict[str, Any]:
    untrusted: set[str] = set()
    for r in repos:
        untrusted.update(r.chain.get("bad_ids") or [])
    ev = _Evidence(plan, {r.name: r for r in repos}, untrusted, since, now)
    ours = [
        d
        for r in repos
        for d in r.records
        if d.id not in untrusted
        and (d.plan == plan.name or (d.plan is None and d.kind == BackupFacts.KIND))
    ]
    plan_times = [d.begun for d in ours]
    start = max(since, min(plan_times)) if plan_times else since
    cov = coverage(start, since, now)

    jobs = [
        JOB_CONTROLS[k.name](ev, k, name, job, start)
        for k in KINDS
        for name, job in k.jobs(plan).items()
    ]
    for job in jobs:
        _cover(job["controls"], cov)
    repositories = [_repository(r) for r in repos]
    statuses = [c["status"] for j in jobs for c in j["controls"]] + [
        c["status"] for r in repositories for c in (r["chain"], r.get("immutability")) if c
    ]
    counts = {s: statuses.count(s) for s in (PASS, FAIL, NO_EVIDENCE)}
    verdict = FAIL if counts[FAIL] else (PASS if not counts[NO_EVIDENCE] else NO_EVIDENCE)
    return {
        "schema": SCHEMA,
        "plan": plan.name,
        "plan_file": str(plan.file),
        "plan_digest": plan.digest or None,
        "plan_versions": plan_versions(ev.window(ours), plan.digest or None),
        "generated": now.isoformat(),
        "window": {
            "since": since.isoformat(),
            "until": now.isoformat(),
            "start": start.isoformat(),
            "coverage": cov,
        },
        "verdict": verdict,
        "counts": counts,
        "tampered": any(r["chain"]["status"] == FAIL for r in repositories),
        "repositories": repositories,
        "jobs": jobs,
    }


def plan_versions(records: list[AnyRecord], current: str | None) -> list[dict[str, Any]]:
    """The plan files the window's records were written under (by digest), oldest first: more
    than one means the plan changed within the window."""
    seen: dict[str | None, dict[str, Any]] = {}
    for d in sorted(records, key=lambda d: d.time):
        v = seen.setdefault(
            d.plan_digest,
            {"digest": d.plan_digest, "first": d.time.isoformat(), "last": None, "records": 0},
        )
        v["last"] = d.time.isoformat()
        v["records"] += 1
    for v in seen.values():
        v["current"] = v["digest"] is not None and v["digest"] == current
    return list(seen.values())


def _backup_job(ev: _Evidence, k: JobKind, name: str, bjob: Any, start: datetime) -> dict[str, Any]:
    plan, since, now = ev.plan, ev.since, ev.now
    runs = typed(ev.of_job(bjob.repository, name, k.evidence), BackupFacts)
    in_window = ev.window(runs)
    sched, missed = schedule_control(plan, name, bjob, in_window, start, now)
    points = [
        (t, d.id) for d in runs if d.result in GOOD and (t := d.facts.snapshot_time) is not None
    ]
    drill_names = [n for n, d in plan.drills.items() if d.backup == name]
    drills = ev.drills_of(bjob.repository, "backup", name)
    controls = [
        sched,
        rpo_control(bjob.rpo, points, since, now, f"job {name}"),
        *drill_controls(drills, drill_names),
    ]
    if bjob.copy_to:
        controls.append(_copies(ev, name, bjob, in_window))
    forgets = typed(ev.of_job(bjob.repository, name, (ForgetFacts.KIND,)), ForgetFacts)
    ret = retention_control(bjob.retention is not None, ev.window(forgets))
    if ret:
        controls.append(ret)
    places = _backup_places(in_window, plan.repositories[bjob.repository].region)
    controls.append(residency_control(allowed(plan), places, catalog()))
    checks = ev.window(typed(ev.records(bjob.repository), CheckFacts))
    controls.append(integrity_control(checks))
    if plan.repositories[bjob.repository].encryption is not None:
        repo = ev.repos.get(bjob.repository)
        enc = repo.encryption if repo is not None else None
        controls.append(
            control(
                "encryption",
                "Encryption",
                NO_EVIDENCE if enc is None else (PASS if enc != "none" else FAIL),
                f"repository {bjob.repository}: {enc or 'unreadable'} (the plan requires "
                "encryption)",
            )
        )
    timeline = [_backup_event(d) for d in in_window] + [_drill_event(d) for d in drills]
    return _job(name, "backup", bjob, controls, timeline, missed, drills, in_window)


def _copies(
    ev: _Evidence, name: str, bjob: Any, in_window: list[Record[BackupFacts]]
) -> dict[str, Any]:
    points = [
        (t, d.facts.snapshot, d.id)
        for d in in_window
        if d.result in GOOD and (t := d.facts.snapshot_time) is not None and d.facts.snapshot
    ]
    return copies_control(name, bjob.rpo, points, _copied(ev, name, bjob), ev.now)


def _backup_places(
    runs: list[Record[BackupFacts]], declared: str | None
) -> list[tuple[str, str, str | None]]:
    """Where a backup job's records say its data went (and a geo-redundant account's paired
    region); the plan's word when no record says."""
    places: list[tuple[str, str, str | None]] = []
    for d in runs:
        p = d.facts.placement
        if p is None:
            continue
        how = p.status or "declared"
        if p.region:
            places.append((p.region, how, d.id))
        if p.secondary_region:
            places.append((p.secondary_region, f"{how} secondary", d.id))
    if declared and not places:
        places.append((declared, "declared in the plan", None))
    return places


def _backup_event(d: Record[BackupFacts]) -> dict[str, Any]:
    good = d.result in GOOD
    if good:
        label = (d.facts.snapshot or "")[:8] + (" (by hand)" if d.plan is None else "")
    else:
        label = (d.facts.error or "")[:80]
    kind = "recovery_point" if good else "failure"
    return _event(d.facts.snapshot_time or d.time, kind, good, d.id, label)


def _drill_event(d: Record[DrillFacts]) -> dict[str, Any]:
    sampled = sample_label(d.facts)
    label = (d.job or "") + (f" ({sampled})" if sampled else "")
    return _event(d.time, "drill", d.result == "ok", d.id, label)


def _snapshot_job(
    ev: _Evidence, k: JobKind, name: str, sjob: Any, start: datetime
) -> dict[str, Any]:
    plan, since, now = ev.plan, ev.since, ev.now
    repo = k.repository(plan, sjob)
    runs = typed(ev.of_job(repo, name, k.evidence), DiskSnapshotFacts)
    in_window = ev.window(runs)
    sched, missed = schedule_control(plan, name, sjob, in_window, start, now)
    per_disk = _disk_points(runs)
    places = _disk_places(in_window)
    latest = _newest(in_window) if in_window else None
    copies_bad = _copies_not_done(latest)
    per_disk_c = [
        rpo_control(
            sjob.rpo, per_disk.get(str(x), []), since, now, f"disk {x.id.rsplit('/', 1)[-1]}"
        )
        for x in sjob.disks
    ]
    rank = {NO_EVIDENCE: 2, FAIL: 1, PASS: 0}
    rpo_c = max(
        per_disk_c,
        key=lambda c: (rank[c["status"]], c["details"].get("longest_gap_s", 0)),
    )
    drill_names = [n for n, d in plan.drills.items() if d.snapshot == name]
    drills = ev.drills_of(repo, "disk", name)
    controls = [sched, rpo_c]
    if sjob.copy_to:
        controls.append(
            control(
                "copies",
                "Cross-region copies",
                NO_EVIDENCE if latest is None else (FAIL if copies_bad else PASS),
                "no run recorded"
                if latest is None
                else (
                    "; ".join(copies_bad)
                    if copies_bad
                    else f"newest run copied every disk to {', '.join(sjob.copy_to)}"
                ),
                [latest.id] if latest else [],
            )
        )
    controls += drill_controls(drills, drill_names)
    if sjob.retention is not None:
        controls.append(
            control(
                "retention",
                "Retention",
                PASS if latest else NO_EVIDENCE,
                "applied by each run (per disk and region)" if latest else "no run recorded",
                [latest.id] if latest else [],
            )
        )
    if not places:
        places.append((sjob.region, "declared in the plan", None))
        places += [(r, "declared copy", None) for r in sjob.copy_to]
    controls.append(residency_control(allowed(plan), places, catalog()))
    timeline = [
        _event(
            d.time,
            "recovery_point" if d.result in GOOD else "failure",
            d.result == "ok",
            d.id,
            str(d.result),
        )
        for d in in_window
    ] + [_drill_event(d) for d in drills]
    return _job(name, "snapshot", sjob, controls, timeline, missed, drills, in_window)


def _disk_points(runs: list[Record[DiskSnapshotFacts]]) -> dict[str, list[tuple[datetime, str]]]:
    """Each disk's recovery points (time, evidence id) in a disk job's records."""
    per_disk: dict[str, list[tuple[datetime, str]]] = {}
    for d in runs:
        for disk in d.facts.disks or []:
            if disk.status in ("protected", "partial") and disk.time is not None:
                per_disk.setdefault(disk.disk, []).append((disk.time, d.id))
    return per_disk


def _disk_places(runs: list[Record[DiskSnapshotFacts]]) -> list[tuple[str, str, str | None]]:
    """Where a disk job's records say the disks and their copies are."""
    places: list[tuple[str, str, str | None]] = []
    for d in runs:
        for disk in d.facts.disks or []:
            if disk.region:
                places.append((disk.region, "verified (disk)", d.id))
            places += [(c.region, "verified (copy)", d.id) for c in disk.copies]
    return places


def _copies_not_done(latest: Record[DiskSnapshotFacts] | None) -> list[str]:
    """The copies of the newest run that did not complete, as "disk to region: state"."""
    if latest is None:
        return []
    return [
        f"{disk.name} to {c.region}: {c.state}"
        for disk in latest.facts.disks or []
        for c in disk.copies
        if c.state != "done"
    ]


def _result_job(title: str) -> JobControls:
    """Drills, checks and prunes: did they run on schedule, and how did the newest end."""

    def controls(
        ev: _Evidence, k: JobKind, name: str, tjob: Any, start: datetime
    ) -> dict[str, Any]:
        runs = ev.window(ev.of_job(k.repository(ev.plan, tjob), name, k.evidence))
        sched, missed = schedule_control(ev.plan, name, tjob, runs, start, ev.now, meets=None)
        timeline = [
            _event(
                d.time,
                k.name if d.result in GOOD else "failure",
                d.result in GOOD,
                d.id,
                str(d.result),
            )
            for d in runs
        ]
        return _job(
            name,
            k.name,
            tjob,
            [sched, latest_result_control("result", title, runs)],
            timeline,
            missed,
            [],
            runs,
        )

    return controls


JobControls = Callable[[_Evidence, JobKind, str, Any, datetime], dict[str, Any]]


def _copy_job(ev: _Evidence, k: JobKind, name: str, cjob: Any, start: datetime) -> dict[str, Any]:
    """A copies job: on schedule, its newest result, and every recovery point of the source
    (of its ``jobs``) in the window present in each destination within its RPO."""
    base = _result_job("Copy result")(ev, k, name, cjob, start)
    points = [
        (t, d.facts.snapshot, d.id)
        for d in ev.window(typed(ev.records(cjob.repository), BackupFacts))
        if d.result in GOOD
        and (not cjob.jobs or d.job in cjob.jobs)
        and (t := d.facts.snapshot_time) is not None
        and d.facts.snapshot
    ]
    base["controls"].append(copies_control(name, cjob.rpo, points, _copied(ev, name, cjob), ev.now))
    return base


def _copied(ev: _Evidence, name: str, job: Any) -> dict[str, dict[str, tuple[datetime, str]]]:
    """Destination -> recovery point -> (the first copy record saying it is there, its id),
    from the copy records job ``name`` wrote into each of ``job``'s destinations."""
    copies: dict[str, dict[str, tuple[datetime, str]]] = {}
    for target in job.copy_targets():
        held = copies.setdefault(target.repository, {})
        runs = typed(ev.of_job(target.repository, name, (CopyFacts.KIND,)), CopyFacts)
        for d in sorted(runs, key=lambda d: d.time):
            if d.result not in GOOD:
                continue
            for p in d.facts.points:
                held.setdefault(p.recovery_point, (d.time, d.id))
    return copies


def _repository(r: RepoEvidence) -> dict[str, Any]:
    """A repository's entry: its evidence chain as a control, and its head."""
    chain = r.chain
    head = None
    if chain.get("head_id") and chain.get("repository_id"):
        head = {
            "repository_id": chain["repository_id"],
            "seq": chain["head_seq"],
            "id": chain["head_id"],
            "token": anchor_token(
                r.name, chain["repository_id"], chain["head_seq"], chain["head_id"]
            ),
        }
    if r.error:
        status, summary = NO_EVIDENCE, f"cannot read the repository: {r.error}"
    elif chain.get("ok", True):
        status = PASS
        summary = (
            f"{chain.get('records', 0)} record(s) chained, head #{chain.get('head_seq')} "
            f"{str(chain.get('head_id') or '')[:12]}"
        )
        held = [a for a in chain.get("anchors") or [] if a.get("ok")]
        if held:
            summary += "; holds " + ", ".join(
                f"#{a['seq']} seen by {a['source']}" for a in held if a.get("seq") is not None
            )
        else:
            summary += "; no head kept outside the repository was known to check against"
    else:
        status = FAIL
        summary = "TAMPERED: " + "; ".join(chain.get("problems") or [])
    newer = chain.get("newer") or []
    if newer:
        summary += (
            f"; {len(newer)} record(s) in a newer format than this bcdr reads were not read "
            "(their runs count for nothing here): make the report with the newer bcdr"
        )
    authenticated = None if r.error else bool(chain.get("authenticated", r.encryption != "none"))
    if authenticated is False:
        summary += (
            "; unencrypted repository: its records are not authenticated, so anyone who can "
            "write to it can rewrite them; only heads kept outside the repository catch that"
        )
    entry = {
        "name": r.name,
        "url": r.url,
        "encryption": r.encryption,
        "authenticated": authenticated,
        "head": head,
        "chain": control("chain", "Evidence chain", status, summary, **chain),
    }
    imm = immutability_control(r)
    if imm is not None:
        entry["immutability"] = imm
    return entry


def immutability_control(r: RepoEvidence) -> dict[str, Any] | None:
    """Are the objects protected snapshots need protected as long as they are (the newest
    check's finding)? Only for repositories the plan protects, or whose checks found
    protected snapshots."""
    checks = [c for c in typed(r.records, CheckFacts) if c.facts.immutability is not None]
    if not r.immutable_days and not checks:
        return None
    title = "Immutability"
    if not checks:
        return control(
            "immutability",
            title,
            NO_EVIDENCE,
            f"policies of {r.immutable_days} days are configured; no check has recorded "
            "whether snapshots' objects are protected",
        )
    latest = _newest(checks)
    imm = latest.facts.immutability or {}
    gaps = list(imm.get("gaps") or [])
    when = f"last check {_at(latest.time)}"
    if imm.get("versioned") is False:
        status, summary = FAIL, f"{when}: the container has no version-level immutability"
    elif gaps:
        status = FAIL
        summary = f"{when}: {len(gaps)} protected snapshot(s) need objects that are not " + (
            "protected as long as they are"
        )
    else:
        status = PASS
        summary = (
            f"{when}: {imm.get('protected', 0)} protected snapshot(s), everything they need "
            "protected as long"
        )
    if imm.get("days"):
        summary += f"; policies of {imm['days']} days"
    if imm.get("held"):
        summary += f"; {len(imm['held'])} under a legal hold"
    if imm.get("unprotected"):
        summary += f"; {len(imm['unprotected'])} snapshot(s) not protected (older, or forgotten)"
    return control("immutability", title, status, summary, [latest.id], gaps=gaps[:20])


def _job(
    name: str,
    kind: str,
    job: Timing,
    controls: list[dict[str, Any]],
    timeline: list[dict[str, Any]],
    missed: list[str],
    drills: list[Record[DrillFacts]],
    runs: Sequence[AnyRecord],
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "schedule": job.schedule.spec,
        "controls": controls,
        "timeline": sorted(
            timeline
            + [
                {"time": m, "type": "missed", "ok": False, "evidence": "", "label": "missed slot"}
                for m in missed
            ],
            key=lambda e: e["time"],
        ),
        "drills": [
            {
                "time": d.time.isoformat(),
                "drill": d.job,
                "repository": d.facts.repository,  # restored from (a copy's: region loss)
                "verdict": d.facts.verdict,
                "rto_s": d.facts.rto_s,
                "rpo_s": d.facts.rpo_s,
                "files_verified": d.facts.files_verified,
                "sampled": sample_label(d.facts),
                "sample_percent": d.facts.sample_percent,
                "rto_estimate_s": _rounded(rto_estimate(d.facts)[0]),
                "evidence": d.id,
            }
            for d in sorted(drills, key=lambda d: d.time)
        ],
        "failures": [
            {"time": d.time.isoformat(), "error": d.facts.failure("; "), "evidence": d.id}
            for d in runs
            if d.result not in GOOD
        ],
    }


#: The report's controls for each job kind (``plan/kinds.py``).
JOB_CONTROLS: dict[str, JobControls] = {
    "backup": _backup_job,
    "snapshot": _snapshot_job,
    "drill": _result_job("Drill result"),
    "check": _result_job("Check result"),
    "prune": _result_job("Prune result"),
    "copy": _copy_job,
}
