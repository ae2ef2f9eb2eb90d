"""Immutable repositories on Azure (issue 34, docs/immutability.md), through a loopback proxy
that gives Azurite Azure's version-level immutability policies and legal holds
(``tests/immutability_proxy.py``), with the real SDK.

- every object a snapshot needs is written under a policy; bookkeeping (locks, index) is not;
- a container without version-level support is refused before anything is written;
- forget and prune wait for policies to expire, backups and prunes extend what is still needed;
- legal holds keep a snapshot, its data and its evidence; lifting one keeps what another needs;
- check and the report say when protected snapshots' objects are not protected as long;
- ransomware drill: with the backup host's credential, and with the account key, deleting or
  overwriting the protected objects fails, and every snapshot still restores.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.actions.common import open_repo
from bcdr.actions.forget import forget
from bcdr.actions.prune import prune
from bcdr.clock import FakeClock
from bcdr.retention import Policy
from bcdr.storage.azureauth import AzureAuth
from bcdr.storage.base import protected_key
from bcdr.storage.url import StorageSpec
from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import SMALL_CHUNKS, Cli, restored_root, snapshot_tree, write_tree
from tests.immutability_proxy import ImmutabilityProxy

CS_ENV, SAS_ENV = "BCDR_TEST_IMM_CS", "BCDR_TEST_IMM_SAS"
DAYS = 30


@dataclass
class Env:
    proxy: ImmutabilityProxy
    container: str
    url: str
    args: list[str]  # repository options with the account key (through the proxy)
    admin: BlobServiceClient  # the account key, through the proxy (an attacker holding it)

    def blobs(self) -> dict[str, bytes]:
        cc = self.admin.get_container_client(self.container)
        return {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}

    def spec(self, days: int | None = DAYS, mode: str = "locked") -> StorageSpec:
        return StorageSpec(
            self.url,
            auth=AzureAuth("connection_string", CS_ENV),
            immutable_days=days,
            immutable_mode=mode,
        )


def _env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, versioned: bool = True) -> Env:
    container = f"imm-{uuid.uuid4().hex[:12]}"
    proxy = ImmutabilityProxy(
        azurite.port,
        azurite.connection_string,
        ACCOUNT,
        versioned=None if versioned else set(),
    )
    cs = (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"BlobEndpoint={proxy.endpoint};"
    )
    monkeypatch.setenv(CS_ENV, cs)
    monkeypatch.setenv("BCDR_PASSWORD", "immutable-pw")
    admin = BlobServiceClient.from_connection_string(cs)
    admin.create_container(container)  # made by the account's owner, with its support
    url = f"azure://{ACCOUNT}/{container}/team"
    return Env(
        proxy, container, url, ["--repo", url, "--azure-connection-string-env", CS_ENV], admin
    )


@pytest.fixture
def env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    e = _env(azurite, monkeypatch)
    try:
        yield e
    finally:
        e.admin.close()
        e.proxy.close()


def _source(base: Path, seed: int) -> Path:
    rng = random.Random(seed)
    return write_tree(
        base,
        {
            "ckpt/model.bin": rng.randbytes(150_000),
            "ckpt/opt.bin": rng.randbytes(80_000),
            "data/a.txt": b"line\n" * 3000,
        },
    )


def _init(cli: Cli, env: Env, *extra: str) -> None:
    r = cli("init", *env.args, "--encrypt", "--chunk-size", SMALL_CHUNKS, *extra)
    assert r.code == 0, r.err


def test_every_object_a_snapshot_needs_is_written_under_a_policy(
    env: Env, cli: Cli, tmp_path: Path
) -> None:
    imm = ["--immutable-days", str(DAYS)]
    _init(cli, env, *imm)
    src = _source(tmp_path / "src", 1)
    backup = cli("backup", *env.args, *imm, "--job", "ckpt", src)
    assert backup.code == 0, backup.err
    now = datetime.now(UTC)
    names = [n.removeprefix("team/") for n in env.blobs()]
    protected = [n for n in names if protected_key(n)]
    assert {n.split("/")[0] for n in protected} >= {
        "config",
        "keys",
        "data",
        "snapshots",
        "evidence",
    }
    for name in protected:
        policy, held = env.proxy.protection(env.container, f"team/{name}")
        assert policy is not None, name
        assert policy.mode == "Locked" and not held
        assert abs(policy.until - (now + timedelta(days=DAYS))) < timedelta(hours=1), name
    for name in names:  # bookkeeping stays deletable
        if name.startswith(("index/", "locks/")):
            assert env.proxy.protection(env.container, f"team/{name}")[0] is None, name
    check = cli("check", *env.args, "--json")
    assert check.code == 0, check.err
    found = check.json()["immutability"]
    assert found["ok"] and found["protected"] == 1 and found["days"] is None  # not asked here
    text = cli("check", *env.args, *imm)
    assert "immutability: 1 protected snapshot(s) (policies of 30 days)" in text.out
    assert "warning" not in text.out


def test_a_container_without_version_level_immutability_is_refused_before_writing(
    azurite: Azurite, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = _env(azurite, monkeypatch, versioned=False)
    try:
        r = cli("init", *e.args, "--immutable-days", "7")
        assert r.code == 1, r.err
        assert "no version-level immutability support; nothing was written" in r.err
        assert "--enable-vlw" in r.err and "Traceback" not in r.err
        assert e.blobs() == {}
        _init(cli, e)  # without immutability it is an ordinary repository
        before = set(e.blobs())
        b = cli("backup", *e.args, "--immutable-days", "7", _source(tmp_path / "s", 2))
        assert b.code == 1 and "nothing was written" in b.err
        assert set(e.blobs()) == before
        check = cli("check", *e.args, "--immutable-days", "7")
        assert "no version-level immutability support" in check.out
    finally:
        e.admin.close()
        e.proxy.close()
    local = cli("init", "--repo", tmp_path / "local", "--immutable-days", "7")
    assert local.code == 2 and "Azure Blob Storage feature" in local.err


def test_forget_and_prune_wait_for_policies_and_extend_what_is_still_needed(
    env: Env, cli: Cli, tmp_path: Path
) -> None:
    _init(cli, env, "--immutable-days", str(DAYS))
    start = datetime.now(UTC)
    clock = FakeClock(start)

    def backup(seed: int) -> str:
        repo = open_repo(env.spec(), clock=clock)
        try:
            src = _source(tmp_path / f"src{seed}", seed)
            return run_backup(repo, BackupRequest(paths=(str(src),), job="ckpt")).snapshot.id
        finally:
            repo.close()

    def at(days: int) -> None:
        clock.set(start + timedelta(days=days))
        env.proxy.advance(start + timedelta(days=days) - env.proxy.now())

    first = backup(1)
    clock.advance(timedelta(hours=1))
    second = backup(2)
    keep_one = Policy(last=1)
    dropped = forget(env.spec(), keep_one, UTC, clock=clock)
    assert dropped.removed == [] and dropped.waiting == [first]
    assert "1 forgotten snapshot(s) wait for their immutability to expire" in (
        dropped.waiting_note or ""
    )
    assert {s.id for s in open_repo(env.spec()).list_snapshots()} == {first, second}

    at(20)  # 10 of 30 days left: due; the next backup extends what may still be needed
    third = backup(3)
    first_packs = _packs_only_in(env, first)
    for key in first_packs:
        policy, _ = env.proxy.protection(env.container, f"team/{key}")
        assert policy is not None and policy.until > start + timedelta(days=45), key

    at(31)  # the first two snapshots' own policies (never extended) have expired
    gone = forget(env.spec(), keep_one, UTC, clock=clock)
    assert sorted(gone.removed) == sorted([first, second]) and gone.waiting == []
    report = prune(env.spec(), grace=timedelta(0), clock=clock)
    assert report.packs_waiting >= len(first_packs) and report.packs_deleted == 0
    assert "wait for their immutability to expire" in (report.waiting or "")
    assert report.pending >= 1  # the mark stays for its waiting packs

    at(52)  # the extended policies have run out
    report = prune(env.spec(), grace=timedelta(0), clock=clock)
    assert report.packs_deleted >= len(first_packs) and report.packs_waiting == 0
    keys = {n.removeprefix("team/") for n in env.blobs()}
    assert not keys & first_packs
    out = tmp_path / "out"
    restored = cli("restore", *env.args, third, "--target", out)
    assert restored.code == 0, restored.err
    assert snapshot_tree(restored_root(out, tmp_path / "src3")) == snapshot_tree(tmp_path / "src3")


def _packs_only_in(env: Env, snapshot: str) -> set[str]:
    """Pack keys the snapshot needs that no other snapshot does."""
    from bcdr.repository.immutability import Needs

    repo = open_repo(env.spec(days=None))
    try:
        repo.load_index()
        needs = Needs(repo)
        mine = {k for k in needs.keys(repo.load_snapshot(snapshot)) if k.startswith("data/")}
        for other in repo.list_snapshots():
            if other.id != snapshot:
                mine -= needs.keys(other)
        return mine
    finally:
        repo.close()


def test_a_legal_hold_keeps_a_snapshot_its_data_and_its_evidence(
    env: Env, cli: Cli, tmp_path: Path
) -> None:
    _init(cli, env)  # holds need no time-based policy
    a = cli("backup", *env.args, "--job", "ckpt", _source(tmp_path / "a", 4), "--json")
    b = cli("backup", *env.args, "--job", "ckpt", _source(tmp_path / "b", 5), "--json")
    first, second = a.json()["snapshot"], b.json()["snapshot"]
    held = cli("hold", "add", *env.args, first, "--json")
    assert held.code == 0, held.err
    doc = held.json()
    assert doc["objects"] > 3 and doc["evidence_records"]
    keys = {n.removeprefix("team/") for n in env.blobs()}
    needed = _needed(env, first)
    for key in needed | {f"snapshots/{first}"}:
        assert env.proxy.protection(env.container, f"team/{key}")[1], key
    for rid in doc["evidence_records"]:
        (ev,) = [k for k in keys if k.startswith("evidence/") and k.endswith(rid)]
        assert env.proxy.protection(env.container, f"team/{ev}")[1]
    listing = cli("hold", "list", *env.args, "--json").json()
    assert [(h["snapshot"], h["complete"]) for h in listing] == [(first, True)]
    # forget drops it by policy, but it waits; prune leaves its data
    r = cli("forget", *env.args, "--keep-last", "1")
    assert r.code == 0 and "under a legal hold" in r.out, r.out
    assert cli("prune", *env.args, "--grace", "0").code == 0
    out = tmp_path / "out"
    assert cli("restore", *env.args, first, "--target", out).code == 0
    # a second hold on the other snapshot; lifting the first keeps what the second needs
    assert cli("hold", "add", *env.args, second).code == 0
    lifted = cli("hold", "remove", *env.args, first, "--json").json()
    assert lifted["kept"] >= 2  # config and keys at least
    shared = needed & _needed(env, second)
    for key in shared:
        assert env.proxy.protection(env.container, f"team/{key}")[1], key
    assert not env.proxy.protection(env.container, f"team/snapshots/{first}")[1]
    assert [h["snapshot"] for h in cli("hold", "list", *env.args, "--json").json()] == [second]
    # its own data is free again: forget removes it, and the hold's records are evidence
    assert first in cli("forget", *env.args, "--keep-last", "1", "--json").json()["removed"]
    kinds = [r["kind"] for r in cli("evidence", "list", *env.args, "--json").json()]
    assert kinds.count("hold") == 3


def _needed(env: Env, snapshot: str) -> set[str]:
    from bcdr.repository.immutability import Needs

    repo = open_repo(env.spec(days=None))
    try:
        repo.load_index()
        return Needs(repo).keys(repo.load_snapshot(snapshot))
    finally:
        repo.close()


def test_check_and_the_report_name_objects_not_protected_as_long_as_their_snapshot(
    env: Env, cli: Cli, tmp_path: Path
) -> None:
    imm = ["--immutable-days", str(DAYS), "--immutable-mode", "unlocked"]
    _init(cli, env, *imm)
    snap = cli("backup", *env.args, *imm, _source(tmp_path / "s", 6), "--json").json()["snapshot"]
    pack = sorted(k for k in _needed(env, snap) if k.startswith("data/"))[0]
    # an unlocked policy can be removed by whoever may set policies
    env.admin.get_blob_client(env.container, f"team/{pack}").delete_immutability_policy()
    r = cli("check", *env.args, *imm)
    assert r.code == 0
    assert f"warning: immutability: snapshot {snap[:8]}" in r.out and "not protected" in r.out
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
version: 1
name: imm
repositories:
  blob:
    url: {env.url}
    credential: {{connection_string_env: {CS_ENV}}}
    encryption: {{password_env: BCDR_PASSWORD}}
    immutability: {{days: {DAYS}, mode: unlocked}}
backups:
  ckpt:
    repository: blob
    paths: [{tmp_path / "s"}]
    schedule: daily
"""
    )
    report = cli("report", plan, "--format", "json")
    doc = report.json()
    (repo_entry,) = doc["repositories"]
    assert repo_entry["immutability"]["status"] == "FAIL", repo_entry
    assert pack.split("/")[-1][:12] in " ".join(repo_entry["immutability"]["details"]["gaps"])
    # a backup extends what is due, and the gap closes
    assert cli("backup", *env.args, *imm, tmp_path / "s").code == 0
    again = cli("check", *env.args, *imm)
    assert "warning" not in again.out, again.out
    doc = cli("report", plan, "--format", "json").json()
    assert doc["repositories"][0]["immutability"]["status"] == "PASS"


def test_ransomware_drill_the_backup_hosts_credential_and_the_account_key_cannot_destroy_it(
    env: Env, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imm = ["--immutable-days", str(DAYS)]
    _init(cli, env, *imm)
    sources = [_source(tmp_path / f"s{i}", 10 + i) for i in range(2)]
    for src in sources:
        assert cli("backup", *env.args, *imm, "--job", "ckpt", src).code == 0
    before = env.blobs()
    sas = generate_container_sas(
        ACCOUNT,
        env.container,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    host = BlobServiceClient(env.proxy.endpoint, credential=sas).get_container_client(env.container)
    owner = env.admin.get_container_client(env.container)
    survived = 0
    for attacker in (host, owner):
        for name in sorted(before):
            if not protected_key(name.removeprefix("team/")):
                continue
            blob = attacker.get_blob_client(name)
            with pytest.raises(HttpResponseError) as deleted:
                blob.delete_blob()
            assert deleted.value.status_code in (403, 409)
            with pytest.raises(HttpResponseError) as overwritten:
                blob.upload_blob(b"encrypted by ransomware", overwrite=True)
            assert overwritten.value.status_code == 409
            survived += 1
    assert survived > 10
    # what is not protected (index, locks) the owner's key can delete: rebuilt from the packs
    for name in before:
        if name.startswith(("team/index/", "team/locks/")):
            owner.delete_blob(name)
    assert cli("repair", "index", *env.args).code == 0
    for snap in cli("snapshots", *env.args, "--json").json():
        out = tmp_path / f"restore-{snap['id'][:8]}"
        r = cli("restore", *env.args, snap["id"], "--target", out)
        assert r.code == 0, r.err
    assert cli("check", *env.args, "--read-data").code == 0
