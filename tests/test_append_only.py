"""Append-only operation (issue 34, docs/immutability.md): with an Azure SAS that can read,
add, create, write and list but not delete (``racwl``), every command a backup host runs
works, and forget, prune, unlock and repair stop before changing anything. Azurite checks the
SAS's permissions as Azure does (403 AuthorizationPermissionMismatch)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from bcdr.clock import FakeClock
from bcdr.errors import LockConflict, StoragePermission
from bcdr.repository.locks import (
    PRUNE,
    READ,
    RepoLock,
    leftover_locks,
    list_locks,
    remove_locks,
)
from bcdr.storage.local import LocalStorage
from tests.azurite import ACCOUNT, KEY, Azurite
from tests.conftest import (
    SMALL_CHUNKS,
    Cli,
    restored_root,
    snapshot_tree,
    write_tree,
)

CS_ENV, SAS_ENV = "BCDR_TEST_FULL_CS", "BCDR_TEST_APPEND_SAS"


@dataclass
class Repo:
    url: str
    container: str
    full: list[str]  # credential options that may delete
    append: list[str]  # a racwl SAS: may not delete
    client: BlobServiceClient

    def keys(self) -> dict[str, bytes]:
        """Every blob, with its bytes (what an attacker would want to change)."""
        cc = self.client.get_container_client(self.container)
        return {b.name: cc.download_blob(b.name).readall() for b in cc.list_blobs()}


@pytest.fixture
def repo(
    azurite: Azurite, tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Repo]:
    container = f"ao-{uuid.uuid4().hex[:12]}"
    url = f"azure://{ACCOUNT}/{container}/team"
    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=2),
    )
    assert "d" not in sas.split("sp=", 1)[1].split("&", 1)[0]
    monkeypatch.setenv(CS_ENV, azurite.connection_string)
    monkeypatch.setenv(SAS_ENV, sas)
    monkeypatch.setenv("BCDR_PASSWORD", "append-only-pw")
    endpoint = ["--azure-endpoint", azurite.endpoint]
    full = ["--repo", url, "--azure-connection-string-env", CS_ENV]
    append = ["--repo", url, "--azure-sas-env", SAS_ENV, *endpoint]
    r = cli("init", *full, "--encrypt", "--chunk-size", SMALL_CHUNKS)
    assert r.code == 0, r.err
    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        yield Repo(url, container, full, append, client)
    finally:
        client.close()


def _source(base: Path, seed: int) -> Path:
    rng = random.Random(seed)
    return write_tree(
        base,
        {
            "ckpt/model.bin": rng.randbytes(200_000),
            "ckpt/opt.bin": rng.randbytes(100_000),
            "data/a.txt": b"hello " * 4000,
        },
    )


def test_a_backup_host_without_delete_runs_every_command_it_needs(
    repo: Repo, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _source(tmp_path / "src", 1)
    first = cli("backup", *repo.append, "--job", "ckpt", src, "--json")
    assert first.code == 0, first.err
    (src / "ckpt" / "model.bin").write_bytes(random.Random(2).randbytes(200_000))
    second = cli("backup", *repo.append, "--job", "ckpt", src, "--json")
    assert second.code == 0, second.err
    assert second.json()["parent"] == first.json()["snapshot"]
    assert "stale" not in second.err  # the first run's leftover lock is not a stale lock

    snaps = cli("snapshots", *repo.append, "--json")
    assert snaps.code == 0 and len(snaps.json()) == 2
    listing = cli("ls", *repo.append, "latest")
    assert listing.code == 0 and "model.bin" in listing.out
    check = cli("check", *repo.append, "--read-data")
    assert check.code == 0, check.out + check.err
    out = tmp_path / "out"
    restored = cli("restore", *repo.append, "latest", "--target", out)
    assert restored.code == 0, restored.err
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    verify = cli("evidence", "verify", *repo.append)
    assert verify.code == 0, verify.out + verify.err

    # copy into the append-only repository from another one
    other = str(tmp_path / "other")
    assert cli("init", "--repo", other).code == 0
    other_src = _source(tmp_path / "other-src", 3)
    assert cli("backup", "--repo", other, "--job", "dataset", other_src).code == 0
    monkeypatch.setenv("BCDR_FROM_PASSWORD", "append-only-pw")
    copied = cli("copy", *repo.append, "--from-repo", other, "all")
    assert copied.code == 0, copied.err
    assert len(cli("snapshots", *repo.append, "--json").json()) == 3

    # what they left: lock objects of ended sessions, nothing held
    keys = repo.keys()
    ends = [k for k in keys if k.startswith("team/locks/end-")]
    assert ends, sorted(keys)
    assert cli("backup", *repo.append, "--job", "ckpt", src).code == 0  # still nothing blocks

    # a run that may delete cleans them up
    unlocked = cli("unlock", *repo.full)
    assert unlocked.code == 0, unlocked.err
    assert not [k for k in repo.keys() if k.startswith("team/locks/")]


@pytest.mark.parametrize(
    "command",
    [
        ["forget", "--keep-last", "1"],
        ["prune"],
        ["unlock"],
        ["unlock", "--remove-all"],
        ["repair", "index"],
        ["repair", "snapshots", "--forget"],
    ],
)
def test_commands_that_delete_refuse_an_append_only_credential_before_changing_anything(
    repo: Repo, cli: Cli, tmp_path: Path, command: list[str]
) -> None:
    src = _source(tmp_path / "src", 4)
    for seed in (5, 6):
        (src / "ckpt" / "opt.bin").write_bytes(random.Random(seed).randbytes(100_000))
        assert cli("backup", *repo.full, "--job", "ckpt", src).code == 0
    before = repo.keys()
    r = cli(*command, *repo.append)
    assert r.code == 2, (r.code, r.err)
    assert "may not delete" in r.err and "nothing was changed" in r.err
    assert "d permission" in r.err  # what to do
    assert "Traceback" not in r.err
    assert "sig=" not in r.err + r.out  # the SAS never shows
    assert repo.keys() == before
    # dry runs delete nothing, so they need no delete permission
    if command[0] in ("forget", "prune"):
        dry = cli(*command, "--dry-run", *repo.append)
        assert dry.code == 0, dry.err


def test_a_plan_on_an_append_only_host_backs_up_and_drills_and_leaves_retention(
    repo: Repo, azurite: Azurite, cli: Cli, tmp_path: Path
) -> None:
    src = _source(tmp_path / "src", 7)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
version: 1
name: append-only
repositories:
  blob:
    url: {repo.url}
    endpoint: {azurite.endpoint}
    credential: {{sas_env: {SAS_ENV}}}
    encryption: {{password_env: BCDR_PASSWORD}}
backups:
  ckpt:
    repository: blob
    paths: [{src}]
    schedule: daily
    retention: {{keep_last: 1}}
drills:
  restore-ckpt:
    backup: ckpt
    schedule: weekly
    rto: 15m
    scratch: {tmp_path / "scratch"}
"""
    )
    for _ in range(2):
        r = cli("run", plan)
        assert r.code == 3, r.out + r.err  # partial: saved, retention left for later
        assert "retention not applied: this credential may not delete" in r.out + r.err
    assert len(cli("snapshots", *repo.append, "--json").json()) == 2  # nothing forgotten
    drill = cli("drill", plan)
    assert drill.code == 0, drill.out + drill.err
    # where one may delete, the same retention applies
    forgot = cli("forget", *repo.full, "--job", "ckpt", "--keep-last", "1")
    assert forgot.code == 0, forgot.err
    assert len(cli("snapshots", *repo.append, "--json").json()) == 1


class _NoDelete(LocalStorage):
    """A local repository's storage whose credential may not delete (as a racwl SAS)."""

    def delete(self, key: str) -> bool:
        raise StoragePermission(f"delete {key}: access denied (403 AuthorizationPermission...)")


def test_locks_work_without_delete_and_leave_only_what_unlock_removes(tmp_path: Path) -> None:
    full = LocalStorage(tmp_path / "r")
    denied = _NoDelete(tmp_path / "r")
    clock = FakeClock(datetime(2026, 12, 7, tzinfo=UTC))
    first = RepoLock(denied, clock, kind=PRUNE, url="r").acquire()
    assert [lock.kind for lock in list_locks(full)] == [PRUNE]
    with pytest.raises(LockConflict):  # held: another prune is refused
        RepoLock(denied, clock, kind=PRUNE, url="r").acquire()
    first.release()
    assert first.append_only
    assert list_locks(full) == []  # ended by its marker, though its object is still there
    assert sorted(leftover_locks(full)) == sorted(k.key for k in full.list("locks/"))
    # a refresh that cannot delete leaves the superseded object; the newest is the lock
    second = RepoLock(denied, clock, kind=PRUNE, url="r").acquire()
    second._stop.set()
    old = second._key
    second._key = second._write()
    assert [lock.key for lock in list_locks(full)] == [second._key]
    assert old in leftover_locks(full)
    # stale warnings are for abandoned locks only, not for what append-only holders left
    reader = RepoLock(denied, clock, kind=READ, url="r").acquire()
    assert reader.stale_seen == []
    reader.release()
    second.release()
    assert list_locks(full) == []
    # a run that may delete removes every leftover, the end markers last
    assert remove_locks(full, clock, remove_all=False) == []
    assert list(full.list("locks/")) == []
