"""Turn result objects into text or JSON on stdout."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bcdr.text import printable
from bcdr.units import human_bytes, human_seconds

if TYPE_CHECKING:  # types only: the command a user runs loads only what it needs
    from bcdr.actions.backup import BackupResult
    from bcdr.actions.copy import CopyResult
    from bcdr.actions.disks import RecoveryPointRow
    from bcdr.actions.drill import DrillReport
    from bcdr.actions.forget import ForgetResult
    from bcdr.actions.restore import RestoreResult
    from bcdr.actions.run import JobResult
    from bcdr.actions.snapshots import LsEntry
    from bcdr.compliance.evidence import ChainReport, Unusable
    from bcdr.compliance.records import Facts, Record
    from bcdr.geo.residency import Placement
    from bcdr.repository.check import CheckReport
    from bcdr.repository.prune import PruneReport
    from bcdr.repository.repair import IndexRepair, SnapshotRepair
    from bcdr.repository.snapshot import Snapshot
    from bcdr.scheduler.status import JobStatus
    from bcdr.storage.wrap import Transfer


_quiet = False


def set_quiet(on: bool) -> None:
    """``--quiet``: summaries and notes are not printed; warnings, errors and what failed are."""
    global _quiet
    _quiet = on


def out(text: str = "") -> None:
    if not _quiet:
        sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """A note on stderr (something worth knowing, not wrong); not with --quiet."""
    if not _quiet:
        sys.stderr.write(f"note: {text}\n")


def problem(text: str) -> None:
    """What went wrong or is incomplete, on stderr: printed even with --quiet."""
    sys.stderr.write(text + "\n")


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def backup_text(r: BackupResult) -> None:
    s = r.stats
    out(
        f"snapshot {r.snapshot.short_id} saved"
        + (f" (job {r.snapshot.job})" if r.snapshot.job else "")
    )
    if r.snapshot.parent:
        out(f"  parent     {r.snapshot.parent[:8]}")
    out(
        f"  files      {s.files_new} new, {s.files_changed} changed, "
        f"{s.files_unchanged} unchanged, {s.skipped} skipped"
    )
    out(f"  dirs       {s.dirs}   symlinks {s.symlinks}")
    out(f"  read       {human_bytes(s.bytes_read)} of {human_bytes(s.bytes_total)}")
    out(
        f"  added      {human_bytes(s.bytes_added)} after dedup and compression "
        f"({s.blobs_added} blobs, {s.packs_written} packs)"
    )
    transfer_line("uploaded", r.uploaded)
    out(f"  duration   {s.duration_s:.2f}s")
    for text in r.notes:
        note(text)
    for w in r.warnings:
        sys.stderr.write(f"warning: {printable(w.path)}: {printable(w.reason)}\n")
    for sk in r.skipped:
        sys.stderr.write(f"error: {printable(sk.path)}: {printable(sk.reason)}\n")
    if r.partial:
        sys.stderr.write(f"backup is partial: {len(r.skipped)} path(s) not backed up or torn\n")
    if r.evidence_error:
        sys.stderr.write(
            f"warning: the snapshot is saved, but not recorded as evidence: {r.evidence_error}\n"
        )


def copy_text(r: CopyResult) -> None:
    s = r.stats
    for c in r.snapshots:
        job = f" (job {printable(c.source.job)})" if c.source.job else ""
        if c.copy is None:
            out(f"snapshot {c.source.short_id}{job}: already here as {(c.existing or '')[:8]}")
        else:
            out(f"snapshot {c.source.short_id}{job} copied as {c.copy.short_id}")
    copied = len(r.copied)
    out(f"  snapshots  {copied} copied, {len(r.snapshots) - copied} already present")
    out(
        f"  blobs      {s.blobs_copied} copied ({human_bytes(s.bytes_copied)}), "
        f"{s.blobs_skipped} already present ({human_bytes(s.bytes_skipped)})"
    )
    out(f"  trees      {s.trees}   files {s.files}")
    transfer_line("read", r.downloaded)
    transfer_line("uploaded", r.uploaded)
    for note in r.notes:
        sys.stderr.write(f"note: {note}\n")
    if r.evidence_error:
        sys.stderr.write(
            f"warning: the copy is complete, but not recorded as evidence: {r.evidence_error}\n"
        )


def transfer_line(label: str, t: Transfer | None) -> None:
    if t is not None and t.bytes:
        out(f"  {label:10} {human_bytes(t.bytes)} in {t.seconds:.2f}s ({human_bytes(t.rate)}/s)")


def snapshots_text(snaps: list[Snapshot], job: str | None = None) -> None:
    if not snaps:
        out(f"no snapshots of job {job!r}" if job else "no snapshots")
        return
    out(f"{'ID':8}  {'TIME':19}  {'HOST':16}  {'JOB':16}  {'SIZE':>10}  PATHS")
    for s in snaps:
        when = datetime.fromisoformat(s.time).strftime("%Y-%m-%d %H:%M:%S")
        size = human_bytes(float(s.stats.get("bytes_total", 0)))
        host, job_name = printable(s.hostname)[:16], printable(s.job or "-")[:16]
        out(
            f"{s.short_id:8}  {when:19}  {host:16}  {job_name:16}  "
            f"{size:>10}  {', '.join(printable(p) for p in s.paths)}"
            + (f"  (copy of {s.recovery_point[:8]})" if s.copy_of else "")
        )
    out(f"{len(snaps)} snapshot(s)")


def ls_text(snap: Snapshot, entries: list[LsEntry]) -> None:
    out(f"snapshot {snap.short_id} of {printable(snap.time)}:")
    for e in entries:
        kind = {"dir": "d", "file": "-", "symlink": "l"}[e.type]
        link = f" -> {printable(e.target)}" if e.target is not None else ""
        out(f"{kind}{e.mode:04o} {e.size:>14}  {printable(e.path)}{link}")


def restore_text(r: RestoreResult) -> None:
    s = r.stats
    out(f"restored snapshot {r.snapshot.short_id} to {r.target}")
    out(f"  files      {s.files} ({s.hardlinks} hardlinks), dirs {s.dirs}, symlinks {s.symlinks}")
    out(f"  bytes      {human_bytes(s.bytes_total)} verified")
    if s.bytes_direct:
        out(f"  direct     {human_bytes(s.bytes_direct)} written around the page cache (O_DIRECT)")
    if s.read_back_planned or s.read_back_wrong:
        out(
            f"  read back  {s.files_read_back} files, {human_bytes(s.bytes_read_back)}: as the "
            "snapshot has them"
        )
    transfer_line("downloaded", r.downloaded)
    waited = s.synced_s or 0.0  # shown from 0.01 s: "0.00s of it" says nothing
    durable = f", {waited:.2f}s of it waiting for the disk" if waited >= 0.005 else ""
    out(f"  duration   {s.duration_s:.2f}s{durable}")
    if s.xattrs_skipped:
        problem(xattrs_warning(s.xattrs_skipped))
    for e in s.errors:
        sys.stderr.write(f"error: {printable(e['path'])}: {printable(e['error'])}\n")
    if s.sync_failed:
        sys.stderr.write(
            f"restore failed for {len(s.errors)} path(s); the disk failed a write: what is on "
            "it may differ from what was restored and verified\n"
        )
    elif s.read_back_wrong:
        sys.stderr.write(
            f"restore failed for {len(s.errors)} path(s); {s.read_back_wrong} file(s) were "
            "written whole and checked, and read back otherwise: the disk or the filesystem "
            "did not keep what was written\n"
        )
    elif s.errors:
        sys.stderr.write(f"restore failed for {len(s.errors)} path(s); nothing wrong was written\n")


def xattrs_warning(skipped: dict[str, int]) -> str:
    """``warning: extended attributes not restored: user.a on 3 path(s), ...``, and why."""
    parts = [f"{printable(name)} on {n} path(s)" for name, n in sorted(skipped.items())]
    why = ["the target's filesystem does not keep them or this user may not set them"]
    if "security.capability" in skipped:
        why.insert(0, "file capabilities are restored only with --keep-setuid")
    return f"warning: extended attributes not restored: {', '.join(parts)} ({'; '.join(why)})"


def check_text(r: CheckReport) -> None:
    scope = "structure" if not r.read_fraction else f"structure and {r.read_fraction:.0%} of data"
    out(
        f"checked {scope}: {r.snapshots} snapshots, {r.trees} trees, "
        f"{r.blobs_referenced} chunks, {r.packs} packs ({r.packs_read} read, "
        f"{human_bytes(r.bytes_read)})"
    )
    transfer_line("downloaded", r.downloaded)
    for line in r.leftovers:
        out(f"leftover: {printable(line)}")
    for line in r.errors:
        out(f"error: {printable(line)}")
    out("no errors found" if r.ok else f"{len(r.errors)} error(s) found")
    for line in r.repairs:
        out(f"to repair: {line}")
    imm = r.immutability
    if imm is not None:
        head = f"immutability: {imm.get('protected', 0)} protected snapshot(s)"
        if imm.get("days"):
            head += f" (policies of {imm['days']} days)"
        if imm.get("held"):
            head += f", {len(imm['held'])} under a legal hold"  # type: ignore[arg-type]
        if imm.get("unprotected"):
            head += f"; {len(imm['unprotected'])} whose own object is not protected"  # type: ignore[arg-type]
        out(head)
        if imm.get("versioned") is False:
            out(
                "warning: immutability: the container has no version-level immutability "
                "support: nothing written to it can be protected (docs/immutability.md)"
            )
        for gap in imm.get("gaps") or []:  # type: ignore[attr-defined]
            out(f"warning: immutability: {printable(str(gap))}")


def _short(names: list[str]) -> str:
    shown = ", ".join(n[:12] for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def repair_index_text(r: IndexRepair) -> None:
    would = "would be " if r.dry_run else ""
    out(f"{r.packs} packs in storage")
    if r.missing_packs:
        out(
            f"  {len(r.missing_packs)} missing pack(s) {would}dropped from the index: "
            f"{_short(r.missing_packs)}"
        )
    if r.truncated_packs:
        out(
            f"  {len(r.truncated_packs)} truncated pack(s) {would}dropped from the index: "
            f"{_short(r.truncated_packs)}"
        )
    if r.damaged_index_files:
        out(
            f"  {len(r.damaged_index_files)} damaged index file(s) {would}removed: "
            f"{_short(r.damaged_index_files)}"
        )
    if r.packs_indexed:
        out(
            f"  {len(r.packs_indexed)} pack(s) {would}indexed from their headers: "
            f"{_short(r.packs_indexed)}"
        )
    for pack in r.unreadable_packs:
        out(f"  pack {pack[:12]}: header does not open; left unindexed (prune removes it)")
    if not r.changed:
        out("the index matches the packs: nothing to repair")
    elif not r.dry_run:
        out(
            f"index repaired: {r.index_files_written} file(s) written, "
            f"{r.index_files_removed} removed; next: `bcdr repair snapshots`"
        )


def repair_snapshots_text(r: SnapshotRepair) -> None:
    out(f"{r.snapshots} snapshots walked")
    for item in r.repaired:
        if item.new:
            head = f"snapshot {item.snapshot[:8]} repaired as {item.new[:8]}"
        elif r.dry_run:
            head = f"snapshot {item.snapshot[:8]} would be repaired"
        else:
            head = f"snapshot {item.snapshot[:8]}: nothing readable is left"
        if item.forgotten:
            head += "; original removed"
        out(f"{head}: {item.lost_count} path(s) lost")
        for path in item.lost[:20]:
            out(f"  lost {printable(path)}")
        if item.lost_count > 20:
            out(f"  ... and {item.lost_count - 20} more (see --json)")
    for name in r.damaged_manifests:
        done = name in r.manifests_removed
        out(
            f"snapshot {name[:12]}: manifest unreadable; "
            + ("removed" if done else "remove it with --forget")
        )
    if not r.changed:
        out("every snapshot's trees and chunks are stored: nothing to repair")
    elif r.repaired and not r.forget and not r.dry_run:
        out("originals kept; `bcdr repair snapshots --forget` removes them")


def plan_job_text(r: JobResult) -> None:
    line = f"{r.kind} {r.name}: {r.status}" + (f" — {r.message}" if r.message else "")
    if _quiet and r.status != "ok":  # what did not go well is said even with --quiet
        problem(line)
        for text in r.notes:
            problem(f"  note: {text}")
    out(line)
    if r.backup is not None:
        backup_text(r.backup)
    from bcdr.geo.verify import VERIFIED  # not at import: most commands never get here

    if r.placement is not None and (r.placement.region or r.placement.status == VERIFIED):
        out(f"  placement {r.placement.describe()}")
    for note in r.notes:
        out(f"  note: {note}")


def _secs(seconds: float | None) -> str:
    return "-" if seconds is None else human_seconds(seconds, precision=2)


def _target(value: float | None, target_s: float | None, target: str | None) -> str:
    if target_s is None or value is None:
        return " (no target)"
    return f" (target {target}, {'met' if value <= target_s else 'MISSED'})"


def drill_text(r: DrillReport) -> None:
    out(f"drill {r.drill}: {r.verdict.upper()}")
    if r.kind == "backup":
        if r.snapshot:
            out(
                f"  snapshot {r.snapshot[:8]} of {r.job} ({(r.snapshot_time or '')[:19]})"
                + (f" from repository {printable(r.repository)}" if r.repository else "")
            )
        seed = f" (seed {r.seed})" if r.sample_percent < 100 else ""
        out(
            f"  sample {r.sample_percent:g}%{seed}: {r.files_selected} of "
            f"{r.files_total} files, {human_bytes(r.bytes_selected)}"
            + (f" of {human_bytes(r.bytes_total)}" if r.sample_percent < 100 else "")
        )
        by = f", read back by the {r.shards} parts" if r.read_back == "parts" else ""
        out(f"  verified {r.files_verified} files, {human_bytes(r.bytes_verified)}{by}")
    for d in r.restored_disks:
        out(
            f"  disk {d['name']} in {d['region']} from {str(d['source']).rsplit('/', 1)[-1]}"
            f": {d['size_gb']} GiB, ready in {_secs(d['seconds'])}"
            + (", deleted" if d.get("deleted") else ", kept")
        )
    target, rpo = (
        _target(r.rto_s, r.rto_target_s, r.rto_target),
        _target(r.rpo_s, r.rpo_target_s, r.rpo_target),
    )
    out(
        f"  time to first byte {_secs(r.ttfb_s)}; RTO {_secs(r.rto_s)}{target}; "
        f"RPO {_secs(r.rpo_s)}{rpo}"
    )
    if r.rto_estimate_s is not None:
        out(
            f"  sampled drill: a full restore is estimated at {_secs(r.rto_estimate_s)}"
            f"{_target(r.rto_estimate_s, r.rto_target_s, r.rto_target)} ({r.rto_estimate_method})"
        )
    if r.phases:
        out("  phases: " + ", ".join(f"{k} {_secs(v)}" for k, v in r.phases.items()))
    for reason in r.reasons:
        out(f"  - {printable(reason)}")
    for f in r.failures[:20]:
        out(f"    {printable(f['path'])}: {printable(f['error'])}")
    if r.source_compared or r.drift:
        out(f"  source compared: {r.source_compared} unchanged file(s), {len(r.drift)} drifted")
    for d in r.drift:
        out(f"    drift: {d['path']}")
    if r.kept and r.scratch:
        out(f"  kept in {r.scratch}")
    if r.evidence:
        out(f"  evidence {r.evidence[:12]}")


def evidence_verify_text(r: ChainReport) -> None:
    if r.ok:
        out(f"evidence chain intact: {r.records} record(s)")
    else:
        out(f"evidence chain BROKEN: {len(r.problems)} problem(s) in {r.records} record(s)")
        for p in r.problems:
            out(f"  {printable(str(p))}")
    for a in r.anchors:
        seq = f"#{a['seq']} " if a["seq"] is not None else ""
        verdict = "holds" if a["ok"] else "NOT in the chain"
        out(f"checked against {a['source']}: {seq}{str(a['id'])[:12]} {verdict}")
    for note in r.anchor_notes:
        out(f"note: {printable(note)}")
    for p in r.newer:
        out(f"note: {printable(str(p))}")
    if r.unusable:
        out(f"{len(r.unusable)} record(s) hold their place but are not evidence the report counts:")
        for p in r.unusable:
            out(f"  {printable(str(p))}")
    if r.head_id:
        out(f"head {r.head_seq}:{r.head_id}")
        out(
            "  this host keeps it; keep it outside the repository too: `--head "
            f"{r.head_seq}:{r.head_id[:12]}` later proves nothing was cut"
        )
    if not r.authenticated:
        out(
            "note: unencrypted repository: records are not authenticated, so anyone who can "
            "write to it can rewrite the chain; only heads kept outside catch that"
        )
    if r.unchained:
        out(f"{r.unchained} record(s) written before the chain existed (not chained)")


def evidence_list_text(records: list[Record[Facts] | Unusable]) -> None:
    from bcdr.compliance.evidence import Unusable  # loaded with the records already

    if not records:
        out("no evidence records")
        return
    for r in records:
        seq = f"#{r.seq}" if r.seq is not None else "-"
        if isinstance(r, Unusable):
            d = r.document
            out(
                f"{seq:>6}  {str(d.get('time', ''))[:19]}  {r.id[:12]}  "
                f"{str(d.get('kind', '?')):<13} {str(d.get('result', '-')):<8} "
                f"NOT USABLE AS EVIDENCE: {r.problem}"
            )
            continue
        where = "/".join(x for x in (r.plan, r.job) if x)
        out(
            f"{seq:>6}  {r.time.isoformat()[:19]}  {r.id[:12]}  "
            f"{r.kind:<13} {r.result or '-':<8} {where}"
        )


def disk_points_text(rows: list[RecoveryPointRow]) -> None:
    if not rows:
        out("no recovery points yet")
        return
    w_job = max(len("JOB"), *(len(r.job) for r in rows))
    w_disk = max(len("DISK"), *(len(r.disk) for r in rows))
    w_region = max(len("REGION"), *(len(r.region) for r in rows))
    out(
        f"{'JOB':<{w_job}}  {'DISK':<{w_disk}}  {'KIND':<13}  {'REGION':<{w_region}}  "
        f"{'TIME':<20}  {'AGE':>6}  {'STATE':<14}  NAME"
    )
    for r in rows:
        when = (r.time or "-").replace("T", " ")[:19]
        out(
            f"{r.job:<{w_job}}  {r.disk:<{w_disk}}  {r.kind:<13}  {r.region:<{w_region}}  "
            f"{when:<20}  {_age(r.age_s):>6}  {r.state:<14}  {r.name}"
        )


def placements_text(places: list[Placement]) -> str:
    """``westeurope (Europe, repository), northeurope (Europe, secondary: GRS from westeurope)``"""
    parts = []
    for p in places:
        role = f"{p.role}: {p.via}" if p.via else p.role
        parts.append(f"{p.region} ({p.geography or 'unknown'}, {role})")
    return ", ".join(parts)


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else human_seconds(seconds)


def status_text(rows: list[JobStatus]) -> None:
    w = max([len("JOB"), *(len(r.plan) + 1 + len(r.job) for r in rows)]) + 1
    out(
        f"{'JOB':<{w}} {'KIND':<8} {'LAST RUN':<18} {'RESULT':<13} {'TOOK':>7}  "
        f"{'NEXT RUN':<22} RPO"
    )
    for r in rows:
        last = r.last_run.replace("T", " ")[:16] + "Z" if r.last_run else "never"
        took = _age(r.last_duration_s) if r.last_duration_s is not None else "-"
        if r.rpo_status in ("ok", "missed"):
            rpo = f"{r.rpo_status}: newest {_age(r.recovery_point_age_s)} old, target {r.rpo}"
        else:
            rpo = r.rpo_status
        out(
            f"{r.plan + '/' + r.job:<{w}} {r.kind:<8} {last:<18} {r.last_status or '-':<13} "
            f"{took:>7}  {r.next_run:<22} {rpo}"
        )
        for repo, c in sorted(r.copies.items()):
            if c["status"] == "none":
                state = "no copy recorded yet"
            else:
                lag = float(c["lag_s"])  # type: ignore[arg-type]
                state = (
                    f"{c['status']}: newest {_age(float(c['age_s']))} old, "  # type: ignore[arg-type]
                    + ("up to date" if lag == 0 else f"{_age(lag)} behind the job")
                )
            out(f"{'':<{w}}   copy in {printable(repo)}: {state}")


def forget_text(r: ForgetResult) -> None:
    for g in r.groups:
        out(f"{g.label} (policy: {r.policy.describe()})")
        for d in g.decisions:
            verdict = "keep  " if d.keep else ("would remove" if r.dry_run else "remove")
            when = d.point.time.strftime("%Y-%m-%d %H:%M:%S%z")
            out(f"  {verdict}  {d.point.id[:8]}  {when}  {', '.join(d.reasons)}".rstrip())
    removed = sum(not d.keep for g in r.groups for d in g.decisions)
    if r.dry_run:
        out(f"dry run: would keep {r.kept} and remove {removed} snapshot(s); nothing changed")
    elif r.removed:
        out(
            f"kept {r.kept}, removed {len(r.removed)} snapshot(s) (evidence "
            f"{(r.evidence or '')[:8]}); `bcdr prune` frees the data only they used"
        )
    elif not r.waiting:
        out(f"kept all {r.kept} snapshot(s)")
    if r.waiting_note:
        out(f"{r.waiting_note}: a later forget removes them")
    ext = r.immutability or {}
    if ext.get("extended"):
        out(f"immutability of {ext['extended']} kept snapshot(s) extended to {ext['until']}")


def prune_text(r: PruneReport) -> None:
    out(
        f"{r.snapshots} snapshot(s); {r.packs} packs, {human_bytes(r.bytes_stored)} stored, "
        f"{human_bytes(r.bytes_used)} in use"
    )
    would = "would mark" if r.dry_run else "marked"
    marked = r.packs_unused + r.packs_unindexed + r.packs_repacked
    if marked:
        out(
            f"{would} {marked} pack(s), {human_bytes(r.bytes_marked)}: {r.packs_unused} unused, "
            f"{r.packs_unindexed} in no index, {r.packs_repacked} repacked"
            + (f" ({human_bytes(r.bytes_repacked)} copied)" if r.bytes_repacked else "")
            + (f" as mark {r.mark}" if r.mark else "")
        )
    else:
        out("nothing new to mark")
    if r.marks_swept:
        out(
            f"deleted {r.packs_deleted} pack(s), {human_bytes(r.bytes_deleted)} "
            f"(mark {', '.join(r.marks_swept)})"
        )
    for pack in r.packs_kept:
        out(f"kept pack {pack[:12]}: a snapshot written since it was marked needs it")
    if r.waiting:
        out(f"{r.waiting}; they stay marked for a later prune")
    ext = r.immutability or {}
    if ext.get("extended"):
        out(f"immutability of {ext['extended']} object(s) extended to {ext['until']}")
    if r.temp_files_removed:
        removed = "would remove" if r.dry_run else "removed"
        out(
            f"{removed} {len(r.temp_files_removed)} temporary file(s) in tmp/ of writes "
            "interrupted a day or more ago"
        )
    if r.shard_runs_removed:
        removed = "would remove" if r.dry_run else "removed"
        out(f"{removed} {r.shard_runs_removed} sharded run(s), committed or abandoned")
    if r.shard_runs_kept:
        out(
            f"kept {r.shard_runs_kept} sharded run(s) not committed yet, with the chunks "
            "their shards stored"
        )
    for why in r.postponed:
        out(f"postponed: {why}")
    for problem in r.problems:
        out(f"warning: {problem}")
    if r.pending:
        out(f"{r.pending} mark(s) pending: a later `bcdr prune` deletes them")
