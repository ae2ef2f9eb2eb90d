"""Trial restores of managed disks, for drills: a new disk from a job's newest recovery point in
a chosen region, checked, then deleted.

A disk can only be made from a snapshot in its own region, so a restore in another region uses
the completed copy there (``copy_to`` must include it). From an application-consistent job the
source is the disk restore point (``createOption: Restore``) in the VM's region.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime

from bcdr.disks.job import DiskJob, point_time, resource_name, stamp_of
from bcdr.disks.service import ROLE_DRILL, TAG_DISK, TAG_JOB, TAG_PLAN, TAG_ROLE, ResourceId
from bcdr.errors import BcdrError, UsageError


@dataclass(frozen=True)
class RecoveryPoint:
    id: str  # snapshot or disk restore point
    option: str  # createOption for a disk made from it: Copy or Restore
    region: str
    time: datetime
    size_gb: int | None


@dataclass
class RestoredDisk:
    id: str
    name: str
    region: str
    source: str
    point_time: str
    size_gb: int | None
    expected_size_gb: int | None
    seconds: float  # from the create request to the disk's Succeeded
    deleted: bool = False

    @property
    def size_ok(self) -> bool:
        return self.expected_size_gb is None or self.size_gb == self.expected_size_gb

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "size_ok": self.size_ok}


def newest_point(
    runner: DiskJob, disk: str, region: str, wanted: str | None = None
) -> RecoveryPoint:
    """The newest usable recovery point of ``disk`` in ``region`` (or the newest whose id is
    ``wanted`` or whose name contains it, e.g. a time stamp ``20261101T020000Z``), or
    UsageError."""
    rid = ResourceId.parse(disk)
    if runner.job.consistency == "application":
        info = runner.svc.disk(disk)
        if not info.managed_by:
            raise UsageError(f"disk {rid.name} is not attached to a VM: it has no restore points")
        vm = ResourceId.parse(info.managed_by)
        points = [
            p
            for p in runner.svc.restore_points(runner.collection_id(info.managed_by, vm.name))
            if p.provisioning == "Succeeded" and disk.lower() in p.disk_points
        ]
        found = [
            RecoveryPoint(p.disk_points[disk.lower()], "Restore", p.location, t, info.size_gb)
            for p in points
            if (t := point_time(p)) is not None and p.location.lower() == region.lower()
        ]
    else:
        found = [
            RecoveryPoint(s.id, "Copy", s.location, s.when, s.size_gb)
            for s in runner.mine(rid.subscription, runner.resource_group(rid), disk)
            if s.usable and s.when is not None and s.location.lower() == region.lower()
        ]
    if wanted is not None:
        found = [
            p
            for p in found
            if p.id == wanted or wanted in p.id.rsplit("/", 1)[-1] or f"-{wanted}/" in p.id
        ]
        if not found:
            raise UsageError(
                f"disk {rid.name} has no complete recovery point {wanted!r} in {region}",
                where=f"snapshots.{runner.name}",
                hint=f"list them with `bcdr disk-snapshots PLAN --job {runner.name}`",
            )
    if not found:
        regions = ", ".join([runner.job.region, *runner.job.copy_to])
        raise UsageError(
            f"disk {rid.name} has no complete recovery point in {region}",
            where=f"snapshots.{runner.name}",
            hint=f"this job keeps recovery points in {regions}; run it first, or restore in one "
            "of those regions",
        )
    return max(found, key=lambda p: p.time)


def restore_disk(
    runner: DiskJob, disk: str, region: str, *, name: str | None = None, point: str | None = None
) -> RestoredDisk:
    """Create a disk from the newest recovery point of ``disk`` in ``region`` and wait until it
    succeeded. The caller deletes it (``delete_restored``)."""
    found = newest_point(runner, disk, region, point)
    rid = ResourceId.parse(disk)
    now = runner.clock.now()
    name = name or resource_name(rid.name, "drill", stamp_of(now))
    new_id = rid.sibling("disks", name, runner.resource_group(rid))
    tags = {TAG_PLAN: runner.job.plan, TAG_JOB: runner.name, TAG_DISK: disk, TAG_ROLE: ROLE_DRILL}
    started = time.monotonic()
    runner.tick(f"{rid.name}: creating disk {name} in {region} from {found.id.rsplit('/', 1)[-1]}")
    op = runner.svc.create_disk(new_id, region, found.option, found.id, tags)
    try:
        op.wait(runner.timeout_s, f"disk {name}", runner.tick)
    except BcdrError:
        _try_delete(runner, new_id)
        raise
    made = runner.svc.disk(new_id)
    return RestoredDisk(
        made.id,
        made.name,
        made.location,
        found.id,
        found.time.isoformat(),
        made.size_gb,
        found.size_gb,
        round(time.monotonic() - started, 3),
    )


def delete_restored(runner: DiskJob, restored: RestoredDisk) -> None:
    runner.svc.delete(restored.id).wait(runner.timeout_s, f"disk {restored.name}", runner.tick)
    restored.deleted = True


def _try_delete(runner: DiskJob, disk_id: str) -> None:
    try:
        runner.svc.delete(disk_id).wait(runner.timeout_s, "failed trial disk", runner.tick)
    except BcdrError as exc:
        runner.tick(f"could not delete {disk_id.rsplit('/', 1)[-1]}: {exc}")
