"""Reports an auditor cannot be misled by, run as users run them: records cut from the end of
an encrypted repository's chain are caught through this host's head and a previous report;
edited, re-chained, forged and copied records are named; a drill counts for what it restored;
a window mostly without evidence cannot PASS; a sampled drill says so and is judged by a
full-restore estimate; a backup by hand is a recovery point; `report --json` is JSON; a
residency rule needs every repository's region."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bcdr.actions.common import open_repo
from bcdr.actions.drill import run_drill
from bcdr.compliance.controls import NO_EVIDENCE, PASS, rto_estimate
from bcdr.compliance.records import DrillFacts
from bcdr.plan.loader import load_plan
from tests.conftest import run_process, write_tree

PW = {"PW": "correct horse battery staple", "BCDR_PASSWORD": "correct horse battery staple"}
B1 = {f"ckpt/step-{i:02d}.bin": os.urandom(20_000 + i * 1000) for i in range(20)}
B2 = {f"data/shard-{i}.bin": os.urandom(30_000) for i in range(3)}


def _plan(tmp_path: Path, drill: str = "backup: b1, schedule: weekly, rto: 1h") -> Path:
    write_tree(tmp_path / "src1", B1)
    write_tree(tmp_path / "src2", B2)
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: audit
repositories:
  main: {{url: repo, region: westeurope, encryption: {{password_env: PW}}}}
residency:
  allowed_geographies: [Europe]
backups:
  b1: {{paths: [src1], repository: main, schedule: daily, rpo: 26h}}
  b2: {{paths: [src2], repository: main, schedule: daily, rpo: 26h}}
drills:
  d: {{{drill}, scratch: scratch}}
""")
    return f


def _ok(*args: object, code: int = 0, env: dict[str, str] | None = None) -> Any:
    r = run_process(*args, env={**PW, **(env or {})})
    assert r.code == code, r.out + r.err
    assert "Traceback" not in r.err
    return r


def _control(doc: dict[str, Any], job: str, cid: str) -> dict[str, Any]:
    [j] = [j for j in doc["jobs"] if j["name"] == job]
    found: list[dict[str, Any]] = [c for c in j["controls"] if c["id"] == cid]
    return found[0]


def _covered(doc: dict[str, Any], job: str, cid: str) -> str:
    """The status over the part of the window the evidence covers."""
    c = _control(doc, job, cid)
    return str(c["details"].get("covered_status", c["status"]))


def _evidence(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "repo" / "evidence").iterdir())


def _corrupt_a_pack_of(tmp_path: Path) -> None:
    """Flip a byte in the middle of every pack: the next drill fails verification."""
    for pack in (tmp_path / "repo" / "data").rglob("*"):
        if pack.is_file():
            data = bytearray(pack.read_bytes())
            data[len(data) // 2] ^= 0xFF
            pack.write_bytes(bytes(data))


def test_a_failed_drill_cut_from_the_end_is_caught_by_the_host_and_a_previous_report(
    tmp_path: Path,
) -> None:
    f = _plan(tmp_path)
    state = ["--state-dir", tmp_path / "state"]
    _ok("run", f, "--job", "b1", *state)
    _ok("drill", f)
    _corrupt_a_pack_of(tmp_path)
    r = _ok("drill", f, code=4)
    assert "drill d: FAIL" in r.out
    # the report an auditor keeps: FAIL (restore verification), and the heads it saw
    kept = tmp_path / "audit" / "after-failure.md"
    r = _ok("report", f, "--since", "1h", "--out", kept, code=4)
    assert "bcdr-evidence-head repository=main id=" in r.out
    doc = _ok("report", f, "--since", "1h", "--json", code=4).json()
    assert _covered(doc, "b1", "restore") == "FAIL"
    [head] = [r["head"] for r in doc["repositories"]]
    assert head["token"] in kept.read_text()
    # the drill job ran on time and failed: its schedule says so, no "0 good runs" beside FAIL
    assert "2 run(s), 1 ok" in _control(doc, "d", "schedule")["summary"]

    # someone without the key deletes the failed drill's record, the newest
    newest = _evidence(tmp_path)[-1]
    assert newest.name.startswith(f"{head['seq']:010d}-")
    newest.unlink()

    # this host appended it: the report fails and names the cut
    r = _ok("report", f, "--since", "1h", code=4)
    assert "tampered with" in r.out
    assert f"#{head['seq']}: missing: cut from the end of the chain" in r.out, r.out
    r = _ok("evidence", "verify", "--repo", tmp_path / "repo", code=1)
    assert "cut from the end of the chain" in r.out

    # another host never saw it: the chain alone looks intact...
    other = {"BCDR_STATE_DIR": str(tmp_path / "other-host")}
    doc = _ok("report", f, "--since", "1h", "--json", env=other).json()
    assert doc["tampered"] is False and _covered(doc, "b1", "restore") == PASS
    # ...until the auditor gives the report kept from before
    r = _ok("report", f, "--since", "1h", "--previous-report", kept, env=other, code=4)
    assert f"#{head['seq']}: missing: cut from the end of the chain" in r.out
    assert f"previous report {kept.name} saw #{head['seq']}" in r.out
    r = _ok("evidence", "verify", "--repo", tmp_path / "repo", "--previous-report", kept,
            env=other, code=1)  # fmt: skip
    assert "cut from the end" in r.out
    r = _ok("report", f, "--head", f"main={head['seq']}:{head['id']}", env=other, code=4)
    assert "cut from the end" in r.out


def _fresh_copy(tmp_path: Path, name: str) -> Path:
    """The plan and its repository copied, so each tampering starts from the same chain."""
    dest = tmp_path / name
    dest.mkdir()
    shutil.copytree(tmp_path / "repo", dest / "repo")
    shutil.copy(tmp_path / "plan.yaml", dest / "plan.yaml")
    for src in ("src1", "src2"):
        shutil.copytree(tmp_path / src, dest / src)
    return dest


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "unencrypted"])
def test_edited_rechained_forged_and_copied_records_are_named(
    tmp_path: Path, encrypted: bool
) -> None:
    f = _plan(tmp_path)
    if not encrypted:
        f.write_text(f.read_text().replace(", encryption: {password_env: PW}", ""))
    # heads are checked against a host that never saw this chain: only the chain speaks
    other = {"BCDR_STATE_DIR": str(tmp_path / "elsewhere")}
    _ok("run", f, "--job", "b1", "--state-dir", tmp_path / "state")
    _ok("run", f, "--job", "b2", "--state-dir", tmp_path / "state")
    _ok("drill", f)
    assert len(_evidence(tmp_path)) == 3

    # edited: #2 changed (a failure made a success), renamed to its new hash
    from bcdr.repository.hashing import object_name

    d = _fresh_copy(tmp_path, "edited")
    second = sorted((d / "repo" / "evidence").iterdir())[1]
    if encrypted:  # without the key, bytes can only be flipped
        data = bytearray(second.read_bytes())
        data[len(data) // 2] ^= 1
    else:
        doc = json.loads(second.read_bytes())
        doc["result"], doc["facts"]["bytes_added"] = "ok", 1
        data = bytearray(json.dumps(doc, sort_keys=True).encode())
    second.unlink()
    (d / "repo" / "evidence" / f"0000000002-{object_name(bytes(data))}").write_bytes(data)
    r = _ok("evidence", "verify", "--repo", d / "repo", env=other, code=1)
    if encrypted:
        assert "#2 (" in r.out and "forged: it is not sealed with this repository's key" in r.out
    else:  # without a key the edit is caught only because #3 names the old #2
        assert "#3 (" in r.out and "chain broken" in r.out

    # re-chained: #2 deleted and #3 renamed into its place
    d = _fresh_copy(tmp_path, "rechained")
    files = sorted((d / "repo" / "evidence").iterdir())
    files[1].unlink()
    files[2].rename(files[2].with_name("0000000002-" + files[2].name.split("-")[1]))
    r = _ok("evidence", "verify", "--repo", d / "repo", env=other, code=1)
    assert "reordered: the record says it is #3" in r.out

    # appended: a record written without the key (as an unencrypted repository stores one)
    d = _fresh_copy(tmp_path, "appended")
    last = sorted((d / "repo" / "evidence").iterdir())[-1]
    forged = json.dumps(
        {"kind": "drill", "seq": 4, "prev": last.name.split("-")[1], "plan": "audit",
         "job": "d", "time": "2026-12-06T00:00:00+00:00", "result": "ok", "facts": {}}
    ).encode()  # fmt: skip
    (d / "repo" / "evidence" / f"0000000004-{object_name(forged)}").write_bytes(forged)
    r = _ok("evidence", "verify", "--repo", d / "repo", env=other, code=1 if encrypted else 0)
    if encrypted:
        assert "#4 (" in r.out and "forged" in r.out
        r = _ok("report", d / "plan.yaml", "--since", "1h", env=other, code=4)
        assert "tampered with" in r.out
    else:  # nothing in the repository can tell: the report says so plainly
        r = _ok("report", d / "plan.yaml", "--since", "1h", "--json", env=other)
        [repo] = r.json()["repositories"]
        assert repo["authenticated"] is False
        assert "records are not authenticated" in repo["chain"]["summary"]

    # copied: a record of another repository (same key holder) put in this chain's place
    if encrypted:
        from bcdr.compliance.context import RunContext
        from bcdr.compliance.evidence import write_record

        d = _fresh_copy(tmp_path, "copied")
        e = _fresh_copy(tmp_path, "other-repo")
        repo_e = open_repo(str(e / "repo"), env=PW)
        object.__setattr__(repo_e.config, "id", "f" * 64)  # another repository, the same key
        write_record(repo_e, DrillFacts(verdict="pass"), context=RunContext("audit", None, "d"))
        planted = sorted((e / "repo" / "evidence").iterdir())[-1]
        assert planted.name.startswith("0000000004-")
        shutil.copy(planted, d / "repo" / "evidence" / planted.name)
        r = _ok("evidence", "verify", "--repo", d / "repo", env=other, code=1)
        assert "copied from another repository (ffffffffffff)" in r.out


def test_a_drill_counts_for_the_job_its_record_says_it_restored(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    state = ["--state-dir", tmp_path / "state"]
    _ok("run", f, "--job", "b1", *state)
    _ok("run", f, "--job", "b2", *state)
    _ok("drill", f)
    before = _ok("report", f, "--since", "1h", "--json").json()
    assert _covered(before, "b1", "rto") == PASS
    assert _control(before, "b2", "rto")["status"] == NO_EVIDENCE
    assert len(before["plan_versions"]) == 1

    # the plan now says drill d restores b2: the record says it restored b1
    f.write_text(f.read_text().replace("backup: b1, schedule", "backup: b2, schedule"))
    doc = _ok("report", f, "--since", "1h", "--json").json()
    assert _covered(doc, "b1", "rto") == PASS and _covered(doc, "b1", "restore") == PASS
    b2 = _control(doc, "b2", "rto")
    assert b2["status"] == NO_EVIDENCE and b2["evidence"] == [], b2
    assert "no drill recorded (d in the plan)" in b2["summary"]
    [b1_job] = [j for j in doc["jobs"] if j["name"] == "b1"]
    assert [x["drill"] for x in b1_job["drills"]] == ["d"]
    # and the report says the plan changed under the evidence
    versions = doc["plan_versions"]
    assert len(versions) == 1 and versions[0]["current"] is False
    _ok("run", f, "--job", "b2", *state)  # a record under the new plan
    doc = _ok("report", f, "--since", "1h", "--json").json()
    assert [v["current"] for v in doc["plan_versions"]] == [False, True]
    md = _ok("report", f, "--since", "1h").out
    assert "The plan changed within the window: 2 versions" in md


def test_a_90_day_window_with_minutes_of_evidence_cannot_pass(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _ok("run", f, "--job", "b1", "--state-dir", tmp_path / "state")
    _ok("drill", f)
    doc = _ok("report", f, "--json").json()  # the default window: 90 days
    assert doc["verdict"] == NO_EVIDENCE
    cov = doc["window"]["coverage"]
    assert cov["complete"] is False and cov["fraction"] < 0.001
    windowed = [c for j in doc["jobs"] for c in j["controls"] if "coverage" in c]
    assert windowed and all(c["status"] != PASS for c in windowed)
    rpo = _control(doc, "b1", "rpo")
    assert rpo["status"] == NO_EVIDENCE and rpo["details"]["covered_status"] == PASS
    assert rpo["summary"].startswith("evidence covers only 0.0% of the window")
    # the timeline spans the whole window, the part without evidence drawn as such
    html = tmp_path / "r.html"
    _ok("report", f, "--out", html)
    text = html.read_text()
    assert 'class="uncovered"' in text and doc["window"]["since"][:10] in text
    # a window the evidence covers passes
    doc = _ok("report", f, "--since", "1s", "--json").json()
    assert doc["window"]["coverage"]["complete"] is True
    assert _control(doc, "b1", "rpo")["status"] == PASS


def test_a_sampled_drill_is_labelled_and_judged_by_a_full_restore_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PW", PW["PW"])
    f = _plan(tmp_path, "backup: b1, schedule: weekly, rto: 15m, sample: 10%")
    _ok("run", f, "--job", "b1", "--state-dir", tmp_path / "state")
    # every phase takes 60 s: the sample took 4 minutes, well within 15m; the whole snapshot,
    # about ten times the bytes to restore and verify, would not be
    ticks = itertools.count(0, 60)
    report = run_drill(load_plan(f), "d", timer=lambda: float(next(ticks)))
    assert report.rto_s == 240 and report.files_selected == 2 and report.files_total == 20
    scale = report.bytes_total / report.bytes_selected
    assert report.rto_estimate_s == pytest.approx(120 + 120 * scale)
    assert report.verdict == "fail"
    assert any("a full restore would take about" in r for r in report.reasons), report.reasons

    doc = _ok("report", f, "--since", "1h", "--json", code=4).json()
    rto = _control(doc, "b1", "rto")
    assert rto["status"] == "FAIL" and rto["details"]["sampled"] is True
    assert rto["details"]["rto_estimate_s"] == pytest.approx(report.rto_estimate_s)
    assert "sampled: 10% of files (2 of 20" in rto["summary"]
    assert "a full restore estimated at" in rto["summary"]
    assert "scaled by the snapshot's bytes" in rto["details"]["estimate_method"]
    [b1_job] = [j for j in doc["jobs"] if j["name"] == "b1"]
    [drill] = b1_job["drills"]
    assert drill["sampled"].startswith("sampled: 10%")
    assert "sampled: 10%" in _ok("report", f, "--since", "1h", code=4).out
    html = tmp_path / "r.html"
    _ok("report", f, "--since", "1h", "--out", html, code=4)
    assert 'class="sampled">sampled: 10%' in html.read_text()


def test_the_estimate_keeps_fixed_phases_and_scales_the_rest() -> None:
    facts: dict[str, Any] = {
        "sample_percent": 10.0,
        "rto_s": 12.0,
        "phases": {"open": 1.0, "select": 1.0, "restore": 8.0, "verify": 2.0, "cleanup": 5.0},
        "bytes_total": 1000,
        "bytes_selected": 100,
    }
    assert rto_estimate(DrillFacts.of(facts))[0] == pytest.approx(2 + 10 * 10)
    # an older record without byte totals scales by files
    del facts["bytes_total"]
    older = DrillFacts.of({**facts, "files_total": 50, "files_selected": 5})
    assert rto_estimate(older)[0] == 102
    assert rto_estimate(DrillFacts.of({**facts, "sample_percent": 100.0})) == (None, None)


def test_a_backup_by_hand_is_a_recovery_point_of_its_job(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _ok("init", "--repo", tmp_path / "repo", "--encrypt")
    _ok("backup", "--repo", tmp_path / "repo", "--job", "b1", tmp_path / "src1")
    doc = _ok("report", f, "--since", "1h", "--json").json()
    rpo = _control(doc, "b1", "rpo")
    assert _covered(doc, "b1", "rpo") == PASS, rpo
    assert rpo["details"]["recovery_points"] == 1 and len(rpo["evidence"]) == 1
    [job] = [j for j in doc["jobs"] if j["name"] == "b1"]
    assert [e["label"].endswith("(by hand)") for e in job["timeline"]] == [True]
    _ok("drill", f)  # the drill restores it, and the report agrees there is a point to restore
    doc = _ok("report", f, "--since", "1h", "--json").json()
    assert _covered(doc, "b1", "rto") == PASS and _covered(doc, "b1", "rpo") == PASS


def test_report_json_is_json_and_contradictory_formats_are_refused(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    _ok("run", f, "--job", "b1", "--state-dir", tmp_path / "state")
    doc = _ok("report", f, "--json").json()
    assert doc["schema"] == "bcdr.report/1" and doc["repositories"][0]["head"]["seq"] == 1
    r = _ok("report", f, "--json", "--format", "md", code=2)
    assert "--json and --format md disagree" in r.err
    out = tmp_path / "r.html"
    summary = _ok("report", f, "--json", "--out", out).json()
    assert summary["written"] == str(out) and summary["format"] == "html"
    assert summary["heads"][0]["token"].startswith("bcdr-evidence-head repository=main")
    assert out.read_text().startswith("<!doctype html>")
    r = _ok("report", f, "--previous-report", f, code=2)  # a plan is not a report
    assert "no evidence head in this file" in r.err
    r = _ok("report", f, "--head", "nosuch=1:" + "a" * 64, code=2)
    assert "the plan has no repository 'nosuch'" in r.err


def test_a_residency_rule_needs_the_region_of_every_repository(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    f.write_text(f.read_text().replace("url: repo, region: westeurope,", "url: repo,"))
    r = _ok("validate", f, code=2)
    said = r.out + r.err
    assert "repositories.main.region" in said and "has no region" in said, said
    assert "the region of the machine or disk it is on" in said
    _ok("run", f, "--job", "b1", "--state-dir", tmp_path / "state", code=2)
    assert not (tmp_path / "repo").exists()  # refused before a byte moved


def test_a_drill_restores_only_a_snapshot_of_its_own_job(tmp_path: Path) -> None:
    # else its record would say "restored b1" of a snapshot of b2 (held before; pinned here)
    f = _plan(tmp_path)
    state = ["--state-dir", tmp_path / "state"]
    _ok("run", f, "--job", "b1", *state)
    _ok("run", f, "--job", "b2", *state)
    snaps = _ok("snapshots", "--repo", tmp_path / "repo", "--json").json()
    [b2] = [s for s in snaps if s["job"] == "b2"]
    r = _ok("drill", f, "--snapshot", b2["id"][:12], code=1)
    assert f"snapshot {b2['id'][:12]} belongs to job 'b2', not 'b1'" in r.out, r.out
    assert "give a snapshot of job b1" in r.out
    assert len(_evidence(tmp_path)) == 2  # nothing recorded
