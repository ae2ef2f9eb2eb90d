"""Copies in plans: a backup job's ``copy_to`` (residency checked for each destination,
retention kept there), the drill that restores from the copy, and the report's copies
control."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

from tests.conftest import run_process, write_tree

PLAN = """\
version: 1
name: copies
timezone: UTC
repositories:
  main:
    url: ./main
    region: westeurope
  offsite:
    url: ./offsite
    region: {offsite_region}
    encryption: {{password_env: OFFSITE_PW}}
{residency}
backups:
  ckpt:
    paths: [./tree]
    repository: main
    schedule: daily
    rpo: 26h
    retention: {{keep_last: 5}}
    copy_to:
      - repository: offsite
        retention: {{keep_last: 2}}
drills:
  region-loss:
    backup: ckpt
    repository: offsite
    schedule: weekly
    rto: 15m
"""

ENV = {"OFFSITE_PW": "offsite-secret", "BCDR_PASSWORD": ""}


def _plan(tmp_path: Path, offsite_region: str = "northeurope", residency: str = "") -> Path:
    rng = random.Random(5)
    write_tree(tmp_path / "tree", {"model.bin": rng.randbytes(300_000), "a.txt": b"a" * 1000})
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(offsite_region=offsite_region, residency=residency))
    return plan


def _measured(control: dict) -> str:  # type: ignore[type-arg]
    """A control's status over the part of the window with evidence (a plan started minutes
    ago covers little of the window: the report then says NO EVIDENCE over the rest)."""
    return str(control["details"].get("covered_status", control["status"]))


def _snapshots(repo: Path, env: dict[str, str]) -> list[dict]:  # type: ignore[type-arg]
    r = run_process("snapshots", "--repo", repo, "--json", env=env)
    assert r.code == 0, r.err
    return r.json()  # type: ignore[no-any-return]


def test_copy_to_copies_each_backup_keeps_its_own_retention_and_drills_from_it(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path)
    for k in range(3):
        (tmp_path / "tree" / f"day-{k}.txt").write_text(f"day {k}")
        r = run_process("run", plan, "--job", "ckpt", "--json", env=ENV)
        assert r.code == 0, r.err
        [job] = r.json()["jobs"] if "jobs" in r.json() else r.json()
        assert job["status"] == "ok", job
        assert job["copies"]["offsite"]["copied"] == 1
    main = _snapshots(tmp_path / "main", {})
    offsite = _snapshots(tmp_path / "offsite", {"BCDR_PASSWORD": "offsite-secret"})
    assert len(main) == 3
    # the offsite keeps its own retention (2), and holds the newest recovery points
    assert [s["original"] for s in offsite] == [s["id"] for s in main[-2:]]
    assert all(s["placement"]["region"] == "northeurope" for s in offsite)
    # status: the offsite holds the newest recovery point
    r = run_process("status", plan, "--json", env=ENV)
    assert r.code == 0, r.out + r.err
    [row] = [j for j in r.json()["jobs"] if j["job"] == "ckpt"]
    offsite_state = row["copies"]["offsite"]
    assert offsite_state["status"] == "ok" and offsite_state["lag_s"] == 0
    assert "copy in offsite: ok" in run_process("status", plan, env=ENV).out
    # the region-loss drill restores from the copy, and says so
    r = run_process("drill", plan, "--drill", "region-loss", "--json", env=ENV)
    assert r.code == 0, r.out + r.err
    doc = r.json()
    [drill] = doc if isinstance(doc, list) else doc.get("drills", [doc])
    assert drill["verdict"] == "pass" and drill["repository"] == "offsite"
    assert drill["recovery_point"] == main[-1]["id"]
    # the report: every recovery point reached the offsite within the RPO
    report = tmp_path / "report.json"
    r = run_process("report", plan, "--format", "json", "--out", report, env=ENV)
    assert r.code in (0, 4), r.err
    doc = json.loads(report.read_text())
    [job] = [j for j in doc["jobs"] if j["name"] == "ckpt"]
    [copies] = [c for c in job["controls"] if c["id"] == "copies"]
    assert _measured(copies) == "PASS", copies
    assert copies["details"]["recovery_points"] == 3 and copies["details"]["missing"] == 0
    assert [d["repository"] for d in job["drills"]] == ["offsite"]


def test_a_copy_that_failed_is_caught_up_by_the_next_run_and_reported(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    # the offsite's password is missing: the backup is saved, the copy fails
    r = run_process("run", plan, "--job", "ckpt", "--json", env={"BCDR_PASSWORD": ""})
    assert r.code == 1
    [job] = r.json()["jobs"] if "jobs" in r.json() else r.json()
    assert job["status"] == "failed" and "copy to 'offsite' failed" in job["message"]
    assert job["backup"]["snapshot"]
    missed = job["backup"]["snapshot"]
    report = tmp_path / "report.json"
    run_process("report", plan, "--format", "json", "--out", report, env=ENV)
    doc = json.loads(report.read_text())
    [ck] = [j for j in doc["jobs"] if j["name"] == "ckpt"]
    [copies] = [c for c in ck["controls"] if c["id"] == "copies"]
    # within its RPO the missing copy is pending, not yet a failure
    assert _measured(copies) == "PASS" and copies["details"]["pending"] == 1
    # the next run copies the new snapshot and the one the failed run missed
    (tmp_path / "tree" / "more.txt").write_text("more")
    r = run_process("run", plan, "--job", "ckpt", "--json", env=ENV)
    assert r.code == 0, r.err
    offsite = _snapshots(tmp_path / "offsite", {"BCDR_PASSWORD": "offsite-secret"})
    assert missed in [s["original"] for s in offsite] and len(offsite) == 2


def test_status_says_when_a_copy_is_behind(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    state = ["--state-dir", str(tmp_path / "state")]
    assert run_process("run", plan, "--job", "ckpt", *state, env=ENV).code == 0
    # the next backup's copy fails: the offsite stays at the first recovery point
    (tmp_path / "tree" / "more.txt").write_text("more")
    r = run_process("run", plan, "--job", "ckpt", *state, env={"BCDR_PASSWORD": ""})
    assert r.code == 1
    r = run_process("status", plan, "--json", *state, env=ENV)
    [row] = [j for j in r.json()["jobs"] if j["job"] == "ckpt"]
    assert row["copies"]["offsite"]["status"] == "ok"  # within the RPO yet
    # two days on (the history says the copy's newest point is that old): behind, exit 4
    with sqlite3.connect(tmp_path / "state" / "history.db") as db:
        db.execute("UPDATE copies SET recovery_point = ?", ("2026-01-01T00:00:00+00:00",))
    r = run_process("status", plan, "--json", *state, env=ENV)
    assert r.code == 4 and r.json()["copies_behind"] is True
    [row] = [j for j in r.json()["jobs"] if j["job"] == "ckpt"]
    assert row["copies"]["offsite"]["status"] == "behind"
    assert "copy in offsite: behind" in run_process("status", plan, *state, env=ENV).out


def test_residency_refuses_a_copy_destination_before_a_byte_moves(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path, offsite_region="eastus", residency="residency:\n  allowed_geographies: [Europe]"
    )
    r = run_process("validate", plan, env=ENV)
    assert r.code == 2
    assert "repositories.offsite" in r.out and "eastus" in r.out
    r = run_process("run", plan, "--job", "ckpt", env=ENV)
    assert r.code == 2
    assert not (tmp_path / "offsite").exists()


def test_plan_mistakes_in_copy_to_and_drill_repository(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    text = plan.read_text()
    cases = {
        "- repository: offsite": ("- repository: ofsite", "no repository named 'ofsite'"),
        "    copy_to:\n": (
            "    copy_to:\n      - main\n",
            "own repository is 'main'",
        ),
        "    repository: offsite\n    schedule: weekly": (
            "    repository: main2\n    schedule: weekly",
            "no repository named 'main2'",
        ),
    }
    for old, (new, message) in cases.items():
        assert old in text, old
        plan.write_text(text.replace(old, new))
        r = run_process("validate", plan, env=ENV)
        assert r.code == 2, (new, r.out)
        assert message in r.out, (new, r.out)
        assert "Traceback" not in r.err


COPY_JOB_PLAN = """\
version: 1
name: copyjob
timezone: UTC
repositories:
  main: {url: ./main, region: westeurope}
  offsite: {url: ./offsite, region: northeurope}
copies:
  offsite-copy:
    repository: main
    to:
      - repository: offsite
        retention: {keep_last: 1}
    jobs: [train]
    schedule: daily
    rpo: 26h
"""


def test_a_copies_job_copies_what_others_backed_up(tmp_path: Path) -> None:
    tree = write_tree(tmp_path / "tree", {"w.bin": random.Random(1).randbytes(100_000)})
    plan = tmp_path / "plan.yaml"
    plan.write_text(COPY_JOB_PLAN)
    main = tmp_path / "main"
    assert run_process("init", "--repo", main).code == 0
    for job in ("train", "train", "scratch"):  # made by hand, outside the plan
        (tree / "n.txt").write_text(job + str(len(_snapshots(main, {}))))
        assert run_process("backup", "--repo", main, "--job", job, tree).code == 0
    state = ["--state-dir", str(tmp_path / "state")]
    r = run_process("run", plan, "--json", *state)
    assert r.code == 0, r.out + r.err
    [job] = r.json()["jobs"] if "jobs" in r.json() else r.json()
    assert job["kind"] == "copy" and job["status"] == "ok", job
    assert job["message"] == "copied 2 snapshot(s) to 'offsite'"
    assert job["copies"]["offsite:train"]["copied"] == 2
    offsite = _snapshots(tmp_path / "offsite", {})
    trains = [s["id"] for s in _snapshots(main, {}) if s["job"] == "train"]
    # only job train (both copied), and of it what the offsite's retention keeps
    assert [s["original"] for s in offsite] == trains[-1:]
    # run again: nothing new, and the forgotten older one is not copied back
    r = run_process("run", plan, "--json", *state)
    assert r.code == 0, r.out + r.err
    assert len(_snapshots(tmp_path / "offsite", {})) == 1
    r = run_process("status", plan, "--json", *state)
    [row] = r.json()["jobs"]
    assert row["copies"]["offsite"]["status"] == "ok"
    # a new host: `schedule rebuild` reads the copy records back, and status shows the same
    other = ["--state-dir", str(tmp_path / "state2")]
    assert run_process("schedule", "rebuild", plan, *other).code == 0
    [again] = run_process("status", plan, "--json", *other).json()["jobs"]
    assert (
        again["copies"]["offsite"]["recovery_point"] == row["copies"]["offsite"]["recovery_point"]
    )
    report = tmp_path / "r.json"
    run_process("report", plan, "--format", "json", "--out", report)
    [ck] = json.loads(report.read_text())["jobs"]
    controls = {c["id"]: c for c in ck["controls"]}
    assert _measured(controls["result"]) == "PASS"
    # both train snapshots reached the offsite (retention there removed the older one later)
    assert controls["copies"]["details"]["recovery_points"] == 2
    assert _measured(controls["copies"]) == "PASS"
    assert controls["copies"]["details"]["missing"] == 0


def test_copies_control_judges_each_point_against_the_rpo() -> None:
    from datetime import UTC, datetime, timedelta

    from bcdr.compliance.controls import copies_control
    from bcdr.plan.types import Duration

    t0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    rpo = Duration(26 * 3600, "26h")
    points = [(t0, "a" * 64, "r1"), (t0 + timedelta(days=1), "b" * 64, "r2")]
    now = t0 + timedelta(days=1, hours=3)

    def status(held: dict[str, tuple[datetime, str]], target: Duration | None = rpo) -> dict:  # type: ignore[type-arg]
        return copies_control("j", target, points, {"off": held}, now)

    copied_fast = {"a" * 64: (t0 + timedelta(hours=1), "c1"), "b" * 64: (now, "c2")}
    assert status(copied_fast)["status"] == "PASS"
    # the newest not copied yet, within its RPO: pending
    c = status({"a" * 64: (t0 + timedelta(hours=1), "c1")})
    assert c["status"] == "PASS" and c["details"]["pending"] == 1
    # the first never copied, past its RPO: FAIL, named
    c = status({"b" * 64: (now, "c2")})
    assert c["status"] == "FAIL" and "aaaaaaaa" in c["summary"] and c["details"]["missing"] == 1
    # copied, but later than the RPO
    c = status({"a" * 64: (t0 + timedelta(hours=30), "c1"), "b" * 64: (now, "c2")})
    assert c["status"] == "FAIL" and c["details"]["late"] == 1
    # no RPO: a point must be copied once a newer one exists
    assert status({"b" * 64: (now, "c2")}, None)["status"] == "FAIL"
    assert status({"a" * 64: (now, "c1")}, None)["status"] == "PASS"
    assert copies_control("j", rpo, [], {"off": {}}, now)["status"] == "NO EVIDENCE"


def test_catching_up_is_per_job(tmp_path: Path) -> None:
    """A job's snapshots older than another job's newest in the destination are still
    copied when the destination holds none of theirs."""
    tree = write_tree(tmp_path / "tree", {"w.bin": random.Random(2).randbytes(50_000)})
    plan = tmp_path / "plan.yaml"
    main = tmp_path / "main"
    assert run_process("init", "--repo", main).code == 0
    for job in ("a", "b"):  # a's snapshot is the older
        (tree / "n.txt").write_text(job)
        assert run_process("backup", "--repo", main, "--job", job, tree).code == 0
    plan.write_text(COPY_JOB_PLAN.replace("jobs: [train]", "jobs: [b]"))
    state = ["--state-dir", str(tmp_path / "state")]
    assert run_process("run", plan, *state).code == 0
    assert [s["job"] for s in _snapshots(tmp_path / "offsite", {})] == ["b"]
    plan.write_text(COPY_JOB_PLAN.replace("    jobs: [train]\n", ""))  # every job now
    r = run_process("run", plan, *state)
    assert r.code == 0, r.out + r.err
    assert sorted(s["job"] for s in _snapshots(tmp_path / "offsite", {})) == ["a", "b"]
