"""bcdr against Azure Blob Storage (Azurite), as a user runs it: real processes, the CLI, plans.
Backup -> restore -> check round trip; tiers; archived packs detected before a restore; Azurite
stopped in the middle of a backup."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from bcdr.storage.azure import AzureBlobStorage
from bcdr.storage.azureauth import AzureAuth, resolve_access
from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import SMALL_CHUNKS, restored_root, run_process, snapshot_tree, write_tree

CS = "BCDR_TEST_AZURE_CS"


def _repo_url() -> str:
    return f"azure://{ACCOUNT}/cli-{uuid.uuid4().hex[:12]}/team-a"


def _raw(azurite: Azurite, url: str) -> AzureBlobStorage:
    access = resolve_access(url, AzureAuth("connection_string", CS), env=azurite.env(CS))
    return AzureBlobStorage(access)


def _bcdr(azurite: Azurite, url: str, *args: object, timeout: float = 120):  # type: ignore[no-untyped-def]
    r = run_process(
        *args,
        "--repo",
        url,
        "--azure-connection-string-env",
        CS,
        env=azurite.env(CS),
        timeout=timeout,
    )
    assert KEY not in r.out + r.err, "the account key leaked into output"
    assert "Traceback" not in r.err, r.err
    return r


def _source(tmp_path: Path) -> Path:
    rng = random.Random(7)
    return write_tree(
        tmp_path / "src",
        {
            "ckpt/model.bin": rng.randbytes(300_000),
            "ckpt/opt.bin": rng.randbytes(200_000),
            "data/a.txt": b"hello " * 5000,
            "empty": b"",
        },
    )


def test_backup_restore_check_round_trip(azurite: Azurite, tmp_path: Path) -> None:
    url = _repo_url()
    src = _source(tmp_path)
    r = _bcdr(azurite, url, "init", "--chunk-size", SMALL_CHUNKS)
    assert r.code == 0, r.err
    assert f"at {url}" in r.out
    r = _bcdr(azurite, url, "backup", src, "--job", "ckpt", "--connections", "4")
    assert r.code == 0, r.err
    assert "uploaded" in r.out and "/s)" in r.out
    r = _bcdr(azurite, url, "restore", "latest", "--target", tmp_path / "out", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert isinstance(doc, dict) and doc["downloaded"]["bytes"] > 0
    assert snapshot_tree(restored_root(tmp_path / "out", src)) == snapshot_tree(src)
    r = _bcdr(azurite, url, "check", "--read-data")
    assert r.code == 0, r.out + r.err
    assert "no errors found" in r.out
    # The blobs really are in the container, under the prefix.
    keys = {o.key.split("/")[0] for o in _raw(azurite, url).list("")}
    assert {"config", "keys", "data", "index", "snapshots"} <= keys


def test_plan_with_an_azure_repository_uses_its_tier(azurite: Azurite, tmp_path: Path) -> None:
    url = _repo_url()
    src = _source(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
version: 1
name: azure-plan
repositories:
  blob:
    url: {url}
    endpoint: {azurite.endpoint}
    tier: cool
    connections: 3
    credential:
      connection_string_env: {CS}
backups:
  weights:
    repository: blob
    paths: [{src}]
    schedule: daily
"""
    )
    r = run_process("run", plan, env=azurite.env(CS))
    assert r.code == 0, r.out + r.err
    assert "backup weights: ok" in r.out
    tiers = {o.tier for o in _raw(azurite, url).list("data/")}
    assert tiers == {"Cool"}
    assert {o.tier for o in _raw(azurite, url).list("snapshots/")} == {"Hot"}


def test_archived_packs_are_reported_before_restore_starts(
    azurite: Azurite, tmp_path: Path
) -> None:
    url = _repo_url()
    src = _source(tmp_path)
    assert _bcdr(azurite, url, "init", "--chunk-size", SMALL_CHUNKS).code == 0
    assert _bcdr(azurite, url, "backup", src).code == 0
    raw = _raw(azurite, url)
    packs = [o for o in raw.list("data/")]
    for o in packs:
        raw.set_tier(o.key, "Archive")
    target = tmp_path / "out"
    r = _bcdr(azurite, url, "restore", "latest", "--target", target)
    assert r.code == 1
    assert "Archive tier" in r.err and "rehydrat" in r.err and "15 hours" in r.err
    assert f"{len(packs)} pack(s)" in r.err
    assert not target.exists() or not any(target.iterdir()), "restore wrote files anyway"
    # check --read-data names the archived packs instead of failing with an SDK error
    r = _bcdr(azurite, url, "check", "--read-data")
    assert r.code == 1 and "Archive tier" in r.out


def test_azurite_stopped_mid_backup_then_next_run_succeeds(tmp_path: Path) -> None:
    """Azurite (persistent) is stopped while a backup uploads: the backup fails cleanly, no
    snapshot is committed, the repository checks clean, and after a restart the next backup
    succeeds and restores."""
    server = Azurite(tmp_path / "az", location=tmp_path / "az-data").start()
    try:
        url = _repo_url()
        env = {**server.env(CS), "BCDR_RETRY_SECONDS": "2"}
        src = write_tree(
            tmp_path / "src",
            {f"shard-{i}.bin": os.urandom(4 * 1024 * 1024) for i in range(40)},
        )
        base = ["--repo", url, "--azure-connection-string-env", CS]
        r = run_process("init", *base, "--pack-size", str(1024 * 1024), env=env)
        assert r.code == 0, r.err
        proc = subprocess.Popen(
            [sys.executable, "-m", "bcdr", "backup", str(src), *base, "--connections", "1"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        raw = _raw(server, url)
        deadline = time.monotonic() + 60
        while not any(True for _ in raw.list("data/")):
            assert time.monotonic() < deadline, "no pack was uploaded within 60 s"
            assert proc.poll() is None, "backup finished before Azurite could be stopped"
            time.sleep(0.05)
        raw.close()
        server.stop()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert "cannot reach Azure Storage" in err and "gave up after" in err
        assert "Traceback" not in err and KEY not in out + err
        server.start()
        raw = _raw(server, url)
        assert list(raw.list("snapshots/")) == []
        r = run_process("check", *base, env=env)
        assert r.code == 0, r.out + r.err
        r = run_process("backup", src, *base, env=env)
        assert r.code == 0, r.err
        r = run_process("restore", "latest", "--target", tmp_path / "out", *base, env=env)
        assert r.code == 0, r.err
        assert snapshot_tree(restored_root(tmp_path / "out", src)) == snapshot_tree(src)
    finally:
        server.stop()


def test_sas_token_from_a_variable_works_and_never_shows(azurite: Azurite, tmp_path: Path) -> None:
    sas = generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    url = _repo_url()
    base = ["--repo", url, "--azure-sas-env", "MY_SAS", "--azure-endpoint", azurite.endpoint]
    src = _source(tmp_path)
    env = {"MY_SAS": sas}
    for args in (["init"], ["backup", src], ["snapshots"]):
        r = run_process(*args, *base, env=env)
        assert r.code == 0, r.err
        assert sas not in r.out + r.err
    # A SAS that does not sign: refused, named by its variable, the token never printed.
    bad = sas.replace("sig=", "sig=AAAA")
    r = run_process("snapshots", *base, env={"MY_SAS": bad})
    assert r.code == 1
    assert "SAS token in $MY_SAS" in r.err
    assert bad not in r.err and "sig=" not in r.err


def test_forget_and_prune_on_azure_blob(azurite: Azurite, tmp_path: Path) -> None:
    url = _repo_url()
    src = _source(tmp_path)
    assert _bcdr(azurite, url, "init", "--chunk-size", SMALL_CHUNKS).code == 0
    assert _bcdr(azurite, url, "backup", src, "--job", "ckpt").code == 0
    (src / "ckpt" / "model.bin").write_bytes(random.Random(8).randbytes(300_000))
    assert _bcdr(azurite, url, "backup", src, "--job", "ckpt").code == 0
    r = _bcdr(azurite, url, "forget", "--keep-last", "1", "--json")
    assert r.code == 0 and len(r.json()["removed"]) == 1, r.err
    packs_before = {o.key for o in _raw(azurite, url).list("data/")}
    r = _bcdr(azurite, url, "prune", "--grace", "0", "--json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["packs_deleted"] > 0 and rep["pending"] == 0
    packs_after = {o.key for o in _raw(azurite, url).list("data/")}
    assert len(packs_before - packs_after) == rep["packs_deleted"]
    assert not list(_raw(azurite, url).list("prune/"))  # the mark is gone once swept
    r = _bcdr(azurite, url, "restore", "latest", "--target", tmp_path / "out")
    assert r.code == 0, r.err
    assert snapshot_tree(restored_root(tmp_path / "out", src)) == snapshot_tree(src)
    assert _bcdr(azurite, url, "check", "--read-data").code == 0
