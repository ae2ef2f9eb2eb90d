"""Drills as users run them (`bcdr drill`, the scheduler) and through the Python API where time
must be injected: a good repository passes; a corrupted pack fails with exit 4 naming the file;
a too-tight RTO and an old recovery point fail; samples replay with their seed; drift on the
source is reported, not failed; disk drills make a disk from the newest copy and delete it."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from bcdr.actions.common import open_repo
from bcdr.actions.disks import run_disk_job
from bcdr.actions.drill import EVIDENCE_KIND, run_drill
from bcdr.actions.run import run_job
from bcdr.actions.snapshots import walk
from bcdr.clock import FakeClock
from bcdr.compliance.evidence import read_records
from bcdr.compliance.records import DrillFacts, typed
from bcdr.plan.loader import load_plan
from bcdr.repository.repo import Repository
from bcdr.repository.tree import Node
from tests.arm_server import ArmServer
from tests.conftest import run_process, write_tree

FILES = {f"run1/step-{i:03d}.bin": os.urandom(20_000 + i * 1000) for i in range(20)}


def _plan(tmp_path: Path, drill: str = "", rpo: str = "26h") -> Path:
    write_tree(tmp_path / "ckpt", FILES)
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: drills
repositories:
  local: {{url: repo}}
backups:
  ckpt:
    paths: [ckpt]
    repository: local
    schedule: daily
    rpo: {rpo}
drills:
  restore-ckpt:
    backup: ckpt
    schedule: weekly
    rto: 15m
    scratch: scratch
{drill}""")
    return f


def _files(repo: Repository, tree: bytes) -> list[tuple[bytes, Node]]:
    return list(walk(repo, tree))


def _backup(f: Path) -> None:
    r = run_process("run", f, "--job", "ckpt", "--state-dir", f.parent / "state")
    assert r.code == 0, r.out + r.err


def test_a_drill_passes_on_a_good_repository_and_records_evidence(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _backup(f)
    r = run_process("drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [report] = r.json()["drills"]
    assert report["verdict"] == "pass" and report["reasons"] == []
    assert report["files_verified"] == len(FILES) == report["files_total"]
    assert report["bytes_verified"] == sum(len(v) for v in FILES.values())
    assert report["rto_s"] is not None and report["rto_target"] == "15m"
    assert report["ttfb_s"] is not None and report["ttfb_s"] <= report["rto_s"]
    assert set(report["phases"]) == {"open", "select", "restore", "verify", "cleanup"}
    assert report["rpo_target"] == "26h" and 0 <= report["rpo_s"] < 3600
    assert list((tmp_path / "scratch").iterdir()) == []  # cleaned up

    repo = open_repo(str(tmp_path / "repo"))
    [record] = typed(read_records(repo, EVIDENCE_KIND), DrillFacts)
    facts = record.facts
    assert facts.verdict == "pass" and facts.seed == report["seed"]
    assert facts.snapshot == report["snapshot"] and facts.bytes_verified > 0

    text = run_process("drill", f).out
    assert "drill restore-ckpt: PASS" in text
    assert "RTO" in text and "(target 15m, met)" in text and "(target 26h, met)" in text


def test_a_corrupted_pack_fails_the_drill_with_exit_4_naming_the_file(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _backup(f)
    victim = tmp_path / "ckpt" / "run1" / "step-005.bin"
    repo = open_repo(str(tmp_path / "repo"))
    repo.load_index()
    [node] = [
        n
        for p, n in _files(repo, bytes.fromhex(repo.list_snapshots("ckpt")[-1].tree))
        if p == os.fsencode(victim)
    ]
    loc = repo.index.lookup(node.content[0])
    assert loc is not None
    pack = tmp_path / "repo" / "data" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0xFF  # inside that file's only chunk
    pack.write_bytes(bytes(data))
    r = run_process("drill", f)
    assert r.code == 4, r.out + r.err
    assert "drill restore-ckpt: FAIL" in r.out
    assert "1 restored item(s) failed verification" in r.out
    assert f"{victim}:" in r.out  # named, with the reason
    assert "Traceback" not in r.err


def test_a_too_tight_rto_fails(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _backup(f)
    # a slow restore, told by the timer: every phase boundary is 45 s after the last
    ticks = itertools.count(0, 45)
    report = run_drill(load_plan(f), "restore-ckpt", timer=lambda: float(next(ticks)))
    assert report.rto_s == 4 * 45  # open, select, restore, verify
    assert report.verdict == "pass"  # 3 minutes is within 15m
    f.write_text(f.read_text().replace("rto: 15m", "rto: 2m"))
    ticks = itertools.count(0, 45)
    report = run_drill(load_plan(f), "restore-ckpt", timer=lambda: float(next(ticks)))
    assert report.verdict == "fail"
    assert report.reasons == ["RTO missed: the restore took 3.0m, the target is 2m"]
    assert report.files_verified == len(FILES)  # the data was fine; only the time was not


def test_rpo_is_measured_with_an_injected_clock(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _backup(f)
    plan = load_plan(f)
    snap_time = open_repo(str(tmp_path / "repo")).list_snapshots("ckpt")[-1].datetime
    report = run_drill(plan, "restore-ckpt", clock=FakeClock(snap_time + timedelta(hours=2)))
    assert report.verdict == "pass" and report.rpo_s == 7200
    report = run_drill(plan, "restore-ckpt", clock=FakeClock(snap_time + timedelta(hours=30)))
    assert report.verdict == "fail" and report.rpo_s == 30 * 3600
    assert report.reasons == ["RPO missed: the recovery point is 1.2d old, the target is 26h"]


def test_a_sampled_drill_restores_a_share_and_replays_with_its_seed(tmp_path: Path) -> None:
    f = _plan(tmp_path, drill="    sample: 25%\n")
    _backup(f)
    r = run_process("drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [first] = r.json()["drills"]
    assert first["files_selected"] == 5 == first["files_verified"] and first["files_total"] == 20
    again = run_process("drill", f, "--json", "--seed", str(first["seed"])).json()["drills"][0]
    assert again["sample_digest"] == first["sample_digest"]
    assert again["bytes_verified"] == first["bytes_verified"]
    others = {
        run_process("drill", f, "--json", "--seed", str(s)).json()["drills"][0]["sample_digest"]
        for s in (1, 2, 3)
    }
    assert len(others | {first["sample_digest"]}) > 1  # the seed decides the choice


def test_compare_source_reports_drift_without_failing(tmp_path: Path) -> None:
    f = _plan(tmp_path, drill="    compare_source: true\n    keep: true\n")
    _backup(f)
    victim = tmp_path / "ckpt" / "run1" / "step-003.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x01  # bit rot: same size, same mtime
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    (tmp_path / "ckpt" / "run1" / "step-004.bin").write_bytes(b"changed legitimately")
    r = run_process("drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [report] = r.json()["drills"]
    assert report["verdict"] == "pass"
    assert [d["path"] for d in report["drift"]] == [str(victim)]
    assert report["source_compared"] == len(FILES) - 1  # the changed file is not comparable
    kept = Path(report["scratch"])
    assert (
        report["kept"]
        and (kept / str(victim).lstrip("/")).read_bytes() == FILES["run1/step-003.bin"]
    )


def test_drill_errors_are_clear(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    r = run_process("drill", f)  # no backup yet
    assert r.code == 1 and "does not exist yet: nothing to drill" in r.out
    r = run_process("drill", f, "--drill", "restore-ckpts")
    assert r.code == 2 and "restore-ckpt" in r.err and "Traceback" not in r.err
    bare = tmp_path / "bare.yaml"
    bare.write_text("version: 1\nname: bare\nrepositories:\n  local: {url: repo}\n")
    r = run_process("drill", bare)
    assert r.code == 2 and "the plan has no drills" in r.err


def test_the_scheduler_runs_drills_and_reports_a_failure(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    state = tmp_path / "state"
    r = run_process("tick", f, "--state-dir", state, "--summary")
    assert r.code == 0, r.out + r.err
    assert "backup drills/ckpt: ok" in r.out and "drill drills/restore-ckpt: ok" in r.out
    result = run_job(load_plan(f), "restore-ckpt", clock=_clock_after(f, days=3))
    assert result.status == "failed" and "RPO missed" in result.message


def _clock_after(f: Path, days: int) -> FakeClock:
    snap = open_repo(str(f.parent / "repo")).list_snapshots("ckpt")[-1].datetime
    return FakeClock(snap + timedelta(days=days))


# --- disk drills -----------------------------------------------------------------------------

TOKEN = "drill-arm-token-Q7"
SUB = "0b1f6471-1bf0-4dda-aec3-444455556666"


@pytest.fixture
def arm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ArmServer]:
    with ArmServer(tmp_path, TOKEN) as server:
        monkeypatch.setenv("BCDR_T_ARM", TOKEN)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.ca_file))
        monkeypatch.setenv("BCDR_DISK_POLL_SECONDS", "0.01")
        yield server


def test_disk_drill_makes_a_disk_from_the_newest_copy_and_deletes_it(
    tmp_path: Path, arm: ArmServer
) -> None:
    d1 = arm.disk(SUB, "rg", "data1", location="westeurope", size_gb=256)
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: diskdrill
repositories:
  local: {{url: repo, region: westeurope}}  # evidence records only; a residency rule needs it
residency:
  allowed_geographies: [Europe, France]
snapshots:
  scratch:
    schedule: daily
    region: westeurope
    disks: [{d1}]
    copy_to: [northeurope]
    rpo: 26h
    token_env: BCDR_T_ARM
    endpoint: {arm.url}
drills:
  dr-northeurope:
    snapshot: scratch
    schedule: weekly
    rto: 30m
    scratch_region: northeurope
  dr-france:
    snapshot: scratch
    schedule: weekly
    rto: 30m
    scratch_region: francecentral
""")
    plan = load_plan(f)
    assert run_disk_job(plan, "scratch").report.status == "ok"
    report = run_drill(plan, "dr-northeurope")
    assert report.verdict == "pass", report.reasons
    [made] = report.restored_disks
    assert made["region"] == "northeurope" and made["size_gb"] == 256 and made["deleted"]
    assert (
        made["source"]
        == [s for s in arm.of_type("snapshots") if s["location"] == "northeurope"][0]["id"]
    )
    assert [d["id"] for d in arm.of_type("disks")] == [d1]  # the trial disk is gone
    assert [p for (m, p, _) in arm.requests if m == "DELETE" and "/disks/" in p] == [made["id"]]
    assert report.rpo_s is not None and report.rpo_target == "26h"

    r = run_process("drill", f, "--drill", "dr-france")
    assert r.code == 4, r.out + r.err
    assert "no complete recovery point in francecentral" in r.out and d1 in r.out


def test_an_unreadable_folder_listing_fails_the_drill_and_is_named(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _backup(f)
    repo = open_repo(str(tmp_path / "repo"))
    repo.load_index()
    run1 = os.fsencode(tmp_path / "ckpt" / "run1")
    tree = bytes.fromhex(repo.list_snapshots("ckpt")[-1].tree)
    [node] = [n for p, n in walk(repo, tree) if p == run1]
    assert node.subtree is not None
    loc = repo.index.lookup(node.subtree)
    assert loc is not None
    pack = tmp_path / "repo" / "data" / loc.pack[:2] / loc.pack
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    r = run_process("drill", f, "--json")
    assert r.code == 4, r.out + r.err
    [report] = r.json()["drills"]
    assert report["verdict"] == "fail"
    assert [x["path"] for x in report["failures"]] == [os.fsdecode(run1)]
    assert "cannot read directory listing" in report["failures"][0]["error"]
