"""``bcdr copy`` with Azure Blob repositories (Azurite): local to Azure, Azure to Azure across
containers with other credentials, and back to a local disk; secrets never shown."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from bcdr.storage.azure import AzureBlobStorage
from bcdr.storage.azureauth import AzureAuth, resolve_access
from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import SMALL_CHUNKS, run_process, snapshot_tree, write_tree

CS = "BCDR_TEST_AZURE_CS"


def _url() -> str:
    return f"azure://{ACCOUNT}/copy-{uuid.uuid4().hex[:12]}/team"


def _sas() -> str:
    return generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def _run(azurite: Azurite, *args: object, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    r = run_process(*args, env={**azurite.env(CS), **(env or {})}, timeout=180)
    assert KEY not in r.out + r.err, "the account key leaked"
    assert "sig=" not in r.out + r.err, "a SAS leaked"
    assert "Traceback" not in r.err, r.err
    return r


def test_local_to_azure_to_azure_to_local(azurite: Azurite, tmp_path: Path) -> None:
    rng = random.Random(3)
    tree = write_tree(
        tmp_path / "tree",
        {"ckpt/model.bin": rng.randbytes(600_000), "data/a.txt": b"x" * 70_000, "empty": b""},
    )
    local = tmp_path / "local"
    pw = {"BCDR_PASSWORD": "one"}
    assert (
        run_process("init", "--repo", local, "--encrypt", "--chunk-size", SMALL_CHUNKS, env=pw).code
        == 0
    )
    r = run_process("backup", "--repo", local, "--job", "ckpt", tree, "--json", env=pw)
    assert r.code == 0, r.err
    original = r.json()["snapshot"]
    want = snapshot_tree(tree)

    # local (encrypted) -> Azure (another password), connection string from a variable
    first = _url()
    az = ["--repo", first, "--azure-connection-string-env", CS]
    r = _run(
        azurite,
        "init",
        *az,
        "--encrypt",
        "--from-repo",
        local,
        "--copy-chunker-params",
        env={"BCDR_PASSWORD": "two", "BCDR_FROM_PASSWORD": "one"},
    )
    assert r.code == 0, r.err
    r = _run(
        azurite,
        "copy",
        "--from-repo",
        local,
        *az,
        "all",
        "--json",
        env={"BCDR_PASSWORD": "two", "BCDR_FROM_PASSWORD": "one"},
    )
    assert r.code == 0, r.err
    assert r.json()["copied"] == 1 and r.json()["uploaded"]["bytes"] > 600_000

    # Azure -> Azure: another container, the source through a SAS, the destination through
    # the connection string; unencrypted destination
    second = _url()
    sas = _sas()
    az2 = ["--repo", second, "--azure-connection-string-env", CS]
    src_opts = [
        "--from-repo",
        first,
        "--from-azure-sas-env",
        "SRC_SAS",
        "--from-azure-endpoint",
        azurite.endpoint,
    ]
    assert _run(azurite, "init", *az2).code == 0
    env = {"SRC_SAS": sas, "BCDR_FROM_PASSWORD": "two", "BCDR_PASSWORD": ""}
    r = _run(azurite, "copy", *src_opts, *az2, "latest", "--json", env=env)
    assert r.code == 0, r.err
    assert r.json()["downloaded"]["bytes"] > 600_000
    # again: nothing new goes over the network but trees
    r = _run(azurite, "copy", *src_opts, *az2, "latest", "--json", env=env)
    assert r.code == 0 and r.json()["copied"] == 0
    assert r.json()["stats"]["bytes_read"] == 0

    # Azure -> local: restores to the very files backed up, and is the same recovery point
    back = tmp_path / "back"
    assert run_process("init", "--repo", back).code == 0
    r = _run(
        azurite,
        "copy",
        "--from-repo",
        second,
        "--from-azure-connection-string-env",
        CS,
        "--repo",
        back,
        "all",
        "--json",
        env={"BCDR_PASSWORD": ""},
    )
    assert r.code == 0, r.err
    [snap] = run_process("snapshots", "--repo", back, "--json").json()
    assert snap["original"] == original
    r = run_process("restore", "--repo", back, "latest", "--target", tmp_path / "out")
    assert r.code == 0, r.err
    assert snapshot_tree(tmp_path / "out" / tree.relative_to("/")) == want
    for url, opts in ((first, az), (second, az2)):
        r = _run(azurite, "check", *opts, "--read-data", env={"BCDR_PASSWORD": "two"})
        assert r.code == 0, (url, r.out + r.err)


def _raw(server: Azurite, url: str) -> AzureBlobStorage:
    access = resolve_access(url, AzureAuth("connection_string", CS), env=server.env(CS))
    return AzureBlobStorage(access)


@pytest.mark.slow
def test_azurite_stopped_mid_copy_then_a_rerun_finishes(tmp_path: Path) -> None:
    """The destination's storage goes away while a copy uploads: the copy fails cleanly (no
    snapshot committed, a destination that checks clean), and after a restart the next copy
    finishes it and both sides check clean with every byte read."""
    server = Azurite(tmp_path / "az", location=tmp_path / "az-data").start()
    try:
        local = tmp_path / "local"
        assert run_process("init", "--repo", local, "--pack-size", str(1024 * 1024)).code == 0
        tree = write_tree(
            tmp_path / "tree", {f"shard-{i}.bin": os.urandom(2 * 1024 * 1024) for i in range(30)}
        )
        assert run_process("backup", "--repo", local, "--job", "j", tree).code == 0
        url = _url()
        env = {**server.env(CS), "BCDR_RETRY_SECONDS": "2", "BCDR_PASSWORD": ""}
        az = ["--repo", url, "--azure-connection-string-env", CS]
        r = run_process("init", *az, "--pack-size", str(1024 * 1024), env=env)
        assert r.code == 0, r.err
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bcdr",
                "copy",
                "--from-repo",
                str(local),
                *az,
                "all",
                "--connections",
                "1",
            ],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        raw = _raw(server, url)
        deadline = time.monotonic() + 60
        while not any(True for _ in raw.list("data/")):
            assert time.monotonic() < deadline, "no pack was uploaded within 60 s"
            assert proc.poll() is None, "the copy finished before Azurite could be stopped"
            time.sleep(0.05)
        raw.close()
        server.stop()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert "cannot reach Azure Storage" in err and "Traceback" not in err
        assert KEY not in out + err
        server.start()
        assert list(_raw(server, url).list("snapshots/")) == []
        assert run_process("check", *az, env=env).code == 0
        r = run_process("copy", "--from-repo", local, *az, "all", "--json", env=env)
        assert r.code == 0, r.err
        assert r.json()["copied"] == 1
        r = run_process("check", *az, "--read-data", env=env)
        assert r.code == 0, r.out + r.err
        r = run_process("restore", *az, "latest", "--target", tmp_path / "out", env=env)
        assert r.code == 0, r.err
        assert snapshot_tree(tmp_path / "out" / tree.relative_to("/")) == snapshot_tree(tree)
    finally:
        server.stop()
