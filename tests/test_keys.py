"""``bcdr key`` (issue 35): several passwords, rotation without re-encrypting anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, write_tree


def test_passwords_are_added_listed_changed_and_removed(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = str(tmp_path / "repo")
    monkeypatch.setenv("BCDR_PASSWORD", "first")
    assert cli("init", "--repo", repo, "--encrypt").code == 0
    src = write_tree(tmp_path / "src", {"a.bin": b"a" * 10_000})
    assert cli("backup", "--repo", repo, src).code == 0
    packs = sorted(p.name for p in (Path(repo) / "data").rglob("*") if p.is_file())
    none = cli("key", "add", "--repo", repo)
    assert none.code == 2 and "BCDR_NEW_PASSWORD" in none.err
    monkeypatch.setenv("BCDR_NEW_PASSWORD", "second")
    added = cli("key", "add", "--repo", repo, "--json")
    assert added.code == 0, added.err
    new_id = added.json()["added"]
    listed = cli("key", "list", "--repo", repo, "--json").json()
    assert len(listed) == 2 and [k["current"] for k in listed].count(True) == 1
    assert {k["id"] for k in listed if not k["current"]} == {new_id}
    # the second password opens it; the first still does
    monkeypatch.setenv("BCDR_PASSWORD", "second")
    assert cli("snapshots", "--repo", repo).code == 0
    refused = cli("key", "remove", "--repo", repo, new_id[:10])
    assert refused.code == 2 and "this password opens" in refused.err
    # change the first password: the data is not touched
    monkeypatch.setenv("BCDR_PASSWORD", "first")
    monkeypatch.setenv("BCDR_NEW_PASSWORD", "third")
    changed = cli("key", "passwd", "--repo", repo)
    assert changed.code == 0 and "no data was rewritten" in changed.out
    assert cli("snapshots", "--repo", repo).code == 1  # "first" opens nothing now
    monkeypatch.setenv("BCDR_PASSWORD", "third")
    assert cli("snapshots", "--repo", repo).code == 0
    assert cli("key", "remove", "--repo", repo, new_id[:10]).code == 0
    monkeypatch.setenv("BCDR_PASSWORD", "second")
    assert cli("snapshots", "--repo", repo).code == 1
    monkeypatch.setenv("BCDR_PASSWORD", "third")
    assert sorted(p.name for p in (Path(repo) / "data").rglob("*") if p.is_file()) == packs
    assert cli("check", "--repo", repo, "--read-data").code == 0
    kinds = [r["kind"] for r in cli("evidence", "list", "--repo", repo, "--json").json()]
    assert kinds.count("key") == 3  # add, passwd, remove
    unencrypted = str(tmp_path / "plain")
    assert cli("init", "--repo", unencrypted).code == 0
    assert cli("key", "list", "--repo", unencrypted).code == 2
