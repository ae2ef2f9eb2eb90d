"""The job-kind registry (bcdr/plan/kinds.py) is the one list: every plan section of jobs is a
kind, and every kind has its runner, its report controls, its evidence and its place in `bcdr
plan`, `status` and `schedule rebuild`. A plan with a job of every kind, run, then read back on
a new host, shows each of them everywhere."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path

from bcdr.actions.run import RUNNERS
from bcdr.compliance.controls import JOB_CONTROLS
from bcdr.plan.kinds import KINDS
from bcdr.plan.model import Plan, Timing
from tests.arm_server import ArmServer
from tests.conftest import run_process, write_tree

TOKEN = "kinds-test-token-Q7"
SUB = "0b1f6471-1bf0-4dda-aec3-444455556666"


def test_every_section_of_jobs_is_a_kind_and_every_kind_has_every_part() -> None:
    hints = typing.get_type_hints(Plan)
    sections = {
        f.name
        for f in dataclasses.fields(Plan)
        if typing.get_origin(hints[f.name]) is dict
        and isinstance(typing.get_args(hints[f.name])[1], type)
        and issubclass(typing.get_args(hints[f.name])[1], Timing)
    }
    assert sections == {k.section for k in KINDS}, "a plan section of jobs without a kind"
    names = {k.name for k in KINDS}
    assert set(RUNNERS) == names, "actions/run.py RUNNERS lacks a kind (or has a stray one)"
    assert set(JOB_CONTROLS) == names, "compliance/controls.py JOB_CONTROLS lacks a kind"
    for k in KINDS:
        assert k.evidence and k.label and k.verb, k
        assert typing.get_args(hints[k.section])[1] is k.model, k


def test_plan_status_and_rebuild_show_every_kind(tmp_path: Path) -> None:
    (tmp_path / "arm").mkdir()
    with ArmServer(tmp_path / "arm", TOKEN) as arm:
        disk = arm.disk(SUB, "train-rg", "data1", location="westeurope")
        src = write_tree(tmp_path / "src", {"a.bin": os.urandom(30_000)})
        f = tmp_path / "plan.yaml"
        f.write_text(f"""\
version: 1
name: kinds
repositories:
  local: {{url: repo}}
  offsite: {{url: offsite}}
backups:
  b: {{paths: [{src}], repository: local, schedule: daily, rpo: 26h}}
snapshots:
  s:
    schedule: daily
    region: westeurope
    disks: [{disk}]
    token_env: BCDR_T_ARM
    evidence: local
    endpoint: {arm.url}
    rpo: 26h
drills:
  d: {{backup: b, schedule: weekly, rto: 1h}}
checks:
  c: {{repository: local, schedule: weekly}}
prunes:
  p: {{repository: local, schedule: weekly}}
copies:
  o: {{repository: local, to: [offsite], schedule: daily}}
""")
        env = {
            "BCDR_T_ARM": TOKEN,
            "REQUESTS_CA_BUNDLE": str(arm.ca_file),
            "BCDR_DISK_POLL_SECONDS": "0.01",
        }
        jobs = ["b", "s", "d", "c", "p", "o"]
        kinds = {
            "b": "backup",
            "s": "snapshot",
            "d": "drill",
            "c": "check",
            "p": "prune",
            "o": "copy",
        }

        r = run_process("plan", f, "--json", env=env)
        assert r.code == 0, r.err
        assert {j["name"]: j["kind"] for j in r.json()["jobs"]} == kinds
        text = run_process("plan", f, env=env).out
        assert "check c: checks local" in text and "prune p: prunes local" in text
        assert "copy o: copies local to offsite" in text

        r = run_process("run", f, "--state-dir", tmp_path / "host1", env=env)
        assert r.code == 0, r.out + r.err
        r = run_process("status", f, "--state-dir", tmp_path / "host1", "--json", env=env)
        first = {j["job"]: j for j in r.json()["jobs"]}
        assert set(first) == set(jobs) and all(first[j]["last_status"] == "ok" for j in jobs)

        # a new host: the history is read back from the repository, every kind of it
        r = run_process("schedule", "rebuild", f, "--state-dir", tmp_path / "host2", env=env)
        assert r.code == 0, r.out + r.err
        for j in jobs:
            assert f"kinds/{j}: 1 run(s) added from the repository" in r.out, r.out
        r = run_process("status", f, "--state-dir", tmp_path / "host2", "--json", env=env)
        rebuilt = {j["job"]: j for j in r.json()["jobs"]}
        for j in jobs:
            assert rebuilt[j]["kind"] == kinds[j] and rebuilt[j]["last_status"] == "ok", rebuilt[j]
        assert rebuilt["b"]["rpo_status"] == first["b"]["rpo_status"] == "ok"
        # a disk job's snapshots are its recovery points: its RPO is met (not "no recovery
        # point"), on the host that ran it and on a new one, and its metric is a real time
        assert first["s"]["rpo_status"] == rebuilt["s"]["rpo_status"] == "ok", first["s"]
        r = run_process("metrics", f, "--state-dir", tmp_path / "host1", env=env)
        point = 'bcdr_recovery_point_timestamp_seconds{job="s",kind="snapshot",plan="kinds"} '
        [line] = [ln for ln in r.out.splitlines() if ln.startswith(point)]
        assert float(line.split()[-1]) > 1.7e9
        # read back twice: nothing is added twice
        r = run_process("schedule", "rebuild", f, "--state-dir", tmp_path / "host2", env=env)
        assert "0 run(s) added to" in r.out, r.out
