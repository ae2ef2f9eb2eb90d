"""Azure Blob Storage: one block blob per object, under ``CONTAINER/PREFIX/``.

Contract (``base.py``) on Azure:

- put-if-absent is the service's own atomic check: ``Put Blob`` (or, above ``block_size``, the
  final ``Put Block List``) carries ``If-None-Match: *`` and fails with 409 BlobAlreadyExists
  when the name exists. A large object is staged as blocks with random ids, in parallel, and
  becomes visible only when the block list is committed; concurrent writers of one name never
  mix their blocks, and a crash leaves only uncommitted blocks, which Azure discards.
- ranged reads are ``Range`` GETs; listing pages through ``List Blobs``.
- data packs (``data/``) go to the repository's access tier; everything else goes to Hot.
  Reading a blob in the Archive tier is :class:`ObjectOffline`, never a raw SDK error.
- with ``immutable_days``, every protected object (``base.protected_key``) is written with a
  version-level immutability policy expiring that many days later, in the same request
  (docs/immutability.md); deleting or overwriting one before then is
  :class:`ObjectImmutable`.

Every Azure SDK error is translated here (``translate``); the SDK's own retries are off, and
retrying is the job of :class:`bcdr.storage.wrap.RetryingStorage`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlparse

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import (
    BlobBlock,
    BlobServiceClient,
    ContainerClient,
    ImmutabilityPolicy,
    StandardBlobTier,
)

from bcdr import __version__
from bcdr.errors import (
    ObjectImmutable,
    ObjectNotFound,
    ObjectOffline,
    StorageError,
    StoragePermission,
    TransientStorageError,
)
from bcdr.storage.azureauth import AzureAccess
from bcdr.storage.base import (
    REHYDRATE_HINT,
    HeldParts,
    NativeCapabilities,
    ObjectInfo,
    Protection,
    Staged,
    check_key,
    protected_key,
)

TIERS = {"hot": StandardBlobTier.HOT, "cool": StandardBlobTier.COOL, "cold": StandardBlobTier.COLD}
DEFAULT_CONNECTIONS = 8
DEFAULT_BLOCK_SIZE = 4 * 1024 * 1024
LIST_PAGE_SIZE = 5000
#: Bytes of a response body read at a time (the SDK reads 4 KiB, one Python call each).
DOWNLOAD_BLOCK = 1024 * 1024


def translate(exc: AzureError, what: str, access: AzureAccess) -> StorageError:
    """Map an Azure SDK error met while doing ``what`` to a bcdr storage error.

    Messages are built from the status and error code only: an SDK message can carry request
    URLs, and a URL can carry a SAS token.
    """
    where = access.url
    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        # raised by azure-identity: no credential of the chain could get a token
        return StoragePermission(
            f"no Azure identity could sign in ({access.identity()})",
            where=where,
            hint=access.auth_hint(),
        )
    if isinstance(exc, IncompleteReadError):  # the connection broke inside the body
        return TransientStorageError(
            f"{what}: the connection to Azure Storage broke mid-answer", where=where
        )
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = error_code(exc)
        if code in ("BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold"):
            why = "a legal hold" if code.endswith("LegalHold") else "its immutability policy"
            return ObjectImmutable(
                f"{what}: refused, the object is protected by {why} ({status} {code})",
                where=where,
            )
        if code == "BlobArchived":
            return ObjectOffline(
                f"{what}: the blob is in the Archive tier", where=where, hint=REHYDRATE_HINT
            )
        if status in (400, 404) and not endpoint_names_account(access):
            return (ObjectNotFound if status == 404 else StorageError)(
                f"{what}: Azure Storage answered {status} {code}".rstrip(),
                where=where,
                hint=f"the endpoint {access.endpoint} does not name account {access.account}: "
                f"Azure's is https://{access.account}.blob.core.windows.net, an emulator's "
                f"http://HOST:PORT/{access.account} (Azurite: http://127.0.0.1:10000/"
                f"{access.account})",
            )
        if status == 404 and code == "ContainerNotFound":
            return ObjectNotFound(f"{what}: the container does not exist", where=where)
        if status == 404:
            return ObjectNotFound(f"not found: {what}", where=where)
        if status in (401, 403):
            return StoragePermission(
                f"{what}: access denied ({status} {code}) for {access.identity(ask_token=True)}",
                where=where,
                hint=access.auth_hint(code, what),
            )
        if transient_status(status):
            return TransientStorageError(
                f"{what}: Azure Storage answered {status} {code}".rstrip(),
                where=where,
                retry_after=_retry_after(exc),
            )
        return StorageError(f"{what}: Azure Storage refused it ({status} {code})", where=where)
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return TransientStorageError(
            f"{what}: cannot reach Azure Storage ({type(exc).__name__})", where=where
        )
    return StorageError(f"{what}: {type(exc).__name__}", where=where)


def transient_status(status: int) -> bool:
    """A status a retry may fix: timeout, throttling, and every 5xx but "not implemented" and
    "version not supported"."""
    return status in (408, 429) or (500 <= status <= 599 and status not in (501, 505))


def endpoint_names_account(access: AzureAccess) -> bool:
    """Does the blob endpoint address the account, by host (``ACCOUNT.blob...``) or by path
    (``http://HOST:PORT/ACCOUNT``, as emulators and some private endpoints take it)?"""
    parsed = urlparse(access.endpoint)
    host = (parsed.hostname or "").lower()
    first = parsed.path.strip("/").split("/", 1)[0]
    return host.startswith(f"{access.account.lower()}.") or first == access.account


def error_code(exc: AzureError) -> str:
    """The service's error code (``BlobAlreadyExists``), which the SDK sets on its errors."""
    code = getattr(exc, "error_code", None)
    text = str(getattr(code, "value", code) or "")
    return text.removeprefix("StorageErrorCode.")


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("x-ms-retry-after-ms")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is not None and "Retry-After" not in headers:
        seconds /= 1000
    return seconds


def not_blob_storage(url: str, what: str, exc: Exception) -> StorageError:
    """The endpoint answered, but not as Azure Blob Storage does (a proxy, a web server, the
    wrong port): said plainly instead of the SDK's parsing error."""
    return StorageError(
        f"{what}: the endpoint's answer is not Azure Blob Storage's ({exc})",
        where=url,
        hint="check the blob endpoint (--azure-endpoint, the plan's endpoint:, or the "
        "connection string's BlobEndpoint): it must be the storage account's blob service, "
        "e.g. https://ACCOUNT.blob.core.windows.net",
    )


class AzureBlobStorage(NativeCapabilities):
    """Storage in an Azure Blob container. ``access`` says where and how to sign in."""

    def __init__(
        self,
        access: AzureAccess,
        *,
        tier: str | None = None,
        connections: int = DEFAULT_CONNECTIONS,
        block_size: int = DEFAULT_BLOCK_SIZE,
        page_size: int = LIST_PAGE_SIZE,
        timeout: float = 60.0,
        immutable_days: int | None = None,
        immutable_mode: str = "locked",
    ):
        if tier is not None and tier not in TIERS:
            raise ValueError(f"unknown access tier {tier!r}")
        self.access = access
        self._immutable = (immutable_days, "Locked" if immutable_mode == "locked" else "Unlocked")
        self._data_tier = TIERS[tier] if tier else None
        self._meta_tier = StandardBlobTier.HOT if tier else None
        self._connections = max(1, connections)
        self._block_size = block_size
        self._page_size = page_size
        self._root = f"{access.prefix}/" if access.prefix else ""
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=2 * self._connections + 4, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._session = session
        self._service = BlobServiceClient(
            access.endpoint,
            credential=access.credential,
            # a response body is read in blocks of DOWNLOAD_BLOCK: the SDK's 4 KiB cost a
            # Python call (with the GIL) per 4 KiB, which bounded a restore from Azure
            transport=RequestsTransport(
                session=session, session_owner=False, connection_data_block_size=DOWNLOAD_BLOCK
            ),
            retry_total=0,
            connection_timeout=min(timeout, 20.0),
            read_timeout=timeout,
            user_agent=f"bcdr/{__version__}",
        )
        self._container: ContainerClient = self._service.get_container_client(access.container)
        self._blocks = ThreadPoolExecutor(self._connections, thread_name_prefix="bcdr-block")

    @property
    def url(self) -> str:
        return self.access.url

    @property
    def concurrency(self) -> int:
        return self._connections

    def _blob(self, key: str) -> Any:
        return self._container.get_blob_client(self._root + check_key(key))

    def _fail(self, exc: AzureError, what: str) -> StorageError:
        """An SDK error as a storage error with a hint (bcdr/storage/azureauth.py)."""
        return translate(exc, what, self.access)

    def _policy(self, key: str) -> dict[str, Any]:
        """The immutability policy a new object ``key`` is written with, as SDK arguments."""
        days, mode = self._immutable
        if not days or not protected_key(key):
            return {}
        until = datetime.now(UTC) + timedelta(days=days)
        return {"immutability_policy": ImmutabilityPolicy(expiry_time=until, policy_mode=mode)}

    def put(self, key: str, data: bytes) -> bool:
        blob = self._blob(key)
        tier = self._data_tier if key.startswith("data/") else self._meta_tier
        for attempt in (1, 2):
            try:
                if len(data) <= self._block_size:
                    blob.upload_blob(
                        data,
                        length=len(data),
                        overwrite=False,
                        standard_blob_tier=tier,
                        **self._policy(key),
                    )
                else:
                    self._put_blocks(blob, data, tier, self._policy(key))
                return True
            except ResourceExistsError as exc:
                if error_code(exc) == "BlobAlreadyExists":
                    return False
                raise self._fail(exc, f"put {key}") from None
            except ResourceNotFoundError as exc:
                if error_code(exc) != "ContainerNotFound" or attempt == 2:
                    raise self._fail(exc, f"put {key}") from None
                self._create_container()
            except AzureError as exc:
                raise self._fail(exc, f"put {key}") from None
        raise AssertionError("unreachable")

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        """Joined first: blocks are cut at fixed offsets, not at the parts' ends. (The join
        runs in the caller's upload thread, and a join of megabytes releases the GIL.)"""
        return self.put(key, b"".join(parts))

    def stage(self) -> Staged:
        """The parts are held in memory: a blob's blocks are staged under its name, which
        a pack has only once it is whole."""
        return HeldParts(self)

    def _create_container(self) -> None:
        """The first write into a container that does not exist yet (``bcdr init``) creates it."""
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise self._fail(exc, f"create container {self.access.container}") from None

    def _put_blocks(
        self, blob: Any, data: bytes, tier: StandardBlobTier | None, policy: dict[str, Any]
    ) -> None:
        view = memoryview(data)
        ids = [
            base64.b64encode(uuid.uuid4().bytes).decode()
            for _ in range(0, len(data), self._block_size)
        ]
        futures = [
            self._blocks.submit(
                blob.stage_block,
                block_id,
                view[i * self._block_size : (i + 1) * self._block_size],
                length=min(self._block_size, len(data) - i * self._block_size),
            )
            for i, block_id in enumerate(ids)
        ]
        for fut in futures:
            fut.result()
        blob.commit_block_list(
            [BlobBlock(block_id=b) for b in ids],
            match_condition=MatchConditions.IfMissing,
            standard_blob_tier=tier,
            **policy,
        )

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        blob = self._blob(key)
        try:
            if length == 0:
                blob.get_blob_properties()
                return b""
            data: bytes = blob.download_blob(offset=offset, length=length).readall()
            return data
        except HttpResponseError as exc:
            if exc.status_code == 416:  # the range starts at or past the end
                return b""
            raise self._fail(exc, f"get {key}") from None
        except AzureError as exc:
            raise self._fail(exc, f"get {key}") from None
        except ValueError as exc:  # the SDK's word for a response it cannot read
            raise not_blob_storage(self.url, f"get {key}", exc) from None

    def size(self, key: str) -> int:
        try:
            return int(self._blob(key).get_blob_properties().size)
        except AzureError as exc:
            raise self._fail(exc, f"size {key}") from None

    def exists(self, key: str) -> bool:
        try:
            return bool(self._blob(key).exists())
        except AzureError as exc:
            raise self._fail(exc, f"exists {key}") from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        start = len(self._root)
        try:
            for item in self._container.list_blobs(
                name_starts_with=self._root + prefix, results_per_page=self._page_size
            ):
                tier = item.blob_tier
                yield ObjectInfo(
                    item.name[start:],
                    int(item.size),
                    tier=str(tier.value if hasattr(tier, "value") else tier) if tier else None,
                    rehydrating=bool(item.archive_status),
                    modified=item.last_modified,
                )
        except ResourceNotFoundError as exc:
            if error_code(exc) != "ContainerNotFound":
                raise self._fail(exc, f"list {prefix}") from None
        except AzureError as exc:
            raise self._fail(exc, f"list {prefix}") from None

    def list_offline(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return (o for o in self.list(prefix) if o.tier == "Archive")

    def delete(self, key: str) -> bool:
        try:
            self._blob(key).delete_blob()
            return True
        except ResourceNotFoundError:
            return False
        except AzureError as exc:
            raise self._fail(exc, f"delete {key}") from None

    # -- immutability (base.Immutability) -------------------------------------------------------

    @property
    def immutable_days(self) -> int | None:
        return self._immutable[0]

    def versioned_immutability(self) -> bool:
        try:
            props = self._container.get_container_properties()
        except AzureError as exc:
            raise self._fail(exc, "container properties") from None
        return bool(props.immutable_storage_with_versioning_enabled)

    def protections(self, prefix: str = "") -> Iterator[Protection]:
        start = len(self._root)
        try:
            for item in self._container.list_blobs(
                name_starts_with=self._root + prefix,
                include=["immutabilitypolicy", "legalhold"],
                results_per_page=self._page_size,
            ):
                policy = item.immutability_policy
                until = policy.expiry_time if policy is not None else None
                mode = str(getattr(policy, "policy_mode", "") or "").lower() if until else ""
                yield Protection(item.name[start:], until, mode, bool(item.has_legal_hold))
        except AzureError as exc:
            raise self._fail(exc, f"list {prefix} with protections") from None

    def extend(self, key: str, until: datetime) -> None:
        mode = self._immutable[1]
        try:
            self._blob(key).set_immutability_policy(
                ImmutabilityPolicy(expiry_time=until, policy_mode=mode)
            )
        except AzureError as exc:
            raise self._fail(exc, f"extend the immutability of {key}") from None

    def set_legal_hold(self, key: str, on: bool) -> None:
        try:
            self._blob(key).set_legal_hold(on)
        except AzureError as exc:
            raise self._fail(exc, f"{'set' if on else 'clear'} the legal hold of {key}") from None

    def set_tier(self, key: str, tier: str) -> None:
        """Move one object to ``tier`` (``Hot``, ``Cool``, ``Cold``, ``Archive``)."""
        try:
            self._blob(key).set_standard_blob_tier(tier)
        except AzureError as exc:
            raise self._fail(exc, f"set tier of {key}") from None

    def close(self) -> None:
        self._blocks.shutdown(wait=True)
        self._service.close()
        self._session.close()
