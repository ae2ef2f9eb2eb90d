"""What bcdr needs from Azure's compute resource provider, as plain records and one protocol.

``AzureDisks`` (``bcdr.disks.azure``) implements it with azure-mgmt-compute; everything above it
(jobs, listing, retention, trial restores) speaks only these types. Records are parsed from ARM's
wire JSON, so their fields are the ones Azure documents.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bcdr.errors import UsageError

ID_RE = re.compile(
    r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
    r"Microsoft\.Compute/(?P<kind>[^/]+)/(?P<name>[^/]+)(?P<rest>/.*)?",
    re.IGNORECASE,
)

# Tags bcdr puts on what it creates; listing and retention find their own resources by them.
TAG_PLAN, TAG_JOB, TAG_DISK, TAG_ROLE, TAG_SOURCE, TAG_TIME = (
    "bcdr-plan",
    "bcdr-job",
    "bcdr-disk",
    "bcdr-role",
    "bcdr-source",
    "bcdr-time",
)
ROLE_SNAPSHOT, ROLE_COPY, ROLE_DRILL = "snapshot", "copy", "drill"


@dataclass(frozen=True)
class ResourceId:
    subscription: str
    resource_group: str
    kind: str
    name: str

    @classmethod
    def parse(cls, rid: str) -> ResourceId:
        m = ID_RE.fullmatch(rid)
        if not m:
            raise UsageError(
                f"{rid!r} is not a Microsoft.Compute resource id",
                hint="copy it from `az disk show --query id`",
            )
        return cls(m["sub"], m["rg"], m["kind"], m["name"])

    def sibling(self, kind: str, name: str, resource_group: str | None = None) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/"
            f"{resource_group or self.resource_group}/providers/Microsoft.Compute/{kind}/{name}"
        )


def _time(raw: object) -> datetime | None:
    if not isinstance(raw, str) or not raw:
        return None
    text = raw.replace("Z", "+00:00")
    # ARM writes up to 7 fractional digits; Python reads 6
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class DiskInfo:
    id: str
    name: str
    location: str
    size_gb: int | None
    managed_by: str | None  # the VM it is attached to
    state: str
    provisioning: str
    tags: Mapping[str, str]

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> DiskInfo:
        props = doc.get("properties") or {}
        return cls(
            id=doc["id"],
            name=doc["name"],
            location=doc["location"],
            size_gb=props.get("diskSizeGB"),
            managed_by=doc.get("managedBy"),
            state=props.get("diskState") or "",
            provisioning=props.get("provisioningState") or "",
            tags=doc.get("tags") or {},
        )


@dataclass(frozen=True)
class VmInfo:
    id: str
    name: str
    location: str
    disks: tuple[str, ...]  # managed-disk ids, OS disk first

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> VmInfo:
        profile = (doc.get("properties") or {}).get("storageProfile") or {}
        refs = [profile.get("osDisk") or {}, *(profile.get("dataDisks") or [])]
        disks = tuple(
            r["managedDisk"]["id"] for r in refs if (r.get("managedDisk") or {}).get("id")
        )
        return cls(doc["id"], doc["name"], doc["location"], disks)


@dataclass(frozen=True)
class SnapshotInfo:
    id: str
    name: str
    location: str
    created: datetime | None
    provisioning: str
    create_option: str
    source: str  # sourceResourceId
    size_gb: int | None
    completion: float | None  # CopyStart copies only
    copy_error: str | None
    tags: Mapping[str, str]

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any]) -> SnapshotInfo:
        props = doc.get("properties") or {}
        data = props.get("creationData") or {}
        err = props.get("copyCompletionError")
        return cls(
            id=doc["id"],
            name=doc["name"],
            location=doc["location"],
            created=_time(props.get("timeCreated")),
            provisioning=props.get("provisioningState") or "",
            create_option=data.get("createOption") or "",
            source=data.get("sourceResourceId") or "",
            size_gb=props.get("diskSizeGB"),
            completion=props.get("completionPercent"),
            copy_error=f"{err.get('errorCode')}: {err.get('errorMessage')}" if err else None,
            tags=doc.get("tags") or {},
        )

    @property
    def when(self) -> datetime | None:
        """bcdr's own time for it (the tag), else Azure's creation time."""
        return _time(self.tags.get(TAG_TIME)) or self.created

    @property
    def copying(self) -> bool:
        return (
            self.create_option == "CopyStart"
            and not self.copy_error
            and (self.completion is None or self.completion < 100)
        )

    @property
    def usable(self) -> bool:
        """Created, and (for a copy) complete: a disk can be made from it."""
        return self.provisioning == "Succeeded" and not self.copy_error and not self.copying


@dataclass(frozen=True)
class RestorePointInfo:
    id: str
    name: str
    location: str
    created: datetime | None
    provisioning: str
    consistency: str
    disk_points: Mapping[str, str]  # source disk id (lower) -> disk restore point id

    @classmethod
    def from_wire(cls, doc: Mapping[str, Any], location: str) -> RestorePointInfo:
        props = doc.get("properties") or {}
        meta = props.get("sourceMetadata") or {}
        profile = meta.get("storageProfile") or {}
        refs = [profile.get("osDisk") or {}, *(profile.get("dataDisks") or [])]
        points = {
            r["managedDisk"]["id"].lower(): r["diskRestorePoint"]["id"]
            for r in refs
            if (r.get("managedDisk") or {}).get("id")
            and (r.get("diskRestorePoint") or {}).get("id")
        }
        return cls(
            id=doc["id"],
            name=doc["name"],
            location=meta.get("location") or location,
            created=_time(props.get("timeCreated")),
            provisioning=props.get("provisioningState") or "",
            consistency=props.get("consistencyMode") or "",
            disk_points=points,
        )


Tick = Callable[[str], None]  # progress: one line about a long-running operation


class Operation(Protocol):
    """A started long-running operation."""

    def wait(self, timeout_s: float, what: str, tick: Tick) -> None:
        """Until it succeeded; raises DiskOperationFailed or OperationTimedOut."""
        ...


class DiskService(Protocol):
    def disk(self, disk_id: str) -> DiskInfo: ...

    def vm(self, vm_id: str) -> VmInfo: ...

    def snapshots(self, subscription: str, resource_group: str) -> list[SnapshotInfo]: ...

    def snapshot(self, snapshot_id: str) -> SnapshotInfo: ...

    def create_snapshot(
        self, snapshot_id: str, location: str, option: str, source: str, tags: Mapping[str, str]
    ) -> Operation: ...

    def delete(self, resource_id: str) -> Operation: ...

    def ensure_collection(
        self, collection_id: str, location: str, vm_id: str, tags: Mapping[str, str]
    ) -> None: ...

    def restore_points(self, collection_id: str) -> list[RestorePointInfo]: ...

    def create_restore_point(
        self, point_id: str, exclude: list[str], consistency: str
    ) -> Operation: ...

    def restore_point(self, point_id: str) -> RestorePointInfo: ...

    def create_disk(
        self, disk_id: str, location: str, option: str, source: str, tags: Mapping[str, str]
    ) -> Operation: ...
