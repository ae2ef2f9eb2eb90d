"""Plans: validation with located errors, `bcdr plan`, `plan init`, `run`, generated docs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bcdr.demo import make_demo_data
from bcdr.plan.docs import reference
from tests.conftest import Cli, Result, run_process

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "plans" / "quickstart.yaml").read_text()
SECRET = "c2VjcmV0LWtleS1tYXRlcmlhbC1kby1ub3QtbGVhaw" + "A" * 44 + "=="


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the quickstart layout: plans/quickstart.yaml beside demo/."""
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "quickstart.yaml").write_text(QUICKSTART)
    make_demo_data(tmp_path / "demo")
    return tmp_path


def _plan(tmp_path: Path, old: str, new: str, name: str = "p.yaml") -> Path:
    assert old in QUICKSTART, old
    f = tmp_path / "plans" / name
    f.parent.mkdir(exist_ok=True)
    f.write_text(QUICKSTART.replace(old, new, 1))
    return f


def test_quickstart_validates(cli: Cli) -> None:
    r: Result = cli("validate", ROOT / "plans" / "quickstart.yaml")
    assert r.code == 0
    assert "valid" in r.out and "2 backup(s)" in r.out and "2 drill(s)" in r.out


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        (
            "repository: local\n    schedule: daily",
            "repository: locall\n    schedule: daily",
            14,
            "backups.checkpoints.repository",
            "did you mean 'local'",
        ),
        ("rpo: 26h", "rpo: 12h", 16, "backups.checkpoints.rpo", "shorter than the schedule"),
        ("rpo: 26h", "rpo: 26 hours", 16, "backups.checkpoints.rpo", "not a duration"),
        ("keep_weekly: 8", "keep_weekly: 0", 23, "backups.datasets.retention", "keeps nothing"),
        (
            "    rpo: 8d\n",
            "    rpo: 8d\n    schedul: daily\n",
            23,
            "backups.datasets.schedul",
            "did you mean 'schedule'",
        ),
        (
            "backup: checkpoints",
            "backup: checkpoint",
            26,
            "drills.restore-checkpoints.backup",
            "did you mean 'checkpoints'",
        ),
        (
            "  datasets:\n",
            "  restore-checkpoints:\n",
            25,
            "drills.restore-checkpoints",
            "also used in",
        ),
        (
            "paths: [../demo/checkpoints]",
            "paths: [../demo, ../demo/checkpoints]",
            12,
            "backups.checkpoints.paths[1]",
            "overlaps",
        ),
        (
            "schedule: daily",
            "schedule: '61 * * * *'",
            15,
            "backups.checkpoints.schedule",
            "not a valid cron",
        ),
        (
            "schedule: daily",
            "schedule: '0 0 30 2 *'",
            15,
            "backups.checkpoints.schedule",
            "never fires",
        ),
        ("timezone: UTC", "timezone: Europe/Atlantis", 3, "timezone", "not a known time zone"),
        (
            "region: westeurope",
            "region: westeurope\n    password: hunter2",
            8,
            "repositories.local.password",
            "never holds secrets",
        ),
        (
            "url: ../.bcdr/quickstart-repo",
            f"url: ../r\n    endpoint: https://x/?sv=1&sig={SECRET}",
            7,
            "repositories.local.endpoint",
            "looks like a secret",
        ),
        (
            "url: ../.bcdr/quickstart-repo",
            "url: azure://mlbackups/AB",
            6,
            "repositories.local.url",
            "invalid container name",
        ),
        (
            "url: ../.bcdr/quickstart-repo",
            "url: azure://mlbackups/ckpt\n    endpoint: ftp://x",
            7,
            "repositories.local.endpoint",
            "invalid blob endpoint",
        ),
        ("version: 1", "version: 2", 1, "version", "must be one of: 1"),
        ("sample: 100%", "sample: 150%", 29, "drills.restore-checkpoints.sample", "percentage"),
        (
            "sample: 100%",
            "sample: 0%",
            29,
            "drills.restore-checkpoints.sample",
            "restore something",
        ),
        (
            "  datasets:\n    paths: [../demo/datasets]\n",
            "  datasets:\n",
            18,
            "backups.datasets",
            "missing required field 'paths'",
        ),
    ],
)
def test_each_rule_is_located(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    f = _plan(tmp_path, old, new)
    r = cli("validate", f)
    assert r.code == 2, r.out
    located = [x for x in r.out.splitlines() if x.startswith(f"{f}:{line}:")]
    assert located, r.out
    assert f": {field}: " in r.out and words in r.out, r.out
    assert SECRET not in r.out + r.err and "hunter2" not in r.out + r.err


def test_every_problem_is_listed_in_file_order(cli: Cli, tmp_path: Path) -> None:
    text = QUICKSTART.replace("rpo: 26h", "rpo: 26x").replace("sample: 100%", "sample: lots")
    f = tmp_path / "two.yaml"
    f.write_text(text)
    r = cli("validate", f, "--json")
    assert r.code == 2
    problems = json.loads(r.out)[0]["problems"]
    assert [p["field"] for p in problems] == [
        "backups.checkpoints.rpo",
        "drills.restore-checkpoints.sample",
    ]
    assert all(p["line"] > 0 and p["column"] > 0 and p["hint"] for p in problems)


def test_plan_shows_jobs_and_next_runs_in_the_plan_timezone(cli: Cli, tmp_path: Path) -> None:
    f = _plan(tmp_path, "timezone: UTC", "timezone: Asia/Tokyo")
    f.write_text(f.read_text().replace("schedule: daily", 'schedule: daily\n    at: "02:30"'))
    r = cli("plan", f, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    jobs = {j["name"]: j for j in doc["jobs"]}
    ck = jobs["checkpoints"]
    assert ck["cron"] == "30 2 * * *" and ck["region"] == "westeurope"
    assert ck["targets"] == {"rpo": "26h"}
    assert len(ck["next_runs"]) == 3
    assert all(t.endswith("T02:30+09:00") for t in ck["next_runs"])
    assert jobs["restore-checkpoints"]["targets"]["rto"] == "15m"
    weekly = jobs["datasets"]["cron"].split()
    assert weekly[4] == "0" and 1 <= int(weekly[1]) <= 4  # sunday, inside the night window
    again = json.loads(cli("plan", f, "--json").out)
    assert again["jobs"] == doc["jobs"]  # spread is deterministic


def test_plan_init_writes_a_sample_that_validates(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "sample.yaml"
    assert cli("plan", "init", "--out", out).code == 0
    assert out.read_text().startswith("# A bcdr plan")
    assert cli("validate", out).code == 0
    r = cli("plan", "init", "--out", out)
    assert r.code == 2 and "exists" in r.err


def test_docs_are_generated_from_the_schema() -> None:
    doc = (ROOT / "docs" / "plans.md").read_text()
    assert doc == reference(), (
        "docs/plans.md drifted: run `python -m bcdr.plan.docs > docs/plans.md`"
    )


def test_run_backs_up_with_paths_relative_to_the_plan(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    plan = project / "plans" / "quickstart.yaml"
    r = run_process("run", os.path.relpath(plan, elsewhere), "--json", cwd=elsewhere)
    assert r.code == 0, r.err
    jobs = {j["name"]: j for j in json.loads(r.out)["jobs"]}
    assert jobs["checkpoints"]["status"] == "ok"
    assert jobs["datasets"]["status"] == "ok"
    drill = jobs["restore-checkpoints"]  # runs after the backups it drills
    assert drill["status"] == "ok" and drill["message"].startswith("passed: ")
    assert drill["drill"]["verdict"] == "pass" and drill["evidence"]
    assert drill["drill"]["files_verified"] == drill["drill"]["files_total"] > 0
    repo = project / ".bcdr" / "quickstart-repo"
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    assert sorted(s["job"] for s in snaps) == ["checkpoints", "datasets"]
    ls = run_process("ls", "--repo", repo, "latest", "--job", "checkpoints").out
    assert "step-100.bin" in ls and "latest.tmp" not in ls  # the plan's exclude applied


def test_a_failed_job_does_not_stop_the_others(project: Path) -> None:
    plan = project / "plans" / "quickstart.yaml"
    plan.write_text(QUICKSTART.replace("../demo/checkpoints", "../demo/missing"))
    r = run_process("run", plan, "--json")
    assert r.code == 1
    jobs = {j["name"]: j for j in json.loads(r.out)["jobs"]}
    assert jobs["checkpoints"]["status"] == "failed"
    assert "missing" in jobs["checkpoints"]["message"]
    assert jobs["datasets"]["status"] == "ok"


def test_dry_run_writes_nothing_and_unknown_job_is_named(project: Path) -> None:
    plan = project / "plans" / "quickstart.yaml"
    r = run_process("run", plan, "--dry-run")
    assert r.code == 0, r.err
    assert "would back up" in r.out
    assert not (project / ".bcdr").exists()
    r = run_process("run", plan, "--job", "checkpoint")
    assert r.code == 2 and "did you mean 'checkpoints'" in r.err
    r = run_process("run", plan, "--job", "restore-checkpoints")
    assert r.code == 1 and "does not exist yet: nothing to drill" in r.out


def test_encrypted_repository_password_from_the_named_variable(project: Path) -> None:
    plan = project / "plans" / "quickstart.yaml"
    plan.write_text(
        QUICKSTART.replace(
            "region: westeurope", "region: westeurope\n    encryption: {password_env: QS_PW}"
        )
    )
    r = run_process("run", plan, "--job", "datasets", env={"QS_PW": ""})
    assert r.code == 1 and "QS_PW is not set" in r.out
    r = run_process("run", plan, "--job", "datasets", env={"QS_PW": "pw-in-env"})
    assert r.code == 0, r.out + r.err
    repo = project / ".bcdr" / "quickstart-repo"
    assert run_process("snapshots", "--repo", repo, env={"BCDR_PASSWORD": "wrong"}).code == 1
    ok = run_process("snapshots", "--repo", repo, env={"BCDR_PASSWORD": "pw-in-env"})
    assert ok.code == 0 and "datasets" in ok.out
    assert "pw-in-env" not in r.out + r.err
