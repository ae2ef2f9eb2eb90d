"""The storage contract suite against Azure Blob Storage (Azurite), and Azure's own behaviour:
tiers, archived blobs, paging, errors translated at the boundary."""

from __future__ import annotations

import http.server
import threading
import uuid
from collections.abc import Iterator

import pytest

from bcdr.errors import ObjectOffline, StoragePermission, TransientStorageError, UsageError
from bcdr.storage.azure import AzureBlobStorage
from bcdr.storage.azureauth import AzureAuth, resolve_access
from bcdr.storage.base import Forkable, LocalFolder, Tiers
from bcdr.storage.url import StorageSpec, open_storage
from bcdr.storage.wrap import MeteredStorage, RetryingStorage, RetryPolicy
from tests.azurite import ACCOUNT, KEY, Azurite, free_port
from tests.storage_contract import StorageContract

CS_ENV = "TEST_AZURE_CS"


def _url() -> str:
    return f"azure://{ACCOUNT}/t-{uuid.uuid4().hex[:12]}/some/prefix"


def make_storage(azurite: Azurite, url: str | None = None, **kw: object) -> AzureBlobStorage:
    access = resolve_access(
        url or _url(),
        AzureAuth("connection_string", CS_ENV),
        env={CS_ENV: azurite.connection_string},
    )
    return AzureBlobStorage(access, **kw)  # type: ignore[arg-type]


class TestAzureStorage(StorageContract):
    @pytest.fixture
    def storage(self, azurite: Azurite) -> Iterator[AzureBlobStorage]:
        s = make_storage(azurite)
        yield s
        s.close()


class TestAzureStorageAsOpened(StorageContract):
    """Metered and retried, as ``open_storage`` returns it; Azure has tiers, no local folder,
    and is not used from forked workers."""

    @pytest.fixture
    def storage(self, azurite: Azurite) -> Iterator[MeteredStorage]:
        s = MeteredStorage(RetryingStorage(make_storage(azurite)))
        assert s.capability(Tiers) is not None and s.capability(LocalFolder) is None
        assert s.capability(Forkable) is None
        yield s
        s.close()


class TestAzureStorageBlocksAndPages(StorageContract):
    """Objects above 64 KiB go through staged blocks; listings page every 7 blobs."""

    @pytest.fixture
    def storage(self, azurite: Azurite) -> Iterator[AzureBlobStorage]:
        s = make_storage(azurite, block_size=64 * 1024, page_size=7, connections=4)
        yield s
        s.close()


def test_concurrent_block_uploads_never_mix_their_blocks(azurite: Azurite) -> None:
    """Eight writers of one name, each staging different blocks: the committed object is one
    writer's bytes, whole."""
    s = make_storage(azurite, block_size=4096, connections=4)
    payloads = [bytes([i]) * 40_000 for i in range(8)]
    barrier = threading.Barrier(8)
    wins: list[bytes] = []

    def writer(data: bytes) -> None:
        barrier.wait()
        if s.put("snapshots/race", data):
            wins.append(data)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert s.get("snapshots/race") == wins[0]


def test_prefix_isolates_repositories(azurite: Azurite) -> None:
    container = f"t-{uuid.uuid4().hex[:12]}"
    a = make_storage(azurite, f"azure://{ACCOUNT}/{container}/team-a")
    b = make_storage(azurite, f"azure://{ACCOUNT}/{container}/team-b")
    a.put("config", b"a")
    b.put("config", b"b")
    assert [o.key for o in a.list("")] == ["config"]
    assert a.get("config") == b"a" and b.get("config") == b"b"


def test_tiers_data_to_the_chosen_tier_metadata_hot(azurite: Azurite) -> None:
    s = make_storage(azurite, tier="cold")
    s.put("data/ab/pack1", b"x" * 100)
    s.put("index/i1", b"y")
    s.put("snapshots/s1", b"z")
    tiers = {o.key: o.tier for o in s.list("")}
    assert tiers == {"data/ab/pack1": "Cold", "index/i1": "Hot", "snapshots/s1": "Hot"}


def test_archived_blob_is_listed_offline_and_read_is_translated(azurite: Azurite) -> None:
    s = make_storage(azurite)
    s.put("data/ab/pack1", b"x" * 100)
    s.put("data/cd/pack2", b"y" * 100)
    s.set_tier("data/ab/pack1", "Archive")
    assert [o.key for o in s.list_offline("data/")] == ["data/ab/pack1"]
    with pytest.raises(ObjectOffline) as exc:
        s.get("data/ab/pack1")
    assert "Archive" in exc.value.message and "rehydrate" in (exc.value.hint or "")
    assert s.get("data/cd/pack2") == b"y" * 100


def test_wrong_key_is_an_authentication_error_without_the_secret(azurite: Azurite) -> None:
    bad_key = "A" * 86 + "=="
    spec = StorageSpec(_url(), auth=AzureAuth("account_key", "MY_KEY"), endpoint=azurite.endpoint)
    storage = open_storage(spec, env={"MY_KEY": bad_key})
    with pytest.raises(StoragePermission) as exc:
        storage.get("config")
    text = str(exc.value) + (exc.value.hint or "")
    assert "account key in $MY_KEY" in text and ACCOUNT in text
    assert bad_key not in text


def test_unreachable_endpoint_is_transient_and_bounded(azurite: Azurite) -> None:
    spec = StorageSpec(
        _url(),
        auth=AzureAuth("connection_string", CS_ENV),
        endpoint=f"http://127.0.0.1:{free_port()}/{ACCOUNT}",
    )
    storage = open_storage(spec, env={CS_ENV: azurite.connection_string, "BCDR_RETRY_SECONDS": "1"})
    with pytest.raises(TransientStorageError) as exc:
        storage.put("config", b"x")
    assert "cannot reach Azure Storage" in exc.value.message
    assert "gave up after" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("url", "auth", "env", "endpoint", "expect"),
    [
        ("azure://Bad_Account/c1c", AzureAuth(), {}, None, "invalid storage account name"),
        ("azure://acct/ab", AzureAuth(), {}, None, "invalid container name"),
        ("azure://acct/cont/a/../b", AzureAuth(), {}, None, "invalid prefix"),
        ("azure://acct/cont?sig=abc", AzureAuth(), {}, None, "takes no query string"),
        ("azure://acct/cont", AzureAuth("sas", "NOPE"), {}, None, "NOPE is not set"),
        (
            "azure://acct/cont",
            AzureAuth("connection_string", "CS"),
            {"CS": "garbage-without-pairs"},
            None,
            "is malformed",
        ),
        (
            "azure://acct/cont",
            AzureAuth("connection_string", "CS"),
            {"CS": "AccountName=other;AccountKey=c2VjcmV0"},
            None,
            "is for account 'other'",
        ),
        ("azure://acct/cont", AzureAuth(), {}, "http://127.0.0.1:1/x", "bearer token"),
        ("azure://acct/cont", AzureAuth(), {}, "ftp://host", "invalid blob endpoint"),
    ],
)
def test_bad_azure_settings_are_usage_errors(
    url: str, auth: AzureAuth, env: dict[str, str], endpoint: str | None, expect: str
) -> None:
    with pytest.raises(UsageError) as exc:
        open_storage(StorageSpec(url, auth=auth, endpoint=endpoint), env=env)
    assert expect in str(exc.value)
    assert "c2VjcmV0" not in str(exc.value) and "sig=abc" not in str(exc.value)


def test_development_storage_shorthand_points_at_local_azurite() -> None:
    access = resolve_access(
        "azure://devstoreaccount1/cont",
        AzureAuth("connection_string", "CS"),
        env={"CS": "UseDevelopmentStorage=true"},
    )
    assert access.endpoint == "http://127.0.0.1:10000/devstoreaccount1"
    assert "Eby8" not in repr(access)


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers every request the way Azure Storage answers when it throttles."""

    requests = 0

    def _busy(self) -> None:
        type(self).requests += 1
        body = (
            b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
            b"<Message>The server is busy.</Message></Error>"
        )
        self.send_response(503)
        self.send_header("Retry-After", "3")
        self.send_header("x-ms-error-code", "ServerBusy")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_DELETE = _busy

    def log_message(self, *args: object) -> None:
        pass


def test_throttling_is_retried_after_the_servers_retry_after() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}/{ACCOUNT}"
        access = resolve_access(
            f"azure://{ACCOUNT}/busy",
            AzureAuth("account_key", "K"),
            endpoint=endpoint,
            env={"K": KEY},
        )
        sleeps: list[float] = []
        storage = RetryingStorage(
            AzureBlobStorage(access), RetryPolicy(attempts=3), sleep=sleeps.append
        )
        with pytest.raises(TransientStorageError) as exc:
            storage.get("config")
        assert "503 ServerBusy" in exc.value.message
        assert exc.value.retry_after == 3.0
        assert sleeps == [3.0, 3.0] and _Busy.requests == 3
    finally:
        server.shutdown()
