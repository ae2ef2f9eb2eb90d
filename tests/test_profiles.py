"""``--plan PLAN [--repository NAME]`` on repository commands (issue 35): the URL, credential
and password settings come from the plan, as resticprofile and borgmatic take them from a
profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Cli, restored_root, snapshot_tree, write_tree


def _plan(tmp_path: Path, repos: str) -> Path:
    src = write_tree(tmp_path / "src", {"ckpt/a.bin": b"a" * 20_000, "b.txt": b"hello"})
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
version: 1
name: profiles
repositories:
{repos}
backups:
  ckpt:
    repository: main
    paths: [{src}]
    schedule: daily
"""
    )
    return plan


def test_repository_commands_take_the_repository_and_password_from_the_plan(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BCDR_PASSWORD", raising=False)
    monkeypatch.delenv("BCDR_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("PLAN_PW", "from-the-plan")
    plan = _plan(tmp_path, "  main: {url: repo, encryption: {password_env: PLAN_PW}}\n")
    r = cli("init", "--plan", plan, "--encrypt")
    assert r.code == 0, r.err
    assert (tmp_path / "repo" / "config").exists()  # relative to the plan's folder
    assert cli("run", plan).code == 0
    snaps = cli("snapshots", "--plan", plan, "--json")
    assert snaps.code == 0 and len(snaps.json()) == 1, snaps.err
    assert cli("ls", "--plan", plan, "latest").code == 0
    assert cli("check", "--plan", plan, "--read-data").code == 0
    out = tmp_path / "out"
    assert cli("restore", "--plan", plan, "latest", "--target", out).code == 0
    src = tmp_path / "src"
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    # the password really is the plan's: another one in BCDR_PASSWORD is not used
    monkeypatch.setenv("BCDR_PASSWORD", "wrong")
    assert cli("snapshots", "--plan", plan).code == 0
    monkeypatch.setenv("PLAN_PW", "wrong")
    bad = cli("snapshots", "--plan", plan)
    assert bad.code == 1 and "wrong password" in bad.err


def test_a_plan_with_several_repositories_needs_a_name_and_mistakes_are_clear(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BCDR_PASSWORD", raising=False)
    plan = _plan(tmp_path, "  main: {url: repo-a}\n  spare: {url: repo-b}\n")
    which = cli("snapshots", "--plan", plan)
    assert which.code == 2 and "main, spare" in which.err and "--repository" in which.err
    assert cli("init", "--plan", plan, "--repository", "spare").code == 0
    assert (tmp_path / "repo-b" / "config").exists() and not (tmp_path / "repo-a").exists()
    unknown = cli("snapshots", "--plan", plan, "--repository", "nope")
    assert unknown.code == 2 and "no repository 'nope'" in unknown.err
    assert "main, spare" in unknown.err
    both = cli("snapshots", "--plan", plan, "--repo", tmp_path / "repo-b")
    assert both.code == 2 and "not both" in both.err
    alone = cli("snapshots", "--repository", "spare")
    assert alone.code == 2 and "give --plan too" in alone.err
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nrepositories: [\n")
    invalid = cli("snapshots", "--plan", broken)
    assert invalid.code == 2 and "broken.yaml" in invalid.err
    assert "Traceback" not in which.err + unknown.err + both.err + invalid.err
