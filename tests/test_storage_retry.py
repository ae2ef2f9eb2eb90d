"""RetryingStorage and MeteredStorage over a real local storage, with injected time."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from azure.core.exceptions import ClientAuthenticationError

from bcdr.errors import StoragePermission, TransientStorageError
from bcdr.storage.azure import translate
from bcdr.storage.azureauth import AzureAccess, AzureAuth
from bcdr.storage.faulty import FaultyStorage
from bcdr.storage.local import LocalStorage
from bcdr.storage.wrap import MeteredStorage, RetryingStorage, RetryPolicy


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def monotonic(self) -> float:
        return self.now


def _retrying(inner: object, policy: RetryPolicy, t: FakeTime) -> RetryingStorage:
    return RetryingStorage(
        inner,  # type: ignore[arg-type]
        policy,
        sleep=t.sleep,
        monotonic=t.monotonic,
        rng=random.Random(1),
    )


def test_transient_failures_are_retried_with_growing_bounded_delays(tmp_path: Path) -> None:
    t = FakeTime()
    inner = FaultyStorage(LocalStorage(tmp_path), flaky_puts=5)
    s = _retrying(inner, RetryPolicy(attempts=8, base_delay=1.0, max_delay=4.0), t)
    assert s.put("index/a", b"x") is True
    assert s.get("index/a") == b"x"
    assert len(t.sleeps) == 5 and s.retries == 5
    for n, d in enumerate(t.sleeps):
        assert 0 <= d <= min(4.0, 1.0 * 2**n)


def test_gives_up_after_the_attempts_with_a_hint(tmp_path: Path) -> None:
    t = FakeTime()
    inner = FaultyStorage(LocalStorage(tmp_path), flaky_puts=100)
    s = _retrying(inner, RetryPolicy(attempts=4, base_delay=0.1), t)
    with pytest.raises(TransientStorageError) as exc:
        s.put("index/a", b"x")
    assert len(t.sleeps) == 3
    assert "gave up after 4 attempt(s)" in (exc.value.hint or "")
    assert not LocalStorage(tmp_path).exists("index/a")


def test_total_time_is_bounded(tmp_path: Path) -> None:
    t = FakeTime()
    inner = FaultyStorage(LocalStorage(tmp_path), flaky_puts=100)
    s = _retrying(inner, RetryPolicy(attempts=1000, base_delay=1, max_delay=8, max_elapsed=30), t)
    with pytest.raises(TransientStorageError):
        s.put("index/a", b"x")
    assert t.now <= 30


def test_permanent_errors_fail_at_once(tmp_path: Path) -> None:
    t = FakeTime()
    denied = StoragePermission("denied")
    inner = FaultyStorage(LocalStorage(tmp_path), fail_after_puts=0, error=denied)
    s = _retrying(inner, RetryPolicy(), t)
    with pytest.raises(StoragePermission):
        s.put("index/a", b"x")
    assert t.sleeps == []


def test_a_put_that_landed_before_its_connection_broke_counts_as_ours(tmp_path: Path) -> None:
    t = FakeTime()
    inner = FaultyStorage(LocalStorage(tmp_path), flaky_puts=1, flaky_lands=True)
    s = _retrying(inner, RetryPolicy(), t)
    assert s.put("locks/mine", b"payload") is True
    # ... but someone else's object under the name is not ours
    other = FaultyStorage(LocalStorage(tmp_path), flaky_puts=1)
    LocalStorage(tmp_path).put("locks/theirs", b"other writer")
    assert _retrying(other, RetryPolicy(), t).put("locks/theirs", b"payload") is False
    # a pack stored in parts: compared with the parts joined
    landed = FaultyStorage(LocalStorage(tmp_path), flaky_puts=1, flaky_lands=True)
    assert _retrying(landed, RetryPolicy(), t).put_parts("data/ab/p", [b"pa", b"ck"]) is True
    assert LocalStorage(tmp_path).get("data/ab/p") == b"pack"
    LocalStorage(tmp_path).put("data/ab/q", b"some other pack")
    clash = FaultyStorage(LocalStorage(tmp_path), flaky_puts=1)
    assert _retrying(clash, RetryPolicy(), t).put_parts("data/ab/q", [b"pa", b"ck"]) is False


def test_server_retry_after_is_honoured() -> None:
    policy = RetryPolicy(max_delay=30)
    assert policy.delay(0, 7.0, random.Random(1)) == 7.0
    assert policy.delay(0, 100.0, random.Random(1)) == 30


def test_meter_counts_bytes_that_moved(tmp_path: Path) -> None:
    s = MeteredStorage(LocalStorage(tmp_path))
    s.put("data/aa/p", b"x" * 1000)
    s.put("data/aa/p", b"x" * 1000)  # already there: nothing uploaded
    s.put_parts("data/aa/q", [b"y" * 300, b"z" * 200])  # a pack: its parts' bytes
    staged = s.stage()  # a pack written as it is filled: counted when committed
    staged.write(b"w" * 4000)
    assert s.uploaded.bytes == 1500
    assert staged.commit("data/aa/r") is True
    s.get("data/aa/p", 0, 10)
    assert (s.uploaded.bytes, s.uploaded.requests) == (5500, 4)
    assert s.downloaded.bytes == 10
    assert s.uploaded.rate > 0


def test_identity_sign_in_failure_is_a_permission_error_without_detail() -> None:
    endpoint = "https://acct.blob.core.windows.net"
    access = AzureAccess("acct", "cont", "", endpoint, AzureAuth(), None)
    raised = ClientAuthenticationError("ManagedIdentityCredential: IMDS...")
    err = translate(raised, "get x", access)
    assert isinstance(err, StoragePermission)
    assert "no Azure identity could sign in" in err.message
    assert "az login" in (err.hint or "")
