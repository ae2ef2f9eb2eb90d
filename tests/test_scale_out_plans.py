"""A plan's ``scale_out`` (issue 33): ``bcdr run`` backs a job up with shards and commits one
snapshot with the plan's evidence, its drill restores in parts and verifies every byte, and
``validate`` refuses settings that cannot work."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import run_process
from tests.test_shards import _source


def plan_text(src: Path, *, backup: str, drill: str, extra_drill: str = "") -> str:
    return f"""\
version: 1
name: scaled
repositories:
  local: {{url: repo}}
backups:
  ckpt:
    paths: [{src}]
    repository: local
    schedule: daily
    retention: {{keep_last: 2}}
    scale_out: {backup}
drills:
  full:
    backup: ckpt
    schedule: weekly
    rto: 15m
    scratch: scratch
    scale_out: {drill}
{extra_drill}"""


def test_a_plan_backs_up_with_shards_and_drills_in_parts(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=11)
    f = tmp_path / "plan.yaml"
    f.write_text(plan_text(src, backup="{shards: 3}", drill="{shards: 2}"))
    assert run_process("validate", f).code == 0
    state = ["--state-dir", tmp_path / "state"]
    r = run_process("run", f, "--job", "ckpt", *state, "--json")
    assert r.code == 0, r.out + r.err
    r = run_process("run", f, "--job", "ckpt", *state)
    assert r.code == 0, r.out + r.err
    repo = tmp_path / "repo"
    snaps = run_process("snapshots", "--repo", repo, "--json").json()
    assert len(snaps) == 2 and all(s["job"] == "ckpt" and s.get("shard_run") for s in snaps)
    # the same tree as an unsharded backup of the source
    assert run_process("backup", "--repo", repo, "--job", "plain", src).code == 0
    from tests.test_shards import _trees

    trees = _trees(repo, src)
    assert trees["ckpt"] == trees["plain"]
    records = run_process("evidence", "list", "--repo", repo, "--json").json()
    backups = [x for x in records if x["kind"] == "backup" and x["facts"].get("shards")]
    assert len(backups) == 2
    assert backups[-1]["facts"]["shards"] == 3 and backups[-1]["plan"] == "scaled"
    assert backups[-1]["facts"]["placement"] is not None
    # the drill restores the whole snapshot in two parts and verifies every byte
    r = run_process("drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [report] = r.json()["drills"]
    assert report["verdict"] == "pass" and report["shards"] == 2
    files = {p.stat().st_ino for p in src.rglob("*") if p.is_file() and not p.is_symlink()}
    assert report["files_verified"] >= len(files)
    records = run_process("evidence", "list", "--repo", repo, "--json").json()
    drills = [x for x in records if x["kind"] == "drill"]
    assert drills[-1]["facts"]["shards"] == 2 and drills[-1]["facts"]["executor"] == "local"
    assert run_process("evidence", "verify", "--repo", repo).code == 0


def test_a_plans_slurm_run_without_sbatch_fails_cleanly(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=12)
    f = tmp_path / "plan.yaml"
    f.write_text(plan_text(src, backup="{shards: 2, executor: slurm}", drill="{shards: 2}"))
    bindir = Path(sys.executable).parent
    r = run_process(
        "run", f, "--job", "ckpt", "--state-dir", tmp_path / "state", env={"PATH": str(bindir)}
    )
    assert r.code == 1, r.out + r.err
    assert "sbatch was not found" in r.out + r.err and "Traceback" not in r.out + r.err
    snaps = run_process("snapshots", "--repo", tmp_path / "repo", "--json").json()
    assert snaps == []


def test_validate_refuses_scale_out_settings_that_cannot_work(tmp_path: Path) -> None:
    src = _source(tmp_path, seed=13)
    f = tmp_path / "plan.yaml"
    cases = [
        ("{shards: 0}", "{shards: 2}", "", "scale_out.shards"),
        ("{shards: 2, slurm: {partition: p}}", "{shards: 2}", "", "would not be used"),
        ("{shards: 2}", "{shards: 2}", "    sample: 5%\n", "restores the whole snapshot"),
    ]
    for backup, drill, extra, said in cases:
        f.write_text(plan_text(src, backup=backup, drill=drill, extra_drill=extra))
        r = run_process("validate", f)
        assert r.code == 2 and said in r.out, (backup, drill, r.out)
    text = plan_text(src, backup="{shards: 2}", drill="{shards: 2, executor: slurm}")
    f.write_text(text.replace("    scratch: scratch\n", ""))
    r = run_process("validate", f)
    assert r.code == 2 and "restores into `scratch`" in r.out, r.out
