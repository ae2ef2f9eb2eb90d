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

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter

from bcdr.clock import parse_aware
from bcdr.geo.catalog import Catalog, catalog
from bcdr.geo.residency import Allowed
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
    plan: Plan, name: str, job: Timing, runs: list[dict[str, Any]], start: datetime, now: datetime
) -> tuple[dict[str, Any], list[str]]:
    """Slots of the job's schedule in [start, now] against good runs; and the missed slots."""
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
        (t, r["id"]) for r in runs if r.get("result") in GOOD and (t := _t(r.get("started")))
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
    summary = (
        f"{expected - len(missed)} of {expected} slot(s) met, {len(good)} good run(s)"
        if expected
        else f"no slot due yet; {len(good)} good run(s)"
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


def drill_controls(drills: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """RTO and restore verification from the newest drill of the job."""
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
    if rto is None or target is None:
        rto_c = control("rto", "RTO (drills)", NO_EVIDENCE, "the newest drill measured no RTO")
    else:
        rto_c = control(
            "rto",
            "RTO (drills)",
            PASS if rto <= target else FAIL,
            f"newest drill {str(latest.get('time'))[:16]}: {human_seconds(rto)}, target "
            f"{f.get('rto_target') or human_seconds(target)}",
            [latest["id"]],
            rto_s=rto,
            target_s=target,
        )
    failures = f.get("failures") or []
    verified = f.get("files_verified", 0)
    restore_c = control(
        "restore",
        "Restore verification (drills)",
        FAIL if failures else PASS,
        (
            f"newest drill: {len(failures)} item(s) failed verification"
            if failures
            else f"newest drill verified {verified} item(s), "
            f"{human_bytes(int(f.get('bytes_verified') or 0))}"
        ),
        [latest["id"]],
        failures=failures[:20],
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


def _event(time: object, kind: str, ok: bool, rid: str, label: str) -> dict[str, Any]:
    return {"time": str(time), "type": kind, "ok": ok, "evidence": rid, "label": label}


def evaluate(
    plan: Plan, repos: list[RepoEvidence], now: datetime, since: datetime
) -> dict[str, Any]:
    cat = catalog()
    rule = allowed(plan)
    untrusted: set[str] = set()
    for r in repos:
        untrusted.update(r.chain.get("bad_ids") or [])
    by_repo = {r.name: r for r in repos}

    def records(repo: str | None) -> list[dict[str, Any]]:
        pool = by_repo[repo].records if repo in by_repo else []
        return [d for d in pool if d["id"] not in untrusted]

    def of_job(repo: str | None, name: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            d
            for d in records(repo)
            if d.get("plan") == plan.name and d.get("job") == name and d.get("kind") in kinds
        ]

    def window(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [d for d in runs if (t := _t(d.get("time"))) is not None and since <= t <= now]

    plan_times = [
        t
        for r in repos
        for d in r.records
        if d.get("plan") == plan.name and (t := _t(d.get("started") or d.get("time")))
    ]
    start = max(since, min(plan_times)) if plan_times else since

    jobs: list[dict[str, Any]] = []
    for name, bjob in plan.backups.items():
        runs = of_job(bjob.repository, name, ("backup",))
        in_window = window(runs)
        sched, missed = schedule_control(plan, name, bjob, in_window, start, now)
        points = [
            (t, d["id"])
            for d in runs
            if d.get("result") in GOOD and (t := _t(d["facts"].get("snapshot_time")))
        ]
        drill_names = [n for n, d in plan.drills.items() if d.backup == name]
        drills = [
            d
            for n in drill_names
            for d in window(of_job(bjob.repository, n, ("drill",)))
            if d.get("result") is not None
        ]
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
            bjob.retention is not None, window(of_job(bjob.repository, name, ("forget",)))
        )
        if ret:
            controls.append(ret)
        controls.append(residency_control(rule, places, cat))
        checks = window([d for d in records(bjob.repository) if d.get("kind") == "check"])
        controls.append(integrity_control(checks))
        repo_decl = plan.repositories[bjob.repository]
        if repo_decl.encryption is not None:
            enc = by_repo[bjob.repository].encryption if bjob.repository in by_repo else None
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
                (d["facts"].get("snapshot") or "")[:8] or str(d["facts"].get("error", ""))[:80],
            )
            for d in in_window
        ] + [
            _event(d["time"], "drill", d.get("result") == "ok", d["id"], d.get("job") or "")
            for d in drills
        ]
        jobs.append(_job(name, "backup", bjob, controls, timeline, missed, drills, in_window))

    for name, sjob in plan.snapshots.items():
        repo = sjob.evidence or next(iter(plan.repositories), None)
        runs = of_job(repo, name, ("disk-snapshot", "snapshot"))
        in_window = window(runs)
        sched, missed = schedule_control(plan, name, sjob, in_window, start, now)
        per_disk: dict[str, list[tuple[datetime, str]]] = {}
        places = []
        copies_bad: list[str] = []
        for d in runs:
            for disk in d["facts"].get("disks") or []:
                when = _t(disk.get("time"))
                if disk.get("status") in ("protected", "partial") and when:
                    per_disk.setdefault(disk["disk"], []).append((when, d["id"]))
        for d in in_window:
            for disk in d["facts"].get("disks") or []:
                if disk.get("region"):
                    places.append((disk["region"], "verified (disk)", d["id"]))
                for c in disk.get("copies") or []:
                    places.append((c["region"], "verified (copy)", d["id"]))
        latest = max(in_window, key=lambda r: str(r.get("time")), default=None)
        if latest is not None:
            for disk in latest["facts"].get("disks") or []:
                for c in disk.get("copies") or []:
                    if c.get("state") != "done":
                        copies_bad.append(f"{disk['name']} to {c['region']}: {c.get('state')}")
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
        drills = [d for n in drill_names for d in window(of_job(repo, n, ("drill",)))]
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
        controls.append(residency_control(rule, places, cat))
        timeline = [
            _event(
                d["time"],
                "recovery_point" if d.get("result") in GOOD else "failure",
                d.get("result") == "ok",
                d["id"],
                str(d.get("result")),
            )
            for d in in_window
        ] + [_event(d["time"], "drill", d.get("result") == "ok", d["id"], "") for d in drills]
        jobs.append(_job(name, "snapshot", sjob, controls, timeline, missed, drills, in_window))

    simple: list[tuple[str, str, Timing, str | None, str]] = [
        *(
            (
                n,
                "drill",
                d,
                plan.backups[d.backup].repository
                if d.backup
                else (plan.snapshots[d.snapshot].evidence if d.snapshot else None)
                or next(iter(plan.repositories), None),
                "Drill result",
            )
            for n, d in plan.drills.items()
        ),
        *((n, "check", c, c.repository, "Check result") for n, c in plan.checks.items()),
        *((n, "prune", p, p.repository, "Prune result") for n, p in plan.prunes.items()),
    ]
    for name, kind, tjob, repo, title in simple:
        runs = window(of_job(repo, name, (kind,)))
        sched, missed = schedule_control(plan, name, tjob, runs, start, now)
        controls = [sched, latest_result_control("result", title, runs)]
        timeline = [
            _event(
                d["time"],
                kind if d.get("result") in GOOD else "failure",
                d.get("result") in GOOD,
                d["id"],
                str(d.get("result")),
            )
            for d in runs
        ]
        jobs.append(_job(name, kind, tjob, controls, timeline, missed, [], runs))

    repositories: list[dict[str, Any]] = []
    for r in repos:
        chain = r.chain
        if r.error:
            status, summary = NO_EVIDENCE, f"cannot read the repository: {r.error}"
        elif chain.get("ok", True):
            status = PASS
            summary = (
                f"{chain.get('records', 0)} record(s) chained, head #{chain.get('head_seq')} "
                f"{str(chain.get('head_id') or '')[:12]}"
            )
        else:
            status = FAIL
            summary = "TAMPERED: " + "; ".join(chain.get("problems") or [])
        repositories.append(
            {
                "name": r.name,
                "url": r.url,
                "encryption": r.encryption,
                "chain": control("chain", "Evidence chain", status, summary, **chain),
            }
        )
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
        "generated": now.isoformat(),
        "window": {
            "since": since.isoformat(),
            "until": now.isoformat(),
            "start": start.isoformat(),
        },
        "verdict": verdict,
        "counts": counts,
        "tampered": any(r["chain"]["status"] == FAIL for r in repositories),
        "repositories": repositories,
        "jobs": jobs,
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
