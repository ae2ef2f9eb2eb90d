"""One run of a plan's disk snapshot job.

Crash-consistent (the default), per disk, disks in parallel:

1. read the disk; its real region must be the job's region (residency is decided before a byte
   moves: the plan's regions were checked when it loaded, the disk's real one is checked here);
2. delete what an earlier run left failed (a snapshot that ended Failed, a copy with an error);
3. make room: at Azure's limit of 500 incremental snapshots per disk, apply retention first;
4. create an incremental snapshot (``createOption: Copy``, ``incremental: true``), tagged with
   plan, job, disk and time, and wait for it (the job's ``timeout``);
5. for each ``copy_to`` region, in creation order and one at a time: wait for a copy an earlier
   run left running, then ``CopyStart`` every snapshot newer than the last one copied, following
   ``completionPercent`` to 100 or to the copy's error;
6. retention (``bcdr.retention.decide``, the policy of file backups) per disk and region,
   never deleting a snapshot that a running copy reads from.

Application-consistent: one VM restore point (``consistencyMode: ApplicationConsistent``) per VM
covers that VM's disks of the job at once (its other disks excluded); retention works on the
restore points.

A failure on one disk is recorded on that disk; the others go on. The report says, per disk,
``protected`` (a new recovery point, copied everywhere asked), ``partial`` (a new recovery point,
a copy missing) or ``failed``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, tzinfo

from bcdr.clock import Clock
from bcdr.disks.limits import MAX_DISK_SNAPSHOTS, NAME_MAX
from bcdr.disks.service import (
    ROLE_COPY,
    ROLE_SNAPSHOT,
    TAG_DISK,
    TAG_JOB,
    TAG_PLAN,
    TAG_ROLE,
    TAG_SOURCE,
    TAG_TIME,
    DiskInfo,
    DiskService,
    ResourceId,
    RestorePointInfo,
    SnapshotInfo,
)
from bcdr.errors import BcdrError, DiskOperationFailed, TransientStorageError, UsageError
from bcdr.retention import Point, Policy, decide

log = logging.getLogger("bcdr.disks")

PROTECTED, PARTIAL, FAILED = "protected", "partial", "failed"
DONE, COPYING = "done", "copying"
STAMP = "%Y%m%dT%H%M%SZ"
STAMP_RE = re.compile(r"(\d{8}T\d{6}Z)$")
MAX_PARALLEL_DISKS = 8


def resource_name(*parts: str) -> str:
    """``disk-job-20261123T020000Z``: Azure's name rules (letters, digits, ``_.-``; at most 80),
    shortening the first part when too long."""
    clean = [re.sub(r"[^A-Za-z0-9_.-]", "-", p) for p in parts]
    rest = "-".join(clean[1:])
    room = NAME_MAX - len(rest) - (1 if rest else 0)
    head = clean[0][: max(1, room)].rstrip("-.")
    return f"{head}-{rest}" if rest else head


def stamp_of(when: datetime) -> str:
    return when.astimezone(UTC).strftime(STAMP)


def point_time(p: RestorePointInfo) -> datetime | None:
    m = STAMP_RE.search(p.name)
    if m:
        return datetime.strptime(m.group(1), STAMP).replace(tzinfo=UTC)
    return p.created


@dataclass
class CopyResult:
    region: str
    snapshot: str  # the copy's id
    source: str  # the snapshot copied
    state: str  # done | copying | failed
    percent: float = 0.0
    error: str | None = None
    seconds: float = 0.0


@dataclass
class DiskResult:
    disk: str  # resource id
    name: str
    region: str = ""
    status: str = FAILED
    kind: str = "snapshot"  # or "restore point"
    recovery_point: str | None = None  # snapshot or disk restore point id
    time: str | None = None  # the recovery point's time (ISO, UTC)
    seconds: float = 0.0
    copies: list[CopyResult] = field(default_factory=list)
    kept: list[dict[str, object]] = field(default_factory=list)
    removed: list[dict[str, object]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    transient: bool = False

    def fail(self, exc: BcdrError) -> None:
        self.status = FAILED if self.recovery_point is None else PARTIAL
        self.error = str(exc) + (f" (hint: {exc.hint})" if exc.hint else "")
        self.transient = isinstance(exc, TransientStorageError)


@dataclass
class DiskJobReport:
    plan: str
    job: str
    consistency: str
    region: str
    copy_to: list[str]
    started: str
    finished: str = ""
    disks: list[DiskResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        states = {d.status for d in self.disks}
        if states == {PROTECTED}:
            return "ok"
        return "failed" if states <= {FAILED} else "partial"

    def count(self, status: str) -> int:
        return sum(1 for d in self.disks if d.status == status)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "status": self.status}


@dataclass(frozen=True)
class DiskJobSpec:
    """What a disk snapshot job asks for, in plain values (the plan's `snapshots:` entry as
    ``actions.disks`` reads it: this layer does not know the plan)."""

    plan: str
    name: str
    disks: tuple[str, ...]  # managed-disk resource ids
    region: str
    copy_to: tuple[str, ...] = ()
    consistency: str = "crash"  # or "application"
    resource_group: str | None = None
    timeout_s: float = 6 * 3600.0
    retention: Policy | None = None
    timezone: tzinfo = UTC


class DiskJob:
    """Runs one disk snapshot job against a DiskService."""

    def __init__(
        self,
        job: DiskJobSpec,
        service: DiskService,
        clock: Clock,
        *,
        poll_s: float = 30.0,
        tick: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.job = job
        self.name = job.name
        self.svc = service
        self.clock = clock
        self.poll_s = poll_s
        self.timeout_s = job.timeout_s
        self.tick = tick or (lambda line: log.info("%s", line))
        self.sleep = sleep
        self._lists: dict[tuple[str, str], list[SnapshotInfo]] = {}
        self._lock = threading.Lock()

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> DiskJobReport:
        now = self.clock.now()
        report = DiskJobReport(
            self.job.plan,
            self.name,
            self.job.consistency,
            self.job.region,
            list(self.job.copy_to),
            now.isoformat(),
        )
        disks = list(self.job.disks)
        if self.job.consistency == "application":
            report.disks = self._application(disks, now)
        else:
            workers = min(MAX_PARALLEL_DISKS, len(disks))
            with ThreadPoolExecutor(workers, thread_name_prefix="bcdr-disk") as pool:
                report.disks = list(pool.map(lambda d: self._crash_disk(d, now), disks))
        report.finished = self.clock.now().isoformat()
        return report

    def _tags(
        self, disk: str, role: str, when: datetime, source: str | None = None
    ) -> dict[str, str]:
        tags = {
            TAG_PLAN: self.job.plan,
            TAG_JOB: self.name,
            TAG_DISK: disk,
            TAG_ROLE: role,
            TAG_TIME: when.astimezone(UTC).isoformat(),
        }
        if source:
            tags[TAG_SOURCE] = source
        return tags

    def resource_group(self, rid: ResourceId) -> str:
        return self.job.resource_group or rid.resource_group

    def _check_region(self, info: DiskInfo) -> None:
        if info.location.lower() != self.job.region.lower():
            raise UsageError(
                f"disk {info.name} is in {info.location}, but the plan says its region is "
                f"{self.job.region}",
                where=f"snapshots.{self.name}.region",
                hint="correct `region` (residency is checked against it) or the disk id",
            )

    # --- listing (one list per resource group, shared by the disks' threads) ----------------

    def mine(self, subscription: str, group: str, disk: str) -> list[SnapshotInfo]:
        """This job's snapshots and copies of ``disk`` in the group, oldest first."""
        key = (subscription.lower(), group.lower())
        with self._lock:
            if key not in self._lists:
                self._lists[key] = self.svc.snapshots(subscription, group)
            found = list(self._lists[key])
        own = [
            s
            for s in found
            if s.tags.get(TAG_PLAN) == self.job.plan
            and s.tags.get(TAG_JOB) == self.name
            and s.tags.get(TAG_DISK, "").lower() == disk.lower()
        ]
        return sorted(own, key=lambda s: (s.when or datetime.min.replace(tzinfo=UTC), s.name))

    def _forget_listed(self, snapshot_id: str) -> None:
        with self._lock:
            for key, items in self._lists.items():
                self._lists[key] = [s for s in items if s.id.lower() != snapshot_id.lower()]

    def _remember(self, snap: SnapshotInfo) -> None:
        rid = ResourceId.parse(snap.id)
        with self._lock:
            key = (rid.subscription.lower(), rid.resource_group.lower())
            items = [s for s in self._lists.get(key, []) if s.id.lower() != snap.id.lower()]
            self._lists[key] = [*items, snap]

    def _delete(self, resource_id: str, what: str) -> None:
        self.svc.delete(resource_id).wait(self.timeout_s, what, self.tick)
        self._forget_listed(resource_id)

    # --- crash-consistent snapshots ---------------------------------------------------------

    def _crash_disk(self, disk: str, now: datetime) -> DiskResult:
        started = time.monotonic()
        rid = ResourceId.parse(disk)
        res = DiskResult(disk, rid.name)
        try:
            info = self.svc.disk(disk)
            res.region = info.location
            self._check_region(info)
            group = self.resource_group(rid)
            self._clear_failed(rid, group, res)
            sources = [
                s for s in self.mine(rid.subscription, group, disk) if _role(s) == ROLE_SNAPSHOT
            ]
            if len(sources) >= MAX_DISK_SNAPSHOTS:
                self._make_room(rid, group, res, len(sources))
            snap = self._snapshot(info, rid, group, now)
            res.recovery_point, res.time = snap.id, (snap.when or now).isoformat()
            res.status = PROTECTED
            for region in self.job.copy_to:
                if not self._copies(info, rid, group, region, res):
                    res.status = PARTIAL
            if self.job.retention is not None:
                try:
                    self._retain(rid, group, res)
                except BcdrError as exc:
                    res.notes.append(f"retention failed: {exc}")
        except BcdrError as exc:
            res.fail(exc)
        res.seconds = round(time.monotonic() - started, 3)
        self.tick(f"{rid.name}: {res.status}" + (f": {res.error}" if res.error else ""))
        return res

    def _clear_failed(self, rid: ResourceId, group: str, res: DiskResult) -> None:
        """Delete this job's snapshots of the disk that ended Failed and copies that failed:
        they are no recovery point, and count against the limit."""
        for s in self.mine(rid.subscription, group, res.disk):
            if s.provisioning == "Failed" or s.copy_error:
                why = s.copy_error or "provisioning failed"
                self._delete(s.id, f"failed snapshot {s.name}")
                res.removed.append(
                    {"id": s.id, "region": s.location, "reasons": [f"failed: {why}"]}
                )

    def _make_room(self, rid: ResourceId, group: str, res: DiskResult, count: int) -> None:
        if self.job.retention is not None:
            self._retain(rid, group, res)
            left = [
                s for s in self.mine(rid.subscription, group, res.disk) if _role(s) == ROLE_SNAPSHOT
            ]
            count = len(left)
        if count >= MAX_DISK_SNAPSHOTS:
            raise BcdrError(
                f"disk {rid.name} has {count} incremental snapshots from this job; Azure allows "
                f"{MAX_DISK_SNAPSHOTS} per disk",
                where=f"snapshots.{self.name}.retention",
                hint="keep fewer snapshots (retention), or delete old ones",
            )

    def _snapshot(self, info: DiskInfo, rid: ResourceId, group: str, now: datetime) -> SnapshotInfo:
        name = resource_name(info.name, self.name, stamp_of(now))
        sid = rid.sibling("snapshots", name, group)
        self.tick(f"{info.name}: creating incremental snapshot {name} in {info.location}")
        op = self.svc.create_snapshot(
            sid, info.location, "Copy", info.id, self._tags(info.id, ROLE_SNAPSHOT, now)
        )
        try:
            op.wait(self.timeout_s, f"snapshot of {info.name}", self.tick)
        except DiskOperationFailed:
            self._discard(sid, name)
            raise
        snap = self.svc.snapshot(sid)
        self._remember(snap)
        return snap

    def _discard(self, resource_id: str, name: str) -> None:
        """Best effort: remove what a failed operation left behind (the next run retries)."""
        try:
            self._delete(resource_id, f"failed {name}")
        except BcdrError as exc:
            self.tick(f"could not remove failed {name} ({exc}); the next run retries")

    def _copies(
        self, info: DiskInfo, rid: ResourceId, group: str, region: str, res: DiskResult
    ) -> bool:
        """Bring ``region`` up to date; True when every copy there is complete."""
        mine = self.mine(rid.subscription, group, info.id)
        copies = [s for s in mine if _role(s) == ROLE_COPY and s.location.lower() == region.lower()]
        for running in (c for c in copies if c.copying):
            self.tick(f"{info.name}: a copy to {region} from an earlier run is still running")
            result = self._follow_copy(running.id, running.tags.get(TAG_SOURCE, ""), region, info)
            res.copies.append(result)
            if result.state != DONE:
                return False
        done = {c.tags.get(TAG_SOURCE, "").lower() for c in copies if not c.copy_error}
        sources = [s for s in mine if _role(s) == ROLE_SNAPSHOT and s.usable]
        copied = [s for s in sources if s.id.lower() in done]
        if copied:
            last = copied[-1].when
            pending = [
                s for s in sources if s.id.lower() not in done and last and s.when and s.when > last
            ]
        else:
            pending = sources[-1:]
        for source in pending:
            result = self._copy(info, rid, group, region, source)
            res.copies.append(result)
            if result.state != DONE:
                return False
        return True

    def _copy(
        self, info: DiskInfo, rid: ResourceId, group: str, region: str, source: SnapshotInfo
    ) -> CopyResult:
        when = source.when or self.clock.now()
        name = resource_name(info.name, self.name, stamp_of(when), region)
        cid = rid.sibling("snapshots", name, group)
        self.tick(f"{info.name}: copying {source.name} to {region}")
        tags = self._tags(info.id, ROLE_COPY, when, source=source.id)
        started = time.monotonic()
        try:
            self.svc.create_snapshot(cid, region, "CopyStart", source.id, tags).wait(
                self.timeout_s, f"copy of {source.name} to {region}", self.tick
            )
        except BcdrError as exc:
            return CopyResult(region, cid, source.id, "failed", error=str(exc))
        result = self._follow_copy(cid, source.id, region, info, started)
        return result

    def _follow_copy(
        self,
        copy_id: str,
        source: str,
        region: str,
        info: DiskInfo,
        started: float | None = None,
    ) -> CopyResult:
        """Read the copy until ``completionPercent`` is 100, it reports an error, or time runs
        out (the copy goes on in Azure; the next run waits for it)."""
        started = time.monotonic() if started is None else started
        deadline = started + self.timeout_s
        shown, said = -100.0, 0.0
        while True:
            snap = self.svc.snapshot(copy_id)
            self._remember(snap)
            percent = snap.completion if snap.completion is not None else 0.0
            elapsed = round(time.monotonic() - started, 3)
            if snap.copy_error or snap.provisioning == "Failed":
                error = snap.copy_error or "provisioning failed"
                self.tick(f"{info.name}: copy to {region} failed: {error}")
                return CopyResult(region, copy_id, source, "failed", percent, error, elapsed)
            if snap.usable:
                self.tick(f"{info.name}: copy to {region} complete")
                return CopyResult(region, copy_id, source, DONE, 100.0, None, elapsed)
            if percent - shown >= 10 or time.monotonic() - said >= 30:
                shown, said = percent, time.monotonic()
                self.tick(f"{info.name}: copy to {region} {percent:.0f}%")
            if time.monotonic() >= deadline:
                return CopyResult(
                    region,
                    copy_id,
                    source,
                    COPYING,
                    percent,
                    f"not complete after {self.timeout_s:.0f}s; Azure goes on, the next run "
                    "waits for it",
                    elapsed,
                )
            self.sleep(self.poll_s)

    def _retain(self, rid: ResourceId, group: str, res: DiskResult) -> None:
        """The job's retention over this disk's snapshots, per region."""
        assert self.job.retention is not None
        policy = self.job.retention
        mine = self.mine(rid.subscription, group, res.disk)
        read_by_copies = {s.tags.get(TAG_SOURCE, "").lower() for s in mine if s.copying}
        regions: dict[str, list[SnapshotInfo]] = {}
        for s in mine:
            if s.usable and s.when is not None:
                regions.setdefault(s.location.lower(), []).append(s)
        now = self.clock.now()
        for region, snaps in sorted(regions.items()):
            by_id = {s.id: s for s in snaps}
            points = [Point(s.id, s.when) for s in snaps if s.when is not None]
            for d in decide(policy, points, now, self.job.timezone):
                entry = {"id": d.point.id, "region": region, "time": d.point.time.isoformat()}
                if d.keep:
                    res.kept.append({**entry, "reasons": list(d.reasons)})
                elif d.point.id.lower() in read_by_copies:
                    res.kept.append({**entry, "reasons": ["a running copy reads from it"]})
                else:
                    self._delete(d.point.id, f"snapshot {by_id[d.point.id].name}")
                    res.removed.append({**entry, "reasons": ["not kept by the retention policy"]})

    # --- application-consistent restore points ---------------------------------------------

    def _application(self, disks: list[str], now: datetime) -> list[DiskResult]:
        results = {d: DiskResult(d, ResourceId.parse(d).name, kind="restore point") for d in disks}
        by_vm: dict[str, list[str]] = {}
        for d in disks:
            res = results[d]
            try:
                info = self.svc.disk(d)
                res.region = info.location
                self._check_region(info)
                if not info.managed_by:
                    raise UsageError(
                        f"disk {info.name} is not attached to a virtual machine",
                        where=f"snapshots.{self.name}.disks",
                        hint="application-consistent restore points are taken through the VM; "
                        "use consistency: crash for unattached disks",
                    )
                by_vm.setdefault(info.managed_by, []).append(d)
            except BcdrError as exc:
                res.fail(exc)
        workers = max(1, min(MAX_PARALLEL_DISKS, len(by_vm)))
        with ThreadPoolExecutor(workers, thread_name_prefix="bcdr-vm") as pool:
            list(pool.map(lambda item: self._vm(item[0], item[1], results, now), by_vm.items()))
        return [results[d] for d in disks]

    def collection_id(self, vm_id: str, vm_name: str) -> str:
        rid = ResourceId.parse(vm_id)
        name = resource_name(vm_name, "bcdr", self.name)
        return rid.sibling("restorePointCollections", name, self.resource_group(rid))

    def _vm(
        self, vm_id: str, disks: list[str], results: dict[str, DiskResult], now: datetime
    ) -> None:
        started = time.monotonic()
        group = [results[d] for d in disks]
        try:
            vm = self.svc.vm(vm_id)
            coll = self.collection_id(vm.id, vm.name)
            self.svc.ensure_collection(
                coll, vm.location, vm.id, {TAG_PLAN: self.job.plan, TAG_JOB: self.name}
            )
            existing = self.svc.restore_points(coll)
            if len(existing) >= MAX_DISK_SNAPSHOTS:
                self._retain_points(coll, existing, group)
                existing = self.svc.restore_points(coll)
                if len(existing) >= MAX_DISK_SNAPSHOTS:
                    raise BcdrError(
                        f"VM {vm.name} has {len(existing)} restore points from this job; the "
                        f"limit is {MAX_DISK_SNAPSHOTS}",
                        where=f"snapshots.{self.name}.retention",
                        hint="keep fewer restore points (retention)",
                    )
            wanted = {d.lower() for d in disks}
            exclude = [d for d in vm.disks if d.lower() not in wanted]
            point_name = resource_name(vm.name, stamp_of(now))
            pid = f"{coll}/restorePoints/{point_name}"
            self.tick(f"{vm.name}: creating application-consistent restore point {point_name}")
            op = self.svc.create_restore_point(pid, exclude, "ApplicationConsistent")
            op.wait(self.timeout_s, f"restore point of VM {vm.name}", self.tick)
            point = self.svc.restore_point(pid)
            for res in group:
                drp = point.disk_points.get(res.disk.lower())
                if drp is None:
                    res.fail(
                        BcdrError(f"restore point {point_name} has no copy of disk {res.name}")
                    )
                    continue
                res.recovery_point, res.time, res.status = drp, now.isoformat(), PROTECTED
                if point.consistency and point.consistency != "ApplicationConsistent":
                    res.notes.append(
                        f"Azure took a {point.consistency} restore point (is the VM agent running?)"
                    )
            if self.job.retention is not None:
                try:
                    self._retain_points(coll, self.svc.restore_points(coll), group)
                except BcdrError as exc:
                    for res in group:
                        res.notes.append(f"retention failed: {exc}")
        except BcdrError as exc:
            for res in group:
                res.fail(exc)
        for res in group:
            res.seconds = round(time.monotonic() - started, 3)
            self.tick(f"{res.name}: {res.status}" + (f": {res.error}" if res.error else ""))

    def _retain_points(
        self, coll: str, points: list[RestorePointInfo], group: list[DiskResult]
    ) -> None:
        if self.job.retention is None:
            return
        usable = [p for p in points if p.provisioning == "Succeeded" and point_time(p)]
        by_id = {p.id: p for p in usable}
        decisions = decide(
            self.job.retention,
            [Point(p.id, point_time(p)) for p in usable],  # type: ignore[arg-type]
            self.clock.now(),
            self.job.timezone,
        )
        for d in decisions:
            entry = {"id": d.point.id, "time": d.point.time.isoformat()}
            if d.keep:
                for res in group:
                    res.kept.append({**entry, "region": res.region, "reasons": list(d.reasons)})
                continue
            self._delete(d.point.id, f"restore point {by_id[d.point.id].name}")
            for res in group:
                res.removed.append(
                    {**entry, "region": res.region, "reasons": ["not kept by the retention policy"]}
                )


def _role(s: SnapshotInfo) -> str:
    return s.tags.get(TAG_ROLE, "")
