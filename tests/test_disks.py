"""Managed-disk snapshot jobs: the real azure-mgmt-compute client against the stateful ARM
server of tests/arm_server.py (long-running operations, CopyStart progress, paging, 429s),
through `bcdr run`, `bcdr tick` and `bcdr disk-snapshots` as users run them, and through the
Python API where a test needs a fake clock."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from bcdr.actions.common import open_repo
from bcdr.actions.disks import EVIDENCE_KIND, disk_job, list_recovery_points, run_disk_job
from bcdr.clock import FakeClock
from bcdr.compliance.evidence import read_records
from bcdr.compliance.records import DiskSnapshotFacts, to_document, typed
from bcdr.disks.job import resource_name
from bcdr.disks.restore import delete_restored, restore_disk
from bcdr.errors import UsageError
from bcdr.plan.loader import load_plan
from tests.arm_server import ArmServer
from tests.conftest import Result, run_process

TOKEN = "disk-test-token-Zx81"
SUB = "0b1f6471-1bf0-4dda-aec3-111122223333"
RG = "train-rg"


@pytest.fixture
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmServer]:
    with ArmServer(tmp_path, TOKEN) as server:
        for k, v in _env(server).items():
            monkeypatch.setenv(k, v)
        yield server


def _env(arm: ArmServer) -> dict[str, str]:
    return {
        "BCDR_T_ARM": TOKEN,
        "REQUESTS_CA_BUNDLE": str(arm.ca_file),
        "BCDR_DISK_POLL_SECONDS": "0.01",
    }


def _plan(
    tmp_path: Path,
    arm: ArmServer,
    disks: list[str],
    *,
    region: str = "westeurope",
    extra: str = "",
    copy_to: str = "[northeurope]",
) -> Path:
    f = tmp_path / "plan.yaml"
    listed = "".join(f"\n      - {d}" for d in disks)
    f.write_text(f"""\
version: 1
name: gpu
repositories:
  local: {{url: repo, region: westeurope}}
residency:
  allowed_geographies: [Europe]
snapshots:
  scratch:
    schedule: daily
    region: {region}
    disks:{listed}
    copy_to: {copy_to}
    token_env: BCDR_T_ARM
    endpoint: {arm.url}
{extra}""")
    return f


def _bcdr(arm: ArmServer, *args: object) -> Result:
    r = run_process(*args, env=_env(arm))
    assert TOKEN not in r.out + r.err, "the token leaked"
    assert "Traceback" not in r.err, r.err
    return r


def _snapshots(arm: ArmServer, region: str | None = None) -> list[dict[str, Any]]:
    docs = arm.of_type("snapshots")
    return sorted(
        (d for d in docs if region is None or d["location"] == region),
        key=lambda d: d["properties"]["timeCreated"],
    )


def _puts(arm: ArmServer, kind: str) -> list[str]:
    return [p for (m, p, _) in arm.requests if m == "PUT" and f"/{kind}/" in p]


def test_run_snapshots_copies_records_evidence_and_lists(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope", size_gb=128)
    d2 = arm.disk(SUB, RG, "data2", location="westeurope")
    f = _plan(tmp_path, arm, [d1, d2])
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 0, r.out + r.err
    assert "snapshot scratch: ok — 2 of 2 disk(s) protected" in r.out
    assert "data1: protected, snapshot data1-scratch-" in r.out
    assert "copy to northeurope done" in r.out
    assert "copy to northeurope" in r.err  # progress lines

    sources, copies = _snapshots(arm, "westeurope"), _snapshots(arm, "northeurope")
    assert len(sources) == 2 and len(copies) == 2
    for s in sources:
        props = s["properties"]
        assert props["creationData"]["createOption"] == "Copy"
        assert props["creationData"]["sourceResourceId"] in (d1, d2)
        assert props["incremental"] is True and props["provisioningState"] == "Succeeded"
        assert s["tags"]["bcdr-plan"] == "gpu" and s["tags"]["bcdr-job"] == "scratch"
        assert s["tags"]["bcdr-disk"] == props["creationData"]["sourceResourceId"]
    for c in copies:
        props = c["properties"]
        assert props["creationData"]["createOption"] == "CopyStart"
        assert props["completionPercent"] == 100
        assert props["creationData"]["sourceResourceId"] in {s["id"] for s in sources}
    # the SDK followed Azure-AsyncOperation, and the copy was read until it reached 100%
    assert sum(1 for (m, p, _) in arm.requests if m == "GET" and "/operations/" in p) >= 4
    copy_reads = [p for (m, p, _) in arm.requests if m == "GET" and p.endswith(copies[0]["name"])]
    assert len(copy_reads) >= 3

    repo = open_repo(str(tmp_path / "repo"))
    [record] = typed(read_records(repo, EVIDENCE_KIND), DiskSnapshotFacts)
    facts = record.facts
    assert facts.job == "scratch" and facts.status == "ok"
    by_disk = {d.disk: d for d in facts.disks or []}
    assert by_disk[d1].recovery_point in {s["id"] for s in sources}
    assert by_disk[d1].region == "westeurope"
    [copy] = by_disk[d1].copies
    assert copy.region == "northeurope" and copy.state == "done"
    assert copy.percent == 100 and copy.snapshot in {c["id"] for c in copies}
    assert facts.started and facts.finished

    r = _bcdr(arm, "disk-snapshots", f, "--json")
    assert r.code == 0, r.err
    rows = r.json()["recovery_points"]
    assert {(x["disk"], x["kind"], x["region"], x["state"]) for x in rows} == {
        ("data1", "snapshot", "westeurope", "ready"),
        ("data1", "copy", "northeurope", "ready"),
        ("data2", "snapshot", "westeurope", "ready"),
        ("data2", "copy", "northeurope", "ready"),
    }
    assert all(x["age_s"] is not None and x["age_s"] >= 0 for x in rows)
    text = _bcdr(arm, "disk-snapshots", f).out
    assert "KIND" in text and "copy" in text and "northeurope" in text


def test_tick_runs_a_due_disk_job(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    r = _bcdr(arm, "tick", f, "--state-dir", tmp_path / "state", "--summary")
    assert r.code == 0, r.out + r.err
    assert "snapshot gpu/scratch: ok" in r.out
    assert len(_snapshots(arm)) == 1


def test_dry_run_calls_nothing(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    r = _bcdr(arm, "run", _plan(tmp_path, arm, [d1]), "--dry-run")
    assert r.code == 0, r.err
    assert "would take incremental snapshots of 1 disk(s) in westeurope" in r.out
    assert arm.requests == []


def test_one_failing_disk_is_reported_without_hiding_the_others(
    tmp_path: Path, arm: ArmServer
) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    d2 = arm.disk(SUB, RG, "data2", location="westeurope")
    arm.fail_snapshot_of[d2.lower()] = ("InternalDiskManagementError", "Disk is being updated.")
    f = _plan(tmp_path, arm, [d1, d2], copy_to="[]")
    r = _bcdr(arm, "run", f, "--job", "scratch", "--json")
    assert r.code == 3, r.out + r.err  # partial: some disks protected
    [job] = r.json()["jobs"]
    assert job["status"] == "partial" and "1 of 2 disk(s) protected (data1)" in job["message"]
    disks = {d["name"]: d for d in job["disks"]["disks"]}
    assert disks["data1"]["status"] == "protected"
    assert disks["data2"]["status"] == "failed"
    assert "InternalDiskManagementError" in disks["data2"]["error"]
    assert "Disk is being updated" in disks["data2"]["error"]
    # the failed snapshot was removed, the good one stays
    assert [s["properties"]["creationData"]["sourceResourceId"] for s in _snapshots(arm)] == [d1]

    arm.fail_snapshot_of.clear()
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 0 and "2 of 2 disk(s) protected" in r.out


def test_copies_go_in_creation_order_one_at_a_time_and_resume(
    tmp_path: Path, arm: ArmServer
) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], extra="    timeout: 1s\n")
    plan = load_plan(f)
    clock = FakeClock(datetime(2026, 11, 1, 2, 0, tzinfo=UTC))

    arm.stall_copies = True  # the first copy does not finish within the timeout
    report = run_disk_job(plan, "scratch", clock).report
    [disk] = report.disks
    assert disk.status == "partial" and disk.recovery_point is not None
    [copy] = disk.copies
    assert copy.state == "copying" and "the next run waits for it" in (copy.error or "")

    clock.advance(timedelta(days=1))
    report = run_disk_job(plan, "scratch", clock).report  # copy still stalled: no second copy
    [disk] = report.disks
    assert [c.state for c in disk.copies] == ["copying"]
    assert len(_puts(arm, "snapshots")) == 3  # 2 snapshots, 1 copy: nothing started beside it

    arm.stall_copies = False
    clock.advance(timedelta(days=1))
    report = run_disk_job(plan, "scratch", clock).report
    [disk] = report.disks
    assert disk.status == "protected"
    # the running copy first, then every snapshot after it, oldest first
    assert [c.state for c in disk.copies] == ["done", "done", "done"]
    sources = [s["id"] for s in _snapshots(arm, "westeurope")]
    assert [c.source for c in disk.copies] == sources
    copies = _snapshots(arm, "northeurope")
    assert [c["properties"]["creationData"]["sourceResourceId"] for c in copies] == sources
    # the server refuses a second concurrent copy or an out-of-order one with 409: none came
    assert not [x for x in arm.log if x[3] == 409]


def test_a_failed_copy_is_reported_then_cleaned_and_redone(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1])
    arm.fail_copy_to.add("northeurope")
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 3, r.out + r.err
    assert "copy to northeurope failed (CopySourceNotFound" in r.out
    r = _bcdr(arm, "disk-snapshots", f)
    assert "failed: CopySourceNotFound" in r.out

    arm.fail_copy_to.clear()
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 0, r.out + r.err
    assert "retention removed 1" in r.out  # the failed copy
    # no copy ever completed there: the region starts from the newest snapshot
    [copy] = _snapshots(arm, "northeurope")
    assert copy["properties"]["completionPercent"] == 100
    assert not copy["properties"].get("copyCompletionError")
    newest = _snapshots(arm, "westeurope")[-1]["id"]
    assert copy["properties"]["creationData"]["sourceResourceId"] == newest


def test_throttling_is_retried_honouring_retry_after(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    arm.throttle("PUT", r"/snapshots/", times=4, retry_after=1)
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 0, r.out + r.err
    puts = [(t, status) for (t, m, p, status) in arm.log if m == "PUT"]
    assert [s for _, s in puts] == [429, 429, 429, 429, 202]
    gaps = [b[0] - a[0] for a, b in zip(puts, puts[1:], strict=False)]
    assert all(g >= 0.9 for g in gaps), gaps  # each retry waited the Retry-After second


def test_retention_per_disk_and_region_with_paging(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    d2 = arm.disk(SUB, RG, "data2", location="westeurope")
    f = _plan(tmp_path, arm, [d1, d2], extra="    retention: {keep_last: 2}\n")
    plan = load_plan(f)
    clock = FakeClock(datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
    for _ in range(4):
        report = run_disk_job(plan, "scratch", clock).report
        assert report.status == "ok", report
        clock.advance(timedelta(days=1))
    for region in ("westeurope", "northeurope"):
        kept = _snapshots(arm, region)
        assert len(kept) == 4  # 2 disks x keep_last 2
        assert {s["tags"]["bcdr-time"][:10] for s in kept} == {"2026-11-03", "2026-11-04"}
    [disk, _] = report.disks
    assert len(disk.removed) == 2  # the oldest source and its copy, in the last run
    assert {cast(list[str], r["reasons"])[0] for r in disk.removed} == {
        "not kept by the retention policy"
    }
    assert any("last #1" in cast(list[str], k["reasons"]) for k in disk.kept)
    # 8 snapshots listed with 2 per page: the listing followed nextLink
    assert len(list_recovery_points(plan, [], clock)) == 8


def test_azure_limit_of_500_per_disk(
    tmp_path: Path, arm: ArmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcdr.disks.job as job_module

    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    plan = load_plan(f)
    clock = FakeClock(datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
    monkeypatch.setattr(job_module, "MAX_DISK_SNAPSHOTS", 3)  # the server's limit too
    arm.snapshot_limit = 3
    for _ in range(3):
        assert run_disk_job(plan, "scratch", clock).report.status == "ok"
        clock.advance(timedelta(hours=1))
    [disk] = run_disk_job(plan, "scratch", clock).report.disks
    assert disk.status == "failed"
    assert "has 3 incremental snapshots from this job; Azure allows 3 per disk" in (
        disk.error or ""
    )
    assert len(_snapshots(arm)) == 3  # nothing was attempted past the limit


def test_wrong_region_is_refused_before_anything_is_created(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="swedencentral")
    r = _bcdr(arm, "run", _plan(tmp_path, arm, [d1]), "--job", "scratch")
    assert r.code == 1
    assert "disk data1 is in swedencentral, but the plan says its region is westeurope" in r.out
    assert _puts(arm, "snapshots") == []


def test_plan_rules_for_disk_jobs(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    outside = _bcdr(arm, "validate", _plan(tmp_path, arm, [d1], copy_to="[eastus]"))
    assert outside.code == 2 and "snapshots.scratch.copy_to" in outside.out
    f = _plan(
        tmp_path,
        arm,
        [d1, d1],
        copy_to="[westeurope]",
        extra="    consistency: application\n    retention: {keep_daily: 400, keep_weekly: 200}\n",
    )
    r = _bcdr(arm, "validate", f)
    assert r.code == 2
    assert "this disk is listed twice" in r.out
    assert "westeurope is the disks' own region" in r.out
    assert "copies of application-consistent restore points are not supported yet" in r.out
    assert "may keep 600 snapshots per disk; Azure allows 500" in r.out


def test_application_consistent_restore_point_covers_the_vms_disks(
    tmp_path: Path, arm: ArmServer
) -> None:
    os_disk = arm.disk(SUB, RG, "vm1-os", location="westeurope", size_gb=32)
    data1 = arm.disk(SUB, RG, "vm1-data1", location="westeurope", size_gb=256)
    data2 = arm.disk(SUB, RG, "vm1-data2", location="westeurope", size_gb=256)
    arm.vm(SUB, RG, "vm1", location="westeurope", disks=[os_disk, data1, data2])
    f = _plan(
        tmp_path,
        arm,
        [data1, data2],
        copy_to="[]",
        extra="    consistency: application\n    retention: {keep_last: 1}\n",
    )
    plan = load_plan(f)
    clock = FakeClock(datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
    report = run_disk_job(plan, "scratch", clock).report
    assert report.status == "ok", report
    [put] = [
        p for (m, p, _) in arm.requests if m == "PUT" and "/restorePoints/" in p
    ]  # one restore point for both disks
    [point] = arm.of_type("restorePoints")
    assert point["properties"]["consistencyMode"] == "ApplicationConsistent"
    assert [e["id"] for e in point["properties"]["excludeDisks"]] == [os_disk]
    assert {d.kind for d in report.disks} == {"restore point"}
    assert all("/diskRestorePoints/" in (d.recovery_point or "") for d in report.disks)

    clock.advance(timedelta(days=1))
    report = run_disk_job(plan, "scratch", clock).report
    assert report.status == "ok"
    assert len(arm.of_type("restorePoints")) == 1  # keep_last 1: yesterday's was deleted
    assert len(report.disks[0].removed) == 1
    rows = list_recovery_points(plan, [], clock)
    assert {(r.disk, r.kind, r.state) for r in rows} == {
        ("vm1-data1", "restore point", "ready"),
        ("vm1-data2", "restore point", "ready"),
    }

    runner = disk_job(plan, "scratch", clock)
    restored = restore_disk(runner, data1, "westeurope")
    made = arm.resources[restored.id.lower()]
    assert made["properties"]["creationData"]["createOption"] == "Restore"
    assert restored.size_gb == 256 and restored.size_ok
    delete_restored(runner, restored)
    assert restored.id.lower() not in arm.resources


def test_restore_a_disk_from_the_copy_in_another_region_then_delete_it(
    tmp_path: Path, arm: ArmServer
) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope", size_gb=512)
    f = _plan(tmp_path, arm, [d1])
    plan = load_plan(f)
    clock = FakeClock(datetime(2026, 11, 1, 2, 0, tzinfo=UTC))
    run_disk_job(plan, "scratch", clock)
    clock.advance(timedelta(days=1))
    run_disk_job(plan, "scratch", clock)
    runner = disk_job(plan, "scratch", clock)

    restored = restore_disk(runner, d1, "northeurope")
    made = arm.resources[restored.id.lower()]
    newest_copy = _snapshots(arm, "northeurope")[-1]
    assert made["location"] == "northeurope"
    assert made["properties"]["creationData"] == {
        "createOption": "Copy",
        "sourceResourceId": newest_copy["id"],
    }
    assert made["properties"]["provisioningState"] == "Succeeded"
    assert restored.size_gb == 512 and restored.size_ok and restored.seconds >= 0
    assert restored.point_time.startswith("2026-11-02")
    delete_restored(runner, restored)
    assert restored.id.lower() not in arm.resources and restored.deleted

    with pytest.raises(UsageError, match="no complete recovery point in swedencentral"):
        restore_disk(runner, d1, "swedencentral")


def test_operation_timeout_and_bad_token_are_clear(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]", extra="    timeout: 1s\n")
    arm.lro_polls = 10**6
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 1
    assert "snapshot of data1 did not finish within 1s" in r.out

    arm.lro_polls = 2
    env = {**_env(arm), "BCDR_T_ARM": "expired-token"}
    r = run_process("run", f, "--job", "scratch", env=env)
    assert r.code == 1 and "Traceback" not in r.err
    assert "refused to read disk data1 (InvalidAuthenticationToken)" in r.out
    assert "expired-token" not in r.out + r.err


@pytest.mark.parametrize("bad", ["-1", "soon", "nan", "7200"])
def test_a_bad_poll_interval_is_refused_before_any_snapshot(
    tmp_path: Path, arm: ArmServer, bad: str
) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    r = run_process("run", f, "--job", "scratch", env={**_env(arm), "BCDR_DISK_POLL_SECONDS": bad})
    assert r.code != 0 and "Traceback" not in r.err
    assert f"BCDR_DISK_POLL_SECONDS={bad!r} is not a number of seconds between 0 and 3600" in (
        r.out + r.err
    )
    assert _puts(arm, "snapshots") == []  # refused before anything was asked of Azure


def test_resource_names_follow_azures_rules() -> None:
    name = resource_name("d" * 100, "job", "20261123T020000Z", "northeurope")
    assert len(name) == 80 and name.endswith("-job-20261123T020000Z-northeurope")
    assert resource_name("disk 1", "j") == "disk-1-j"


def test_evidence_keeps_no_secret(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    assert _bcdr(arm, "run", f, "--job", "scratch").code == 0
    repo = open_repo(str(tmp_path / "repo"))
    records = list(read_records(repo, EVIDENCE_KIND))
    assert records and TOKEN not in json.dumps([to_document(r) for r in records])
    assert os.environ.get("BCDR_T_ARM") == TOKEN  # the fixture's token was the one in use


def test_disk_snapshots_command_errors(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1])
    r = _bcdr(arm, "disk-snapshots", f, "--job", "nope")
    assert r.code == 2 and "no job named 'nope'" in r.err
    bare = tmp_path / "bare.yaml"
    bare.write_text("version: 1\nname: bare\nrepositories:\n  local: {url: repo}\n")
    r = _bcdr(arm, "disk-snapshots", bare)
    assert r.code == 2 and "the plan has no disk snapshot jobs" in r.err
    r = _bcdr(arm, "disk-snapshots", f)
    assert r.code == 0 and "no recovery points yet" in r.out


def test_the_report_covers_disk_jobs(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], extra="    rpo: 26h\n    retention: {keep_last: 3}\n")
    assert _bcdr(arm, "run", f, "--job", "scratch").code == 0
    r = _bcdr(arm, "report", f, "--format", "json")
    assert r.code == 0, r.out + r.err
    [job] = [j for j in r.json()["jobs"] if j["name"] == "scratch"]
    # evidence of seconds in a 90-day window: NO EVIDENCE, PASS over the part it covers
    controls = {c["id"]: c for c in job["controls"]}
    covered = {k: c["details"].get("covered_status", c["status"]) for k, c in controls.items()}
    assert controls["rpo"]["status"] == "NO EVIDENCE"
    assert covered["rpo"] == "PASS" and covered["copies"] == "PASS"
    assert controls["residency"]["details"]["regions"] == ["northeurope", "westeurope"]
    assert controls["rto"]["status"] == "NO EVIDENCE"  # no disk drill in this plan
    assert [e["type"] for e in job["timeline"]] == ["recovery_point"]

    arm.fail_copy_to.add("northeurope")
    assert _bcdr(arm, "run", f, "--job", "scratch").code == 3
    r = _bcdr(arm, "report", f, "--format", "json")
    assert r.code == 4  # the newest run's copy failed: the copies control fails
    [job] = [j for j in r.json()["jobs"] if j["name"] == "scratch"]
    copies = [c for c in job["controls"] if c["id"] == "copies"][0]
    assert copies["status"] == "FAIL" and "data1 to northeurope: failed" in copies["summary"]


def _kind(path: str) -> str:
    """The kind of ARM call a path is: the resource type, or operations for polls."""
    parts = path.lower().strip("/").split("/")
    return "operations" if "operations" in parts else parts[-2] if len(parts) >= 2 else path


def test_429_and_500_on_every_call_and_every_poll_are_retried(
    tmp_path: Path, arm: ArmServer
) -> None:
    # snapshots with a copy to another region (PUT, CopyStart, polls, reads, lists), then a disk
    # drill (PUT disk, polls, DELETE): each distinct request first gets a 429, then a 500
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(
        tmp_path,
        arm,
        [d1],
        extra="    rpo: 26h\n",
    )
    f.write_text(
        f.read_text()
        + "drills:\n  dr:\n    snapshot: scratch\n    schedule: weekly\n    rto: 30m\n"
        "    scratch_region: northeurope\n"
    )
    arm.flaky_everywhere((429, 500))
    r = _bcdr(arm, "run", f, "--job", "scratch")
    assert r.code == 0, r.out + r.err
    r = _bcdr(arm, "drill", f)
    assert r.code == 0, r.out + r.err
    failed: dict[tuple[str, str], list[int]] = {}
    for _, method, path, status in arm.log:
        failed.setdefault((method, _kind(path)), []).append(status)
    kinds = {k for k, statuses in failed.items() if 429 in statuses and 500 in statuses}
    assert {
        ("PUT", "snapshots"),
        ("GET", "snapshots"),
        ("GET", "operations"),
        ("PUT", "disks"),
        ("DELETE", "disks"),
    } <= kinds, sorted(failed.items())
    for statuses in failed.values():  # every kind ended in success
        assert statuses[-1] < 400, statuses


def test_a_job_fails_only_after_the_retry_budget(tmp_path: Path, arm: ArmServer) -> None:
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    arm.throttle("PUT", r"/snapshots/", times=1000, retry_after=1, status=503)
    started = time.monotonic()
    r = run_process("run", f, "--job", "scratch", "--retry-budget", "4s", env=_env(arm))
    took = time.monotonic() - started
    assert r.code in (1, 3), r.out + r.err
    assert 3.5 <= took < 60, took
    assert "503" in r.out + r.err
    assert "waiting for Resource Manager: PUT snapshots/" in r.err, r.err
    puts = [s for (_, m, p, s) in arm.log if m == "PUT" and "/snapshots/" in p]
    assert len(puts) >= 3 and set(puts) == {503}


def test_a_default_credential_without_a_token_says_so(
    tmp_path: Path, arm: ArmServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the default chain, given a loopback identity endpoint that answers nothing (never IMDS)
    d1 = arm.disk(SUB, RG, "data1", location="westeurope")
    f = _plan(tmp_path, arm, [d1], copy_to="[]")
    f.write_text(f.read_text().replace("    token_env: BCDR_T_ARM\n", ""))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    env = {
        **_env(arm),
        "IDENTITY_ENDPOINT": f"http://127.0.0.1:{closed}/msi/token",
        "IDENTITY_HEADER": "loopback",
        "AZURE_CONFIG_DIR": str(tmp_path / "no-az"),
        "PATH": "/usr/bin:/bin",
    }
    r = run_process("run", f, "--job", "scratch", "--retry-budget", "2s", env=env)
    assert r.code != 0, r.out + r.err
    said = r.out + r.err
    assert "no Azure identity could get a Resource Manager token" in said, said
    assert "Reader role" not in said and "Traceback" not in r.err
