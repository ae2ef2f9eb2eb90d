"""``DiskService`` on azure-mgmt-compute: one ComputeManagementClient per subscription, ARM's
long-running operations awaited with a deadline and progress, throttling retried.

Throttling and failing front ends: every request, polls included, is retried by the client's
pipeline (``cloud/arm.py``: backoff with jitter, Retry-After honoured) for the whole retry budget
(``bcdr/retrybudget.py``). Errors reach callers as BcdrErrors that name the resource and ARM's
error code and message, never the credential.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from bcdr.cloud.arm import ArmAccess, arm_client, arm_error_code, retry_after_s, translate_arm_error
from bcdr.disks.service import (
    DiskInfo,
    ResourceId,
    RestorePointInfo,
    SnapshotInfo,
    Tick,
    VmInfo,
)
from bcdr.errors import (
    BcdrError,
    DiskOperationFailed,
    OperationTimedOut,
    TransientStorageError,
    env_seconds,
)

log = logging.getLogger("bcdr.disks")

PROGRESS_EVERY_S = 30.0  # a line about a long wait at most this often
WRITER_ROLE = "Disk Snapshot Contributor (snapshots) or Virtual Machine Contributor"
T = TypeVar("T")


def poll_seconds(env: Mapping[str, str] | None = None) -> float:
    """Interval between polls of an operation that gives no Retry-After, and between reads of a
    copy's progress: ``BCDR_DISK_POLL_SECONDS``, default 30, at most an hour."""
    return env_seconds("BCDR_DISK_POLL_SECONDS", 30.0, 3600.0, env)


class AzureOperation:
    """A started ARM long-running operation (an azure-core LROPoller)."""

    def __init__(self, poller: Any, what: str, fail: Callable[..., BcdrError]):
        self._poller = poller
        self._what = what
        self._fail = fail

    def wait(self, timeout_s: float, what: str, tick: Tick) -> None:
        from azure.core.exceptions import AzureError  # the SDK loads only when disks are used

        try:
            self._wait(timeout_s, what, tick)
        except AzureError as exc:  # the operation's own failure, raised by azure-core
            raise self._fail(exc, "finish") from None

    def _wait(self, timeout_s: float, what: str, tick: Tick) -> None:
        started = time.monotonic()
        deadline = started + timeout_s
        said = started
        while not self._poller.done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise OperationTimedOut(
                    f"{what} did not finish within {timeout_s:.0f}s",
                    hint="Azure may still finish it; the next run takes it into account "
                    "(raise the job's `timeout` for big disks)",
                )
            self._poller.wait(min(left, 5.0))
            if time.monotonic() - said >= PROGRESS_EVERY_S:
                said = time.monotonic()
                tick(f"{what}: still running after {said - started:.0f}s")
        self._poller.result()


class AzureDisks:
    """The DiskService of one plan job: ``access`` gives the credential and endpoint (its
    subscription and resource group are per call)."""

    def __init__(
        self,
        token_env: str | None,
        endpoint: str | None,
        env: Mapping[str, str] | None = None,
    ):
        self._token_env = token_env
        self._endpoint = endpoint
        self._env = dict(os.environ if env is None else env)
        self._clients: dict[str, Any] = {}

    # --- plumbing ----------------------------------------------------------------------------

    def _access(self, rid: ResourceId) -> ArmAccess:
        return ArmAccess(rid.subscription, rid.resource_group, self._token_env, self._endpoint)

    def _client(self, rid: ResourceId) -> Any:
        key = rid.subscription.lower()
        if key not in self._clients:
            from azure.mgmt.compute import ComputeManagementClient

            self._clients[key] = arm_client(
                ComputeManagementClient, self._access(rid), self._env, poll_seconds(self._env)
            )
        return self._clients[key]

    def _error(self, rid: ResourceId, what: str, action: str) -> Callable[..., BcdrError]:
        access = self._access(rid)

        def make(exc: Exception, verb: str = "") -> BcdrError:
            if isinstance(exc, BcdrError):
                return exc
            code, message = arm_error_code(exc)
            if verb == "finish" and getattr(exc, "status_code", None) in (None, 200):
                # the operation itself ended Failed
                return DiskOperationFailed(
                    f"{what}: Azure reported the operation Failed ({code or 'no code'})"
                    + (f": {message}" if message else ""),
                    where=access.base_url,
                )
            role = "Reader" if action == "read" else WRITER_ROLE
            return translate_arm_error(exc, what, access, action=action, role=role)

        return make

    def _call(self, rid: ResourceId, what: str, action: str, fn: Callable[[], T]) -> T:
        """``fn()`` with errors translated. Transient failures (429 and 5xx, dropped
        connections) were retried by the client's pipeline for the whole retry budget."""
        from azure.core.exceptions import AzureError

        try:
            return fn()
        except AzureError as exc:
            err = self._error(rid, what, action)(exc)
            if isinstance(err, TransientStorageError):
                err.retry_after = retry_after_s(exc)
            raise err from None

    @staticmethod
    def _wire(model: Any) -> dict[str, Any]:
        return dict(model.as_dict())

    def _start(
        self, rid: ResourceId, what: str, action: str, fn: Callable[[], Any]
    ) -> AzureOperation:
        poller = self._call(rid, what, action, fn)
        return AzureOperation(poller, what, self._error(rid, what, action))

    # --- reads -------------------------------------------------------------------------------

    def _read(self, resource_id: str, what: str, operations: str) -> dict[str, Any]:
        """GET one resource through ``client.<operations>.get(group, name)``, as wire JSON."""
        rid = ResourceId.parse(resource_id)
        ops = getattr(self._client(rid), operations)
        return self._call(
            rid,
            f"{what} {rid.name}",
            "read",
            lambda: self._wire(ops.get(rid.resource_group, rid.name)),
        )

    def disk(self, disk_id: str) -> DiskInfo:
        return DiskInfo.from_wire(self._read(disk_id, "disk", "disks"))

    def vm(self, vm_id: str) -> VmInfo:
        return VmInfo.from_wire(self._read(vm_id, "virtual machine", "virtual_machines"))

    def snapshots(self, subscription: str, resource_group: str) -> list[SnapshotInfo]:
        rid = ResourceId(subscription, resource_group, "snapshots", "*")
        client = self._client(rid)
        docs = self._call(
            rid,
            f"the snapshots of resource group {resource_group}",
            "read",
            lambda: [
                self._wire(s) for s in client.snapshots.list_by_resource_group(resource_group)
            ],
        )
        return [SnapshotInfo.from_wire(d) for d in docs]

    def snapshot(self, snapshot_id: str) -> SnapshotInfo:
        return SnapshotInfo.from_wire(self._read(snapshot_id, "snapshot", "snapshots"))

    def restore_points(self, collection_id: str) -> list[RestorePointInfo]:
        from azure.core.exceptions import ResourceNotFoundError

        rid = ResourceId.parse(collection_id)
        client = self._client(rid)

        def get() -> dict[str, Any] | None:
            try:
                return self._wire(
                    client.restore_point_collections.get(
                        rid.resource_group, rid.name, expand="restorePoints"
                    )
                )
            except ResourceNotFoundError:
                return None

        doc = self._call(rid, f"restore point collection {rid.name}", "read", get)
        if doc is None:
            return []
        props = doc.get("properties") or {}
        return [
            RestorePointInfo.from_wire(p, doc.get("location", ""))
            for p in props.get("restorePoints") or []
        ]

    def restore_point(self, point_id: str) -> RestorePointInfo:
        rid = ResourceId.parse(point_id)
        collection, _, point = point_id.rpartition("/restorePoints/")
        client = self._client(rid)
        doc = self._call(
            rid,
            f"restore point {point}",
            "read",
            lambda: self._wire(client.restore_points.get(rid.resource_group, rid.name, point)),
        )
        return RestorePointInfo.from_wire(doc, "")

    # --- writes ------------------------------------------------------------------------------

    def create_snapshot(
        self, snapshot_id: str, location: str, option: str, source: str, tags: Mapping[str, str]
    ) -> AzureOperation:
        rid = ResourceId.parse(snapshot_id)
        client = self._client(rid)
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "creationData": {"createOption": option, "sourceResourceId": source},
                "incremental": True,
            },
        }
        what = f"snapshot {rid.name}" + (f" (copy to {location})" if option == "CopyStart" else "")
        return self._start(
            rid,
            what,
            "create",
            lambda: client.snapshots.begin_create_or_update(rid.resource_group, rid.name, body),
        )

    def create_disk(
        self, disk_id: str, location: str, option: str, source: str, tags: Mapping[str, str]
    ) -> AzureOperation:
        rid = ResourceId.parse(disk_id)
        client = self._client(rid)
        body = {
            "location": location,
            "tags": dict(tags),
            "sku": {"name": "Standard_LRS"},
            "properties": {"creationData": {"createOption": option, "sourceResourceId": source}},
        }
        return self._start(
            rid,
            f"disk {rid.name}",
            "create",
            lambda: client.disks.begin_create_or_update(rid.resource_group, rid.name, body),
        )

    def delete(self, resource_id: str) -> AzureOperation:
        rid = ResourceId.parse(resource_id)
        client = self._client(rid)
        kind = rid.kind.lower()
        fn: Callable[[], Any]
        if kind == "snapshots":
            what, fn = (
                f"snapshot {rid.name}",
                partial(client.snapshots.begin_delete, rid.resource_group, rid.name),
            )
        elif kind == "disks":
            what, fn = (
                f"disk {rid.name}",
                partial(client.disks.begin_delete, rid.resource_group, rid.name),
            )
        else:
            point = resource_id.rpartition("/restorePoints/")[2]
            what = f"restore point {point}"
            fn = partial(client.restore_points.begin_delete, rid.resource_group, rid.name, point)
        return self._start(rid, what, "delete", fn)

    def ensure_collection(
        self, collection_id: str, location: str, vm_id: str, tags: Mapping[str, str]
    ) -> None:
        rid = ResourceId.parse(collection_id)
        client = self._client(rid)
        body = {"location": location, "tags": dict(tags), "properties": {"source": {"id": vm_id}}}
        self._call(
            rid,
            f"restore point collection {rid.name}",
            "create",
            lambda: client.restore_point_collections.create_or_update(
                rid.resource_group, rid.name, body
            ),
        )

    def create_restore_point(
        self, point_id: str, exclude: list[str], consistency: str
    ) -> AzureOperation:
        rid = ResourceId.parse(point_id)
        point = point_id.rpartition("/restorePoints/")[2]
        client = self._client(rid)
        body = {
            "properties": {
                "consistencyMode": consistency,
                "excludeDisks": [{"id": d} for d in exclude],
            }
        }
        return self._start(
            rid,
            f"restore point {point}",
            "create",
            lambda: client.restore_points.begin_create(rid.resource_group, rid.name, point, body),
        )
