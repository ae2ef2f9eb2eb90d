"""A small stateful Azure Resource Manager server for tests, on loopback HTTPS.

No emulator exists for the management plane, so the real azure-mgmt SDKs talk to this instead:
it speaks ARM's REST conventions — resource ids as paths, a required ``api-version`` query,
``Authorization: Bearer`` checked against the one token it accepts, JSON error bodies
``{"error": {"code", "message"}}`` with ARM's codes (InvalidAuthenticationToken,
AuthorizationFailed, ResourceNotFound, ResourceGroupNotFound, MissingApiVersionParameter,
BadRequest, OperationNotAllowed, TooManyRequests). Resources are plain JSON documents keyed by
their id (case-insensitive, as in ARM).

The compute resources bcdr uses behave as Azure documents them:

- **long-running operations**: PUT and DELETE of snapshots, disks and restore points answer
  201/202 with an ``Azure-AsyncOperation`` URL; the operation reports ``InProgress`` for
  ``lro_polls`` polls, then ``Succeeded`` or ``Failed`` with an error (``fail_snapshot_of``);
- **incremental snapshots** (``createOption: Copy`` from a disk) count against
  ``snapshot_limit`` per disk;
- **CopyStart** copies a snapshot to another region: the operation succeeds at once, then
  ``completionPercent`` grows by ``copy_step`` on each GET until 100, or stops with
  ``copyCompletionError`` (``fail_copy_to``). Only one copy per disk may run at a time, copies go
  in creation order, and a snapshot being copied from cannot be deleted;
- **VM restore points** (``restorePointCollections/*/restorePoints``) cover the VM's disks
  minus ``excludeDisks``, each as a disk restore point;
- **disks** are created from a snapshot in their own region (``Copy``) or a disk restore point
  (``Restore``);
- **lists** page with ``nextLink`` (``page_size`` items per page);
- **faults**: ``flaky_everywhere((429, 500))`` fails every distinct request once with each
  status before serving it (reads, writes, deletes, polls alike);
- **throttling**: ``throttle(method, pattern, times, retry_after, status)`` answers 429 with
  ``Retry-After``.

HTTPS is required because azure-core only sends bearer tokens over TLS: the server makes a
throwaway CA-less self-signed certificate for 127.0.0.1 with ``cryptography``; clients trust it
through ``REQUESTS_CA_BUNDLE=<server.ca_file>``.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

RG_RE = re.compile(r"^/subscriptions/([^/]+)/resourcegroups/([^/]+)", re.IGNORECASE)
COMPUTE = "/providers/microsoft.compute/"
OPERATION_RE = re.compile(
    r"^/subscriptions/[^/]+/providers/microsoft\.compute/locations/([^/]+)/operations/([^/]+)$"
)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 / localhost, written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bcdr-test-arm")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "arm-cert.pem", folder / "arm-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class ArmServer:
    """``with ArmServer(tmp_path, token="t") as arm:`` then ``arm.url``, ``arm.ca_file``,
    ``arm.put_resource(id, doc)``, ``arm.disk(...)``, ``arm.vm(...)``, ``arm.requests``
    (method, path, api-version), ``arm.log`` (time, method, path, status)."""

    def __init__(self, folder: Path, token: str):
        self.token = token
        self.resources: dict[str, dict[str, Any]] = {}
        self.resource_groups: set[str] = set()
        self.forbidden: set[str] = set()  # ids the caller has no role on (403)
        self.requests: list[tuple[str, str, str]] = []
        self.log: list[tuple[float, str, str, int]] = []  # monotonic time, method, path, status
        self.lock = threading.Lock()
        # behaviour knobs (see the module docstring)
        self.lro_polls = 2
        self.copy_step = 34
        self.page_size = 2
        self.snapshot_limit = 500
        self.retry_after = "0"  # Retry-After of operation polls: tests need no real waits
        self.fail_snapshot_of: dict[str, tuple[str, str]] = {}  # disk id (lower) -> code, message
        self.fail_copy_to: set[str] = set()  # regions whose CopyStart copies fail
        self.stall_copies = False  # copies stay at 0% (for timeouts)
        self.operations: dict[str, Operation] = {}
        self._throttles: list[list[Any]] = []
        self._ids = itertools.count(1)
        self.ca_file, key_file = make_certificate(folder)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.ca_file, key_file)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> ArmServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- state -----------------------------------------------------------------------------

    def put_resource(self, resource_id: str, doc: dict[str, Any]) -> None:
        m = RG_RE.match(resource_id)
        assert m, resource_id
        with self.lock:
            self.resource_groups.add(m.group(0).lower())
            self.resources[resource_id.lower()] = {"id": resource_id, **doc}

    def storage_account(
        self,
        subscription: str,
        group: str,
        name: str,
        *,
        location: str,
        sku: str,
        secondary: str | None = None,
    ) -> str:
        """Add a storage account as ARM describes one; returns its id."""
        rid = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
            f"Microsoft.Storage/storageAccounts/{name}"
        )
        props: dict[str, Any] = {
            "provisioningState": "Succeeded",
            "primaryLocation": location,
            "statusOfPrimary": "available",
            "primaryEndpoints": {"blob": f"https://{name}.blob.core.windows.net/"},
            "accessTier": "Hot",
        }
        if secondary:
            props |= {"secondaryLocation": secondary, "statusOfSecondary": "available"}
        self.put_resource(
            rid,
            {
                "name": name,
                "type": "Microsoft.Storage/storageAccounts",
                "location": location,
                "kind": "StorageV2",
                "sku": {"name": sku, "tier": sku.split("_")[0]},
                "properties": props,
            },
        )
        return rid

    def disk(
        self,
        subscription: str,
        group: str,
        name: str,
        *,
        location: str,
        size_gb: int = 64,
        managed_by: str | None = None,
    ) -> str:
        """Add a managed disk; returns its id."""
        rid = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
            f"Microsoft.Compute/disks/{name}"
        )
        doc: dict[str, Any] = {
            "name": name,
            "type": "Microsoft.Compute/disks",
            "location": location,
            "sku": {"name": "Premium_LRS"},
            "properties": {
                "diskSizeGB": size_gb,
                "diskState": "Attached" if managed_by else "Unattached",
                "provisioningState": "Succeeded",
                "uniqueId": str(uuid.uuid4()),
                "creationData": {"createOption": "Empty"},
            },
        }
        if managed_by:
            doc["managedBy"] = managed_by
        self.put_resource(rid, doc)
        return rid

    def vm(
        self, subscription: str, group: str, name: str, *, location: str, disks: list[str]
    ) -> str:
        """Add a virtual machine whose first disk is the OS disk; returns its id."""
        rid = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/"
            f"Microsoft.Compute/virtualMachines/{name}"
        )

        def ref(d: str) -> dict[str, Any]:
            return {"name": d.rsplit("/", 1)[-1], "managedDisk": {"id": d}}

        profile = {
            "osDisk": {**ref(disks[0]), "osType": "Linux", "createOption": "FromImage"},
            "dataDisks": [
                {**ref(d), "lun": i, "createOption": "Attach"} for i, d in enumerate(disks[1:])
            ],
        }
        self.put_resource(
            rid,
            {
                "name": name,
                "type": "Microsoft.Compute/virtualMachines",
                "location": location,
                "properties": {"provisioningState": "Succeeded", "storageProfile": profile},
            },
        )
        for d in disks:
            self.resources[d.lower()]["managedBy"] = rid
            self.resources[d.lower()]["properties"]["diskState"] = "Attached"
        return rid

    def throttle(
        self, method: str, pattern: str, times: int, retry_after: int = 1, status: int = 429
    ) -> None:
        """The next ``times`` requests of ``method`` whose path matches ``pattern`` get
        ``status`` (429 throttling, or 500/503 as a failing front end answers)."""
        with self.lock:
            self._throttles.append(
                [method, re.compile(pattern, re.IGNORECASE), times, retry_after, status]
            )

    def flaky_everywhere(self, statuses: tuple[int, ...] = (429, 500)) -> None:
        """Every distinct request (method and path: reads, writes, deletes, every poll of a
        long-running operation) first gets each of ``statuses`` once, then is served."""
        with self.lock:
            self._flaky = list(statuses)
            self._flaky_seen: dict[tuple[str, str], int] = {}

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Resources of a type (``snapshots``, ``disks``, ``restorePoints``), by id."""
        with self.lock:
            return [
                doc for key, doc in self.resources.items() if key.rsplit("/", 2)[-2] == kind.lower()
            ]

    def throttled(self, method: str, path: str) -> tuple[int, int] | None:
        """(status, Retry-After) when this request is to fail, else None."""
        with self.lock:
            for t in self._throttles:
                if t[0] == method and t[2] > 0 and t[1].search(path):
                    t[2] -= 1
                    return int(t[4]), int(t[3])
            flaky = getattr(self, "_flaky", None)
            if flaky:
                key = (method, path.lower())
                n = self._flaky_seen.get(key, 0)
                if n < len(flaky):
                    self._flaky_seen[key] = n + 1
                    return flaky[n], 0
        return None

    # --- long-running operations -------------------------------------------------------------

    def start_operation(
        self, location: str, subscription: str, done: Callable[[], tuple[str, str] | None]
    ) -> str:
        """A new async operation; ``done`` runs when it completes and returns an error (code,
        message) to make it fail. Returns the operation's URL."""
        op_id = f"op-{next(self._ids)}"
        self.operations[op_id] = Operation(self.lro_polls, done)
        return (
            f"{self.url}/subscriptions/{subscription}/providers/Microsoft.Compute/locations/"
            f"{location}/operations/{op_id}?api-version=2026-03-02"
        )

    def poll_operation(self, op_id: str) -> dict[str, Any] | None:
        with self.lock:
            op = self.operations.get(op_id)
            if op is None:
                return None
            if op.status == "InProgress":
                op.polls_left -= 1
                if op.polls_left <= 0:
                    op.error = op.done()
                    op.status = "Failed" if op.error else "Succeeded"
            doc: dict[str, Any] = {"name": op_id, "status": op.status}
            if op.error:
                doc["error"] = {"code": op.error[0], "message": op.error[1]}
            return doc

    # --- compute semantics (called under self.lock) -----------------------------------------

    def _get(self, rid: str) -> dict[str, Any] | None:
        return self.resources.get(rid.lower())

    def _snapshot_get(self, doc: dict[str, Any]) -> None:
        """A GET of a snapshot being copied moves the copy on."""
        props = doc["properties"]
        if props.get("creationData", {}).get("createOption") != "CopyStart":
            return
        if props.get("provisioningState") != "Succeeded" or props.get("copyCompletionError"):
            return
        if doc["location"] in self.fail_copy_to:
            props["copyCompletionError"] = {
                "errorCode": "CopySourceNotFound",
                "errorMessage": "The source snapshot was not found during the copy.",
            }
            return
        if not self.stall_copies:
            props["completionPercent"] = min(
                100.0, props.get("completionPercent", 0.0) + self.copy_step
            )

    def _copying_from(self, source: str) -> list[dict[str, Any]]:
        return [
            d
            for d in self.resources.values()
            if d.get("properties", {}).get("creationData", {}).get("createOption") == "CopyStart"
            and d["properties"]["creationData"].get("sourceResourceId", "").lower()
            == source.lower()
            and d["properties"].get("completionPercent", 0) < 100
            and not d["properties"].get("copyCompletionError")
        ]

    def _creation(
        self, body: dict[str, Any], options: tuple[str, ...]
    ) -> tuple[int, Any] | tuple[str, dict[str, Any], dict[str, Any], str]:
        """The creationData of a PUT: (option, data, source, location), or an error answer."""
        data = (body.get("properties") or {}).get("creationData") or {}
        option, source_id = data.get("createOption"), data.get("sourceResourceId", "")
        location = body.get("location")
        if not location:
            return 400, (
                "LocationRequired",
                "The location property is required for this definition.",
            )
        if option not in options:
            return 400, ("BadRequest", f"createOption {option!r} is not supported here.")
        source = self._get(source_id)
        if source is None:
            return 404, ("NotFound", f"Source resource {source_id} was not found.")
        return option, data, source, location

    def put_snapshot(self, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
        props = body.get("properties") or {}
        found = self._creation(body, ("Copy", "CopyStart"))
        if len(found) == 2:
            return found
        option, data, source, location = found
        family = source["properties"].get("uniqueId") or source["properties"].get(
            "incrementalSnapshotFamilyId"
        )
        if option == "Copy":
            if source["location"] != location:
                return 400, (
                    "BadRequest",
                    "The source must be in the snapshot's region; use CopyStart.",
                )
            count = sum(
                1
                for d in self.resources.values()
                if d.get("type") == "Microsoft.Compute/snapshots"
                and d["properties"].get("incrementalSnapshotFamilyId") == family
                and d["location"] == location
            )
            if props.get("incremental") and count >= self.snapshot_limit:
                return 409, (
                    "OperationNotAllowed",
                    f"The disk has reached the limit of {self.snapshot_limit} incremental "
                    "snapshots.",
                )
        else:
            if not props.get("incremental"):
                return 400, ("BadRequest", "CopyStart requires an incremental snapshot.")
            if source["location"] == location:
                return 400, ("BadRequest", "CopyStart copies to another region.")
            for d in self.resources.values():
                p = d.get("properties", {})
                if (
                    d.get("type") == "Microsoft.Compute/snapshots"
                    and d["location"] == location
                    and p.get("incrementalSnapshotFamilyId") == family
                    and p.get("creationData", {}).get("createOption") == "CopyStart"
                ):
                    if p.get("completionPercent", 0) < 100 and not p.get("copyCompletionError"):
                        return 409, (
                            "OperationNotAllowed",
                            "Only one copy of an incremental snapshot of a disk may run at a time.",
                        )
                    copied = self._get(p["creationData"]["sourceResourceId"])
                    if (
                        copied
                        and copied["properties"]["timeCreated"]
                        > source["properties"]["timeCreated"]
                    ):
                        return 409, (
                            "OperationNotAllowed",
                            "Incremental snapshots must be copied in the order they were created.",
                        )
        group_id = RG_RE.match(rid.lower())
        assert group_id
        name = rid.rsplit("/", 1)[-1]
        doc: dict[str, Any] = {
            "id": rid,
            "name": name,
            "type": "Microsoft.Compute/snapshots",
            "location": location,
            "tags": body.get("tags") or {},
            "sku": {"name": "Standard_ZRS"},
            "properties": {
                "creationData": {**data, "sourceUniqueId": source["properties"].get("uniqueId")},
                "incremental": bool(props.get("incremental")),
                "incrementalSnapshotFamilyId": family,
                "diskSizeGB": source["properties"].get("diskSizeGB"),
                "provisioningState": "Creating",
                "uniqueId": str(uuid.uuid4()),
                "timeCreated": _now(),
            },
        }
        if option == "CopyStart":
            doc["properties"]["completionPercent"] = 0.0
        self.resource_groups.add(group_id.group(0))
        self.resources[rid.lower()] = doc
        source_disk = (source.get("tags") or {}).get("bcdr-disk", source["id"])
        failure = self.fail_snapshot_of.get(source_disk.lower()) if option == "Copy" else None

        def done() -> tuple[str, str] | None:
            doc["properties"]["provisioningState"] = "Failed" if failure else "Succeeded"
            return failure

        return 202, (doc, self.start_operation(location, rid.split("/")[2], done))

    def put_disk(self, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
        found = self._creation(body, ("Copy", "Restore"))
        if len(found) == 2:
            return found
        option, data, source, location = found
        kind = source.get("type")
        if option == "Copy" and kind != "Microsoft.Compute/snapshots":
            return 400, ("BadRequest", "createOption Copy needs a snapshot.")
        if (
            option == "Restore"
            and kind != "Microsoft.Compute/restorePointCollections/restorePoints/diskRestorePoints"
        ):
            return 400, ("BadRequest", "createOption Restore needs a disk restore point.")
        if source["location"] != location:
            return 400, ("BadRequest", "The source must be in the disk's region.")
        if source["properties"].get("completionPercent", 100) < 100:
            return 409, ("OperationNotAllowed", "The snapshot's copy has not completed.")
        name = rid.rsplit("/", 1)[-1]
        doc: dict[str, Any] = {
            "id": rid,
            "name": name,
            "type": "Microsoft.Compute/disks",
            "location": location,
            "tags": body.get("tags") or {},
            "sku": body.get("sku") or {"name": "Standard_LRS"},
            "properties": {
                "creationData": data,
                "diskSizeGB": source["properties"].get("diskSizeGB"),
                "diskState": "Unattached",
                "provisioningState": "Updating",
                "uniqueId": str(uuid.uuid4()),
                "timeCreated": _now(),
            },
        }
        m = RG_RE.match(rid.lower())
        assert m
        self.resource_groups.add(m.group(0))
        self.resources[rid.lower()] = doc

        def done() -> None:
            doc["properties"]["provisioningState"] = "Succeeded"

        return 202, (doc, self.start_operation(location, rid.split("/")[2], done))

    def put_collection(self, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
        source = ((body.get("properties") or {}).get("source") or {}).get("id", "")
        vm = self._get(source)
        if vm is None:
            return 404, ("NotFound", f"Virtual machine {source} was not found.")
        doc: dict[str, Any] = {
            "id": rid,
            "name": rid.rsplit("/", 1)[-1],
            "type": "Microsoft.Compute/restorePointCollections",
            "location": body.get("location") or vm["location"],
            "tags": body.get("tags") or {},
            "properties": {
                "source": {"id": vm["id"], "location": vm["location"]},
                "provisioningState": "Succeeded",
                "restorePointCollectionId": str(uuid.uuid4()),
            },
        }
        existed = rid.lower() in self.resources
        self.resources[rid.lower()] = doc
        return (200 if existed else 201), (doc, None)

    def put_restore_point(self, rid: str, body: dict[str, Any]) -> tuple[int, Any]:
        collection = self._get(rid.rsplit("/restorePoints/", 1)[0])
        if collection is None:
            return 404, ("NotFound", "The restore point collection was not found.")
        vm = self._get(collection["properties"]["source"]["id"])
        assert vm is not None
        props = body.get("properties") or {}
        excluded = {e["id"].lower() for e in props.get("excludeDisks") or []}
        profile = vm["properties"]["storageProfile"]

        def point(d: dict[str, Any]) -> dict[str, Any]:
            disk_id = d["managedDisk"]["id"]
            drp = f"{rid}/diskRestorePoints/{d['name']}_{uuid.uuid4().hex[:8]}"
            disk = self._get(disk_id) or {"properties": {}}
            self.resources[drp.lower()] = {
                "id": drp,
                "name": drp.rsplit("/", 1)[-1],
                "type": "Microsoft.Compute/restorePointCollections/restorePoints/diskRestorePoints",
                "location": vm["location"],
                "properties": {
                    "sourceResourceId": disk_id,
                    "familyId": disk["properties"].get("uniqueId"),
                    "diskSizeGB": disk["properties"].get("diskSizeGB"),
                    "timeCreated": _now(),
                },
            }
            return {**d, "diskRestorePoint": {"id": drp}}

        disks = [profile["osDisk"], *profile["dataDisks"]]
        kept = [point(d) for d in disks if d["managedDisk"]["id"].lower() not in excluded]
        os_disk = [d for d in kept if d["name"] == profile["osDisk"]["name"]]
        doc: dict[str, Any] = {
            "id": rid,
            "name": rid.rsplit("/", 1)[-1],
            "type": "Microsoft.Compute/restorePointCollections/restorePoints",
            "properties": {
                "consistencyMode": props.get("consistencyMode") or "CrashConsistent",
                "excludeDisks": props.get("excludeDisks") or [],
                "timeCreated": _now(),
                "provisioningState": "Creating",
                "sourceMetadata": {
                    "location": vm["location"],
                    "storageProfile": {
                        **({"osDisk": os_disk[0]} if os_disk else {}),
                        "dataDisks": [d for d in kept if d not in os_disk],
                    },
                },
            },
        }
        self.resources[rid.lower()] = doc

        def done() -> None:
            doc["properties"]["provisioningState"] = "Succeeded"

        return 201, (doc, self.start_operation(vm["location"], rid.split("/")[2], done))

    def delete(self, rid: str) -> tuple[int, Any]:
        doc = self._get(rid)
        if doc is None:
            return 204, None
        if doc.get("type") == "Microsoft.Compute/snapshots" and self._copying_from(rid):
            return 409, (
                "OperationNotAllowed",
                "The snapshot cannot be deleted while a copy from it is in progress.",
            )
        for key in [
            k for k in self.resources if k == rid.lower() or k.startswith(rid.lower() + "/")
        ]:
            del self.resources[key]
        location = doc.get("location") or "westeurope"
        return 202, (None, self.start_operation(location, rid.split("/")[2], lambda: None))

    def collection_view(self, rid: str, expand: bool) -> dict[str, Any] | None:
        doc = self._get(rid)
        if doc is None or not expand:
            return doc
        prefix = rid.lower() + "/restorepoints/"
        points = [
            d
            for k, d in self.resources.items()
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]
        return {**doc, "properties": {**doc["properties"], "restorePoints": points}}

    def list_kind(self, rg_path: str, kind: str) -> list[dict[str, Any]]:
        prefix = rg_path.lower() + COMPUTE + kind.lower() + "/"
        return [
            d
            for k, d in sorted(self.resources.items())
            if k.startswith(prefix) and "/" not in k[len(prefix) :]
        ]


@dataclass
class Operation:
    polls_left: int
    done: Callable[[], tuple[str, str] | None]
    status: str = "InProgress"
    error: tuple[str, str] | None = None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def _handler(arm: ArmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(
            self, status: int, doc: dict[str, Any] | None, headers: dict[str, str] | None = None
        ) -> None:
            body = json.dumps(doc).encode() if doc is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ms-request-id", str(uuid.uuid4()))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            with arm.lock:
                arm.log.append((time.monotonic(), self.command, urlparse(self.path).path, status))

        def _error(
            self, status: int, code: str, message: str, headers: dict[str, str] | None = None
        ) -> None:
            self._send(status, {"error": {"code": code, "message": message}}, headers)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw) if raw else {}

        def _admit(self) -> tuple[str, dict[str, list[str]]] | None:
            """Common checks; the lowercased path and the query, or None when answered."""
            url = urlparse(self.path)
            query = parse_qs(url.query)
            version = query.get("api-version", [""])[0]
            with arm.lock:
                arm.requests.append((self.command, url.path, version))
            if self.command in ("PUT", "PATCH"):
                self._request_body = self._body()
            if self.headers.get("Authorization") != f"Bearer {arm.token}":
                self._error(
                    401, "InvalidAuthenticationToken", "The access token is invalid or expired."
                )
                return None
            if not version:
                self._error(
                    400,
                    "MissingApiVersionParameter",
                    "The api-version query parameter (?api-version=) is required.",
                )
                return None
            fault = arm.throttled(self.command, url.path)
            if fault is not None:
                status, wait = fault
                self._error(
                    status,
                    "TooManyRequests" if status == 429 else "InternalServerError",
                    "The request was throttled; retry after the time in Retry-After."
                    if status == 429
                    else "An injected server error.",
                    {"Retry-After": str(wait)},
                )
                return None
            key = url.path.rstrip("/").lower()
            if key in arm.forbidden:
                self._error(
                    403,
                    "AuthorizationFailed",
                    "The client does not have authorization to perform action "
                    f"'{self.command}' over scope '{url.path}'.",
                )
                return None
            m = RG_RE.match(key)
            if m is not None and not OPERATION_RE.match(key):
                with arm.lock:
                    known = m.group(0) in arm.resource_groups
                if not known and self.command != "PUT":
                    self._error(404, "ResourceGroupNotFound", "Resource group could not be found.")
                    return None
            return key, query

        def _not_found(self) -> None:
            self._error(
                404, "ResourceNotFound", f"The Resource '{urlparse(self.path).path}' was not found."
            )

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            admitted = self._admit()
            if admitted is None:
                return
            key, query = admitted
            m = OPERATION_RE.match(key)
            if m:
                doc = arm.poll_operation(m.group(2))
                if doc is None:
                    self._not_found()
                else:
                    self._send(200, doc, {"Retry-After": arm.retry_after})
                return
            if key.endswith(COMPUTE.rstrip("/") + "/snapshots") or key.endswith(COMPUTE + "disks"):
                self._list(key, query)
                return
            with arm.lock:
                if "/restorepointcollections/" in key and "/restorepoints/" not in key:
                    expand = query.get("$expand", [""])[0].lower() == "restorepoints"
                    doc = arm.collection_view(key, expand)
                else:
                    doc = arm.resources.get(key)
                    if doc is not None and doc.get("type") == "Microsoft.Compute/snapshots":
                        arm._snapshot_get(doc)
                doc = json.loads(json.dumps(doc)) if doc is not None else None
            if doc is None:
                self._not_found()
            else:
                self._send(200, doc)

        def _list(self, key: str, query: dict[str, list[str]]) -> None:
            rg_path, _, kind = key.rpartition(COMPUTE.rstrip("/") + "/")
            skip = int(query.get("$skiptoken", ["0"])[0])
            with arm.lock:
                items = json.loads(json.dumps(arm.list_kind(rg_path, kind)))
            page = items[skip : skip + arm.page_size]
            doc: dict[str, Any] = {"value": page}
            if skip + arm.page_size < len(items):
                path = urlparse(self.path).path
                doc["nextLink"] = (
                    f"{arm.url}{path}?api-version={query['api-version'][0]}"
                    f"&$skiptoken={skip + arm.page_size}"
                )
            self._send(200, doc)

        def do_PUT(self) -> None:  # noqa: N802
            admitted = self._admit()
            if admitted is None:
                return
            key, _ = admitted
            rid = urlparse(self.path).path.rstrip("/")
            body = self._request_body
            parts = key.split("/")
            with arm.lock:
                if "/restorepoints/" in key and len(parts) >= 2 and parts[-2] == "restorepoints":
                    status, out = arm.put_restore_point(rid, body)
                elif parts[-2] == "restorepointcollections":
                    status, out = arm.put_collection(rid, body)
                elif parts[-2] == "snapshots":
                    status, out = arm.put_snapshot(rid, body)
                elif parts[-2] == "disks":
                    status, out = arm.put_disk(rid, body)
                else:
                    status, out = 400, ("BadRequest", f"PUT of {rid} is not supported here.")
            self._answer(status, out)

        def do_DELETE(self) -> None:  # noqa: N802
            admitted = self._admit()
            if admitted is None:
                return
            rid = urlparse(self.path).path.rstrip("/")
            with arm.lock:
                status, out = arm.delete(rid)
            self._answer(status, out)

        def _answer(self, status: int, out: Any) -> None:
            if status >= 400:
                self._error(status, *out)
                return
            if out is None:
                self._send(status, None)
                return
            doc, operation = out
            headers = (
                {"Azure-AsyncOperation": operation, "Retry-After": arm.retry_after}
                if operation
                else {}
            )
            self._send(status, json.loads(json.dumps(doc)) if doc is not None else None, headers)

    return Handler
