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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from bcdr.clock import parse_aware
from bcdr.compliance.anchors import token as anchor_token
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
    records: list[dict[str, Any]] = field(default_factory=list)
    chain: dict[str, Any] = field(default_factory=dict)  # ChainReport.to_dict()
    error: str | None = None  # the repository could not be read


def _t(value: object) -> datetime | None:
    try:
        return parse_aware(value)  # a time without an offset compares with nothing
    except ValueError:
        return None


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
    runs: list[dict[str, Any]],
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
        (t, r["id"])
        for r in runs
        if (meets is None or r.get("result") in meets) and (t := _t(r.get("started")))
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
    passed = sum(1 for r in runs if r.get("result") in GOOD)
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
            met_by or {r["id"] for r in runs},
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


def rto_estimate(facts: dict[str, Any]) -> tuple[float | None, str | None]:
    """A full restore's time estimated from a sampled drill, and how: the fixed phases (open,
    select) as measured, the phases that grow with the data (restore, verify) scaled by the
    snapshot's bytes over the bytes restored (by files when the record has no byte total).
    (None, None) for a full drill."""
    share = facts.get("sample_percent")
    rto = facts.get("rto_s")
    if rto is None or share is None or share >= 100:
        return None, None
    total, chosen = facts.get("bytes_total"), facts.get("bytes_selected")
    if total and chosen:
        scale, by = total / chosen, "bytes"
    elif facts.get("files_total") and facts.get("files_selected"):
        scale, by = facts["files_total"] / facts["files_selected"], "files"
    else:
        return None, None
    phases = facts.get("phases") or {}
    growing = sum(float(phases.get(k) or 0) for k in ("restore", "verify")) or float(rto)
    fixed = max(float(rto) - growing, 0.0)
    method = (
        f"restore and verify times scaled by the snapshot's {by} over the {by} restored "
        f"(x{scale:.3g}), open and select as measured"
    )
    return fixed + growing * scale, method


def sample_label(facts: dict[str, Any]) -> str | None:
    """ "sampled: 10% of files (12 of 120), 9.8% of bytes", or None for a full drill."""
    share = facts.get("sample_percent")
    if share is None or share >= 100:
        return None
    label = f"sampled: {share:g}% of files ({facts.get('files_selected')} of " + (
        f"{facts.get('files_total')})"
    )
    total, chosen = facts.get("bytes_total"), facts.get("bytes_selected")
    if total and chosen is not None:
        label += f", {chosen / total:.1%} of bytes"
    return label


def drill_controls(drills: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
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
    latest = max(drills, key=lambda r: str(r.get("time")))
    f = latest.get("facts", {})
    rto, target = f.get("rto_s"), f.get("rto_target_s")
    sampled = sample_label(f)
    estimate, method = rto_estimate(f)
    prefix = f"newest drill {str(latest.get('time'))[:16]}" + (f" ({sampled})" if sampled else "")
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
            f"{prefix}: {measured}; target {f.get('rto_target') or human_seconds(target)}",
            [latest["id"]],
            rto_s=rto,
            target_s=target,
            sampled=sampled is not None,
            sample_percent=f.get("sample_percent", 100.0),
            rto_estimate_s=_rounded(estimate),
            estimate_method=method,
        )
    failures = f.get("failures") or []
    verified = f.get("files_verified", 0)
    restore_c = control(
        "restore",
        "Restore verification (drills)",
        FAIL if failures else PASS,
        (
            f"{prefix}: {len(failures)} item(s) failed verification"
            if failures
            else f"{prefix} verified {verified} item(s), "
            f"{human_bytes(int(f.get('bytes_verified') or 0))}"
        ),
        [latest["id"]],
        failures=failures[:20],
        sampled=sampled is not None,
        sample_percent=f.get("sample_percent", 100.0),
    )
    return [rto_c, restore_c]


def retention_control(
    configured: bool, records: list[dict[str, Any]], what: str = "forget"
) -> dict[str, Any] | None:
    if not configured:
        return None
    if not records:
        return control("retention", "Retention", NO_EVIDENCE, f"no {what} recorded in the window")
    latest = max(records, key=lambda r: str(r.get("time")))
    f = latest.get("facts", {})
    removed = f.get("removed") or []
    kept = sum(
        1 for g in f.get("groups", []) for d in g.get("decisions", []) if d.get("keep")
    ) or len(f.get("kept") or [])
    return control(
        "retention",
        "Retention",
        PASS,
        f"applied {str(latest.get('time'))[:16]}: kept {kept}, removed {len(removed)}",
        [latest["id"]],
        policy=f.get("policy"),
        groups=f.get("groups"),
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


def latest_result_control(cid: str, title: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    if not runs:
        return control(cid, title, NO_EVIDENCE, "no run recorded in the window")
    latest = max(runs, key=lambda r: str(r.get("time")))
    ok = latest.get("result") in GOOD
    facts = latest.get("facts", {})
    said = facts.get("error") or ", ".join(facts.get("reasons") or [])
    return control(
        cid,
        title,
        PASS if ok else FAIL,
        f"newest run {str(latest.get('time'))[:16]}: {latest.get('result')}"
        + (f" ({said})" if said and not ok else ""),
        [latest["id"]],
    )


def integrity_control(checks: list[dict[str, Any]]) -> dict[str, Any]:
    if not checks:
        return control(
            "integrity", "Integrity check", NO_EVIDENCE, "no check of the repository recorded"
        )
    latest = max(checks, key=lambda r: str(r.get("time")))
    f = latest.get("facts", {})
    errors = f.get("error_count", len(f.get("errors") or []))
    read = human_bytes(int(f.get("bytes_read") or 0))
    covered = (
        f"{f.get('read_fraction', 0):.0%} of the data read ({read}, "
        f"{f.get('packs_read', 0)} of {f.get('packs', 0)} packs), {f.get('snapshots', 0)} "
        "snapshots"
    )
    return control(
        "integrity",
        "Integrity check",
        FAIL if errors else PASS,
        f"last check {str(latest.get('time'))[:16]}: "
        + (f"{errors} error(s)" if errors else "no errors")
        + f"; {covered}",
        [latest["id"]],
        read_fraction=f.get("read_fraction"),
        bytes_read=f.get("bytes_read"),
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


def _event(time: object, kind: str, ok: bool, rid: str, label: str) -> dict[str, Any]:
    return {"time": str(time), "type": kind, "ok": ok, "evidence": rid, "label": label}


@dataclass
class _Evidence:
    """The records of a plan, as the controls ask for them."""

    plan: Plan
    repos: dict[str, RepoEvidence]
    untrusted: set[str]
    since: datetime
    now: datetime

    def records(self, repo: str | None) -> list[dict[str, Any]]:
        pool = self.repos[repo].records if repo in self.repos else []
        return [d for d in pool if d["id"] not in self.untrusted]

    def of_job(self, repo: str | None, name: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        """Records of job ``name`` of this plan. A backup run by hand (``bcdr backup --job``,
        no plan) into the job's repository is one of its recovery points too."""
        return [
            d
            for d in self.records(repo)
            if d.get("job") == name
            and d.get("kind") in kinds
            and (d.get("plan") == self.plan.name or (d.get("plan") is None and "backup" in kinds))
        ]

    def drills_of(self, repo: str | None, kind: str, job: str) -> list[dict[str, Any]]:
        """Drills of this plan that restored ``job`` (``kind`` backup or disk), as their records
        say: a drill counts for what it restored, whatever the plan says now."""
        return [
            d
            for d in self.window(self.records(repo))
            if d.get("kind") == "drill"
            and d.get("plan") == self.plan.name
            and d.get("result") is not None
            and (d.get("facts") or {}).get("job") == job
            and (d.get("facts") or {}).get("kind", kind) == kind
        ]

    def window(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            d for d in runs if (t := _t(d.get("time"))) is not None and self.since <= t <= self.now
        ]


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
        if d["id"] not in untrusted
        and (d.get("plan") == plan.name or (d.get("plan") is None and d.get("kind") == "backup"))
    ]
    plan_times = [t for d in ours if (t := _t(d.get("started") or d.get("time")))]
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
        r["chain"]["status"] for r in repositories
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


def plan_versions(records: list[dict[str, Any]], current: str | None) -> list[dict[str, Any]]:
    """The plan files the window's records were written under (by digest), oldest first: more
    than one means the plan changed within the window."""
    seen: dict[str | None, dict[str, Any]] = {}
    for d in sorted(records, key=lambda d: str(d.get("time"))):
        digest = d.get("plan_digest")
        v = seen.setdefault(
            digest,
            {"digest": digest, "first": d.get("time"), "last": None, "records": 0},
        )
        v["last"] = d.get("time")
        v["records"] += 1
    for v in seen.values():
        v["current"] = v["digest"] is not None and v["digest"] == current
    return list(seen.values())


def _backup_job(ev: _Evidence, k: JobKind, name: str, bjob: Any, start: datetime) -> dict[str, Any]:
    plan, since, now = ev.plan, ev.since, ev.now
    runs = ev.of_job(bjob.repository, name, k.evidence)
    in_window = ev.window(runs)
    sched, missed = schedule_control(plan, name, bjob, in_window, start, now)
    points = [
        (t, d["id"])
        for d in runs
        if d.get("result") in GOOD and (t := _t(d["facts"].get("snapshot_time")))
    ]
    drill_names = [n for n, d in plan.drills.items() if d.backup == name]
    drills = ev.drills_of(bjob.repository, "backup", name)
    places = []
    for d in in_window:
        p = d["facts"].get("placement") or {}
        how = p.get("status") or "declared"
        if p.get("region"):
            places.append((p["region"], how, d["id"]))
        if p.get("secondary_region"):  # a geo-redundant account's paired region
            places.append((p["secondary_region"], f"{how} secondary", d["id"]))
    declared = plan.repositories[bjob.repository].region
    if declared and not places:
        places.append((declared, "declared in the plan", None))
    controls = [
        sched,
        rpo_control(bjob.rpo, points, since, now, f"job {name}"),
        *drill_controls(drills, drill_names),
    ]
    ret = retention_control(
        bjob.retention is not None, ev.window(ev.of_job(bjob.repository, name, ("forget",)))
    )
    if ret:
        controls.append(ret)
    controls.append(residency_control(allowed(plan), places, catalog()))
    checks = ev.window([d for d in ev.records(bjob.repository) if d.get("kind") == "check"])
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
    timeline = [
        _event(
            d["facts"].get("snapshot_time") or d["time"],
            "recovery_point" if d.get("result") in GOOD else "failure",
            d.get("result") in GOOD,
            d["id"],
            (
                (d["facts"].get("snapshot") or "")[:8]
                + (" (by hand)" if d.get("plan") is None else "")
            )
            if d.get("result") in GOOD
            else str(d["facts"].get("error", ""))[:80],
        )
        for d in in_window
    ] + [_drill_event(d) for d in drills]
    return _job(name, "backup", bjob, controls, timeline, missed, drills, in_window)


def _drill_event(d: dict[str, Any]) -> dict[str, Any]:
    sampled = sample_label(d.get("facts") or {})
    label = str(d.get("job") or "") + (f" ({sampled})" if sampled else "")
    return _event(d["time"], "drill", d.get("result") == "ok", d["id"], label)


def _snapshot_job(
    ev: _Evidence, k: JobKind, name: str, sjob: Any, start: datetime
) -> dict[str, Any]:
    plan, since, now = ev.plan, ev.since, ev.now
    repo = k.repository(plan, sjob)
    runs = ev.of_job(repo, name, k.evidence)
    in_window = ev.window(runs)
    sched, missed = schedule_control(plan, name, sjob, in_window, start, now)
    per_disk = _disk_points(runs)
    places = _disk_places(in_window)
    latest = max(in_window, key=lambda r: str(r.get("time")), default=None)
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
                [latest["id"]] if latest else [],
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
                [latest["id"]] if latest else [],
            )
        )
    if not places:
        places.append((sjob.region, "declared in the plan", None))
        places += [(r, "declared copy", None) for r in sjob.copy_to]
    controls.append(residency_control(allowed(plan), places, catalog()))
    timeline = [
        _event(
            d["time"],
            "recovery_point" if d.get("result") in GOOD else "failure",
            d.get("result") == "ok",
            d["id"],
            str(d.get("result")),
        )
        for d in in_window
    ] + [_drill_event(d) for d in drills]
    return _job(name, "snapshot", sjob, controls, timeline, missed, drills, in_window)


def _disk_points(runs: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, str]]]:
    """Each disk's recovery points (time, evidence id) in a disk job's records."""
    per_disk: dict[str, list[tuple[datetime, str]]] = {}
    for d in runs:
        for disk in d["facts"].get("disks") or []:
            when = _t(disk.get("time"))
            if disk.get("status") in ("protected", "partial") and when:
                per_disk.setdefault(disk["disk"], []).append((when, d["id"]))
    return per_disk


def _disk_places(runs: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    """Where a disk job's records say the disks and their copies are."""
    places: list[tuple[str, str, str | None]] = []
    for d in runs:
        for disk in d["facts"].get("disks") or []:
            if disk.get("region"):
                places.append((disk["region"], "verified (disk)", d["id"]))
            places += [(c["region"], "verified (copy)", d["id"]) for c in disk.get("copies") or []]
    return places


def _copies_not_done(latest: dict[str, Any] | None) -> list[str]:
    """The copies of the newest run that did not complete, as "disk to region: state"."""
    if latest is None:
        return []
    return [
        f"{disk['name']} to {c['region']}: {c.get('state')}"
        for disk in latest["facts"].get("disks") or []
        for c in disk.get("copies") or []
        if c.get("state") != "done"
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
                d["time"],
                k.name if d.get("result") in GOOD else "failure",
                d.get("result") in GOOD,
                d["id"],
                str(d.get("result")),
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
    authenticated = None if r.error else bool(chain.get("authenticated", r.encryption != "none"))
    if authenticated is False:
        summary += (
            "; unencrypted repository: its records are not authenticated, so anyone who can "
            "write to it can rewrite them; only heads kept outside the repository catch that"
        )
    return {
        "name": r.name,
        "url": r.url,
        "encryption": r.encryption,
        "authenticated": authenticated,
        "head": head,
        "chain": control("chain", "Evidence chain", status, summary, **chain),
    }


def _job(
    name: str,
    kind: str,
    job: Timing,
    controls: list[dict[str, Any]],
    timeline: list[dict[str, Any]],
    missed: list[str],
    drills: list[dict[str, Any]],
    runs: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "schedule": job.schedule.spec,
        "controls": controls,
        "timeline": sorted(
            timeline + [_event(m, "missed", False, "", "missed slot") for m in missed],
            key=lambda e: e["time"],
        ),
        "drills": [
            {
                "time": d.get("time"),
                "drill": d.get("job"),
                "verdict": d["facts"].get("verdict"),
                "rto_s": d["facts"].get("rto_s"),
                "rpo_s": d["facts"].get("rpo_s"),
                "files_verified": d["facts"].get("files_verified"),
                "sampled": sample_label(d["facts"]),
                "sample_percent": d["facts"].get("sample_percent", 100.0),
                "rto_estimate_s": _rounded(rto_estimate(d["facts"])[0]),
                "evidence": d["id"],
            }
            for d in sorted(drills, key=lambda d: str(d.get("time")))
        ],
        "failures": [
            {
                "time": d.get("time"),
                "error": d["facts"].get("error") or "; ".join(d["facts"].get("reasons") or []),
                "evidence": d["id"],
            }
            for d in runs
            if d.get("result") not in GOOD
        ],
    }


#: The report's controls for each job kind (``plan/kinds.py``).
JOB_CONTROLS: dict[str, JobControls] = {
    "backup": _backup_job,
    "snapshot": _snapshot_job,
    "drill": _result_job("Drill result"),
    "check": _result_job("Check result"),
    "prune": _result_job("Prune result"),
}
