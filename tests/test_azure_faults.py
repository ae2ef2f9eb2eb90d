"""Azure Blob Storage that fails as real storage does, through a loopback fault proxy in front
of Azurite (tests/fault_proxy.py): outages of every kind are waited out within the retry
budget, a backup whose calls finally fail stops at once, records the failure and keeps what it
uploaded, a killed backup's packs are reused by the next run, and refusals say which
permission the credential lacks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import restored_root, run_process, snapshot_tree, write_tree
from tests.fault_proxy import FaultProxy

CS = "BCDR_TEST_AZURE_CS"
MiB = 1024 * 1024


@pytest.fixture
def proxy(azurite: Azurite) -> Iterator[FaultProxy]:
    p = FaultProxy(azurite.port)
    try:
        yield p
    finally:
        p.close()


def _env(proxy: FaultProxy, budget: float | None) -> dict[str, str]:
    cs = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint=http://127.0.0.1:{proxy.port}/{ACCOUNT};"
    )
    env = {CS: cs, "BCDR_RETRY_SECONDS": "" if budget is None else str(budget)}
    return env


def _repo(proxy: FaultProxy, env: dict[str, str], pack_mib: int = 1) -> list[str]:
    url = f"azure://{ACCOUNT}/faults-{uuid.uuid4().hex[:12]}"
    base = ["--repo", url, "--azure-connection-string-env", CS]
    r = run_process("init", *base, "--pack-size", str(pack_mib * MiB), env=env)
    assert r.code == 0, r.out + r.err
    return base


def _source(tmp_path: Path, mib: int) -> Path:
    return write_tree(tmp_path / "src", {f"shard-{i:02d}.bin": os.urandom(MiB) for i in range(mib)})


def _start_backup(
    src: Path, base: list[str], env: dict[str, str], *extra: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bcdr", "backup", str(src), *base, *extra],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _put_bytes(proxy: FaultProxy) -> int:
    return proxy.counts.forwarded_body_bytes.get("PUT", 0)


def _wait_for_upload(proxy: FaultProxy, proc: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 120
    while _put_bytes(proxy) < at_least:
        assert time.monotonic() < deadline, "the backup uploaded too little within 120 s"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)


def _restores(tmp_path: Path, src: Path, base: list[str], env: dict[str, str]) -> None:
    out = tmp_path / f"out-{uuid.uuid4().hex[:6]}"
    r = run_process("restore", "latest", "--target", out, *base, env=env)
    assert r.code == 0, r.out + r.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_every_kind_of_outage_is_waited_out(tmp_path: Path, proxy: FaultProxy) -> None:
    """Refused and reset connections, a stalled front end, 503 and 429 with Retry-After, one
    after another in the middle of a backup: it waits (and says so), finishes, and restores."""
    env = _env(proxy, budget=60)
    base = _repo(proxy, env)
    src = _source(tmp_path, 24)
    proc = _start_backup(src, base, env, "--connections", "4")
    _wait_for_upload(proxy, proc, 6 * MiB)
    faults = [
        ("status", 3, 503),
        ("drop", 3, 0),
        ("reset", 2, 0),
        ("stall", 3, 0),
        ("status", 3, 429),
    ]

    def run_faults() -> None:
        for mode, seconds, status in faults:
            proxy.outage(mode, seconds, status=status or 503, retry_after=1)
            time.sleep(seconds)

    t = threading.Thread(target=run_faults)
    t.start()
    out, err = proc.communicate(timeout=300)
    t.join()
    assert proc.returncode == 0, out + err
    assert "waiting for azure://" in err and "retry budget used" in err, err
    assert proxy.counts.faulted > 0
    assert "Traceback" not in err and KEY not in out + err
    _restores(tmp_path, src, base, env)
    r = run_process("check", *base, "--read-data", env=env)
    assert r.code == 0, r.out + r.err


@pytest.mark.slow
def test_a_two_minute_outage_is_survived_with_the_default_budget(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    env = _env(proxy, budget=None)  # the default: 10 minutes per call
    base = _repo(proxy, env)
    src = _source(tmp_path, 16)
    proc = _start_backup(src, base, env, "--connections", "4")
    _wait_for_upload(proxy, proc, 4 * MiB)
    proxy.outage("status", 120, status=503, retry_after=None)
    started = time.monotonic()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert time.monotonic() - started >= 110  # it really waited the outage out
    assert "waiting for" in err and "of the 10.0m retry budget used" in err, err
    _restores(tmp_path, src, base, env)


def test_a_backup_whose_calls_fail_stops_at_once_records_it_and_keeps_its_packs(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    env = _env(proxy, budget=3)
    base = _repo(proxy, env)
    mib = 40
    src = _source(tmp_path, mib)
    proc = _start_backup(src, base, env, "--connections", "8")
    _wait_for_upload(proxy, proc, 10 * MiB)
    outage = 20.0  # much longer than the 3 s budget
    proxy.outage("status", outage, status=503, retry_after=None)
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 1, out + err
    # it stopped once the first call gave up, while the outage still lasted: it did not go on
    # building and sending packs that would be thrown away
    assert took < outage - 5, took
    at_outage = _put_bytes(proxy)  # nothing is forwarded during the outage
    assert "gave up after" in err and "retry budget is 3 s" in err
    assert "uploaded are kept: the next backup finds them and sends only the rest" in err, err
    proxy.heal()

    # the next run sends only what never arrived
    before = _put_bytes(proxy)
    r = run_process("backup", src, *base, env=env)
    assert r.code == 0, r.out + r.err
    sent = _put_bytes(proxy) - before
    assert "an interrupted backup uploaded were indexed from their headers and are reused" in (
        r.out + r.err
    )
    assert sent <= mib * MiB - at_outage + 4 * MiB, (sent, at_outage)
    _restores(tmp_path, src, base, env)
    r = run_process("check", *base, "--read-data", env=env)
    assert r.code == 0 and "no errors found" in r.out, r.out + r.err


def test_a_failed_backup_leaves_a_failed_evidence_record(tmp_path: Path, proxy: FaultProxy) -> None:
    env = _env(proxy, budget=2)
    base = _repo(proxy, env)
    src = _source(tmp_path, 12)
    # every pack upload fails (503) for good; metadata (locks, index, evidence) goes through
    proxy.outage("status", 600, status=503, retry_after=None, match=r"^PUT /[^?]*/data/")
    r = run_process("backup", src, *base, env=env)
    assert r.code == 1, r.out + r.err
    proxy.heal()
    r = run_process("evidence", "list", *base, "--kind", "backup", "--json", env=env)
    [record] = r.json()
    assert record["result"] == "failed" and "503" in record["facts"]["error"]
    assert record["facts"]["transient"] is True


def test_a_backup_killed_at_70_percent_leaves_only_the_rest_to_the_next_run(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    env = _env(proxy, budget=30)
    base = _repo(proxy, env)
    mib = 40
    src = _source(tmp_path, mib)
    total = mib * MiB
    proc = _start_backup(src, base, env, "--connections", "4")
    _wait_for_upload(proxy, proc, int(total * 0.7))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    first = _put_bytes(proxy)
    assert 0.7 * total <= first < total

    r = run_process("backup", src, *base, env=env)
    assert r.code == 0, r.out + r.err
    second = _put_bytes(proxy) - first
    # the packs whose upload completed are found from their headers; at most the packs in
    # flight at the kill (4 connections, 1 MiB each), the rest, and metadata go again
    assert second <= total - 0.7 * total + 5 * MiB, f"first {first}, second {second}"
    assert second >= total - first - 5 * MiB  # and what never arrived does go
    _restores(tmp_path, src, base, env)


def _sas(permissions: AccountSasPermissions) -> str:
    from datetime import UTC, datetime, timedelta

    return generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        permissions,
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def test_a_sas_missing_a_permission_is_told_which(tmp_path: Path, azurite: Azurite) -> None:
    url = f"azure://{ACCOUNT}/sas-{uuid.uuid4().hex[:12]}"
    full = {
        CS: azurite.connection_string,
        "SAS": _sas(AccountSasPermissions(read=True, write=True, list=True, create=True, add=True,
                                          delete=True)),
    }  # fmt: skip
    r = run_process("init", "--repo", url, "--azure-connection-string-env", CS, env=full)
    assert r.code == 0, r.err
    src = _source(tmp_path, 1)
    read_list = _sas(AccountSasPermissions(read=True, list=True))
    env = {"SAS": read_list}
    sas = ["--repo", url, "--azure-sas-env", "SAS", "--azure-endpoint", azurite.endpoint]
    r = run_process("backup", src, *sas, env=env)
    assert r.code == 1, r.out + r.err
    assert "the SAS token in $SAS must allow create and write (cw)" in r.err, r.err
    assert "it allows 'rl'" in r.err and "role" not in r.err
    assert read_list not in r.out + r.err and "sig=" not in r.err


def test_an_endpoint_without_the_account_path_says_so(tmp_path: Path, azurite: Azurite) -> None:
    url = f"azure://{ACCOUNT}/noacct-{uuid.uuid4().hex[:12]}"
    env = {CS: azurite.connection_string}
    r = run_process(
        "snapshots",
        "--repo",
        url,
        "--azure-connection-string-env",
        CS,
        "--azure-endpoint",
        f"http://127.0.0.1:{azurite.port}",
        env=env,
    )
    assert r.code != 0, r.out + r.err
    assert f"does not name account {ACCOUNT}" in r.err, r.err
    assert f"http://HOST:PORT/{ACCOUNT}" in r.err


def test_a_restore_through_reset_and_throttled_reads_finishes(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    env = _env(proxy, budget=60)
    base = _repo(proxy, env)
    src = _source(tmp_path, 8)
    r = run_process("backup", src, *base, env=env)
    assert r.code == 0, r.out + r.err
    # reads of packs are cut half-way through their bodies, or throttled, a few times each
    proxy.fail_next("reset", 4, match=r"^GET /[^?]*/data/")
    proxy.fail_next("status", 3, status=429, retry_after=0, match=r"^GET /[^?]*/data/")
    _restores(tmp_path, src, base, env)
    assert proxy.counts.faulted >= 7
