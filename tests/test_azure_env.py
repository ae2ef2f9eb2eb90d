"""Azure's own credential variables (issue 35; docs/environment.md): with no credential option,
``AZURE_STORAGE_CONNECTION_STRING``, then ``AZURE_STORAGE_KEY`` (the URL's account), then
``AZURE_STORAGE_SAS_TOKEN`` are used, as ``az`` uses them, and bcdr says which; never the
secret itself. Against Azurite, in real processes with only those variables set."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import Result, run_process, write_tree

STANDARD = ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN")


def _bcdr(*args: object, env: dict[str, str]) -> Result:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    r = run_process(*args, env={**clean, **env})
    assert "Traceback" not in r.err, r.err
    for secret in env.values():
        if len(secret) > 20:
            assert secret not in r.out + r.err
    return r


def _url() -> str:
    return f"azure://{ACCOUNT}/env-{uuid.uuid4().hex[:12]}/r"


def test_the_connection_string_variable_az_uses_is_enough(azurite: Azurite, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": b"a" * 5000})
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    url = _url()
    init = _bcdr("init", "--repo", url, env=env)
    assert init.code == 0, init.err
    assert "using the connection string in $AZURE_STORAGE_CONNECTION_STRING" in init.err
    assert _bcdr("backup", "--repo", url, src, env=env).code == 0
    snaps = _bcdr("snapshots", "--repo", url, "--json", env=env)
    assert snaps.code == 0 and len(snaps.json()) == 1
    quiet = _bcdr("snapshots", "--repo", url, "--quiet", env=env)
    assert "using the" not in quiet.err  # said, unless asked for quiet
    # it comes first: a wrong key beside it is not used
    both = {**env, "AZURE_STORAGE_KEY": "d3Jvbmc=", "AZURE_STORAGE_SAS_TOKEN": "sv=x&sig=y"}
    assert _bcdr("snapshots", "--repo", url, env=both).code == 0
    # an option names the credential: the variables are not looked at
    named = _bcdr(
        "snapshots",
        "--repo",
        url,
        "--azure-key-env",
        "MY_KEY",
        "--azure-endpoint",
        azurite.endpoint,
        env={**env, "MY_KEY": "d3Jvbmc="},
    )
    assert named.code == 1 and "account key in $MY_KEY" in named.err


def test_the_account_key_and_sas_token_variables(azurite: Azurite, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"b.bin": b"b" * 5000})
    endpoint = ["--azure-endpoint", azurite.endpoint]
    url = _url()
    key = {"AZURE_STORAGE_KEY": KEY}
    r = _bcdr("init", "--repo", url, *endpoint, env=key)
    assert r.code == 0 and "using the account key in $AZURE_STORAGE_KEY" in r.err, r.err
    assert _bcdr("backup", "--repo", url, *endpoint, src, env=key).code == 0
    elsewhere = _bcdr(
        "snapshots", "--repo", url, *endpoint, env={**key, "AZURE_STORAGE_ACCOUNT": "other"}
    )
    assert elsewhere.code == 2
    assert "AZURE_STORAGE_ACCOUNT=other" in elsewhere.err and ACCOUNT in elsewhere.err
    sas = generate_account_sas(
        ACCOUNT,
        KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    token = {"AZURE_STORAGE_SAS_TOKEN": sas}
    r = _bcdr("snapshots", "--repo", url, *endpoint, "--json", env=token)
    assert r.code == 0 and len(r.json()) == 1, r.err
    denied = _bcdr(
        "snapshots", "--repo", url, *endpoint, env={"AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=bad"}
    )
    assert denied.code == 1 and "$AZURE_STORAGE_SAS_TOKEN" in denied.err
