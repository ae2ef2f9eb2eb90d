"""The Slurm executor (issue 33) against a real single-node Slurm cluster (tests/slurm_cluster.py):
a sharded backup as a job array and a commit job, the report per shard, a task cancelled with
``scancel`` and run again on its own, the commit refusing a missing receipt, and the job ids in
the evidence."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Result, restored_root, run_process, snapshot_tree
from tests.slurm_cluster import SlurmCluster
from tests.test_scale_out_plans import plan_text
from tests.test_shards import _init, _source, _trees

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An encrypted repository's password reaches the array tasks only as the file the
    environment names (sbatch passes the environment, no script holds it)."""
    pw = tmp_path / "pw"
    pw.write_text("slurm test password\n")
    pw.chmod(0o600)
    monkeypatch.setenv("BCDR_PASSWORD_FILE", str(pw))
    return {"BCDR_PASSWORD_FILE": str(pw)}


def _bcdr(slurm: SlurmCluster, env: dict[str, str], *args: object, **kw: object) -> Result:
    return run_process(*args, env={"SLURM_CONF": str(slurm.conf), **env}, timeout=180)


def _wait_gone(slurm: SlurmCluster, jobs: list[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not slurm.command("squeue", "-h", "-j", ",".join(jobs), check=False).strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"jobs {jobs} still queued: {slurm.command('squeue')}")


def _cancel_one_task(slurm: SlurmCluster, job_name: str, task: int) -> None:
    """Wait for the held array ``job_name``, cancel its task ``task`` before it runs (as an
    operator's scancel would), and release the others."""
    array = ""
    deadline = time.monotonic() + 60
    while not array and time.monotonic() < deadline:
        for line in slurm.command("squeue", "-h", "-o", "%F %j").splitlines():
            job, name = line.split()
            if name == job_name:
                array = job
        time.sleep(0.2)
    assert array, slurm.command("squeue")
    slurm.command("scancel", f"{array}_{task}")
    slurm.command("scontrol", "release", array)


def test_a_sharded_backup_through_slurm_is_the_unsharded_snapshot(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    _init_encrypted(slurm, password, repo)
    assert _bcdr(slurm, password, "backup", "--repo", repo, "--job", "whole", src).code == 0
    r = _bcdr(
        slurm,
        password,
        "backup",
        "--repo",
        repo,
        "--job",
        "sl",
        "--shards",
        3,
        "--executor",
        "slurm",
        "--wait",
        "--json",
        "--slurm-cpus-per-task",
        1,
        "--slurm-output",
        tmp_path / "slurm-%A_%a.out",
        src,
    )
    assert r.code == 0, r.out + r.err
    doc = r.json()
    assert doc["snapshot"] and doc["commit_state"] == "COMPLETED" and doc["failed"] == []
    assert [s["index"] for s in doc["shards"]] == [0, 1, 2]
    assert all(s["ok"] and s["node"] == slurm.host for s in doc["shards"])
    assert {s["slurm_job"] for s in doc["shards"]} == {f"{doc['array_job']}_{i}" for i in range(3)}
    assert sum(s["bytes_read"] for s in doc["shards"]) > 5 * 64 * 1024
    trees = _trees(repo, src)
    assert trees["sl"] == trees["whole"]
    # the evidence keeps the Slurm job ids: every array task, then the commit's job
    r = _bcdr(slurm, password, "evidence", "list", "--repo", repo, "--json")
    assert r.code == 0, r.err
    backups = [e for e in r.json() if e["kind"] == "backup" and e["facts"].get("shards")]
    assert backups[-1]["facts"]["slurm_jobs"] == [
        *(f"{doc['array_job']}_{i}" for i in range(3)),
        doc["commit_job"],
    ]
    # no batch script Slurm was given holds the password (it travels as the file's name)
    for out in tmp_path.glob("slurm-*.out"):
        assert "slurm test password" not in out.read_text()


def test_without_wait_the_commit_job_commits(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path, seed=2)
    repo = tmp_path / "repo"
    _init_encrypted(slurm, password, repo)
    r = _bcdr(
        slurm,
        password,
        "backup",
        "--repo",
        repo,
        "--job",
        "bg",
        "--shards",
        2,
        "--executor",
        "slurm",
        "--json",
        "--slurm-output",
        tmp_path / "slurm-%j.out",
        src,
    )
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["array_job"] and doc["commit_job"]
    _wait_gone(slurm, [doc["array_job"], doc["commit_job"]])
    r = _bcdr(slurm, password, "snapshots", "--repo", repo, "--json")
    assert [s["job"] for s in r.json()] == ["bg"]


def _init_encrypted(slurm: SlurmCluster, password: dict[str, str], repo: Path) -> None:
    r = _bcdr(
        slurm,
        password,
        "init",
        "--repo",
        repo,
        "--encrypt",
        "--chunk-size",
        "4096,4096,32768",
        "--region-size",
        64 * 1024,
    )
    assert r.code == 0, r.err


def test_a_cancelled_array_task_is_reported_and_run_again_on_its_own(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path, seed=3)
    repo = tmp_path / "repo"
    _init_encrypted(slurm, password, repo)
    assert _bcdr(slurm, password, "backup", "--repo", repo, "--job", "whole", src).code == 0
    # held, so that one task can be cancelled before any runs
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bcdr",
            "backup",
            "--repo",
            str(repo),
            "--job",
            "sl",
            "--shards",
            "3",
            "--executor",
            "slurm",
            "--wait",
            "--slurm-arg=--hold",
            "--slurm-output",
            str(tmp_path / "slurm-%A_%a.out"),
            str(src),
        ],
        env={**os.environ, **password, "SLURM_CONF": str(slurm.conf)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _cancel_one_task(slurm, "bcdr-sl", 1)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    assert re.search(r"shard 1 .*CANCELLED", err), err
    assert "1 shard(s) of run" in err and "failed (1)" in err and "nothing was committed" in err
    assert _bcdr(slurm, password, "snapshots", "--repo", repo, "--job", "sl", "--json").json() == []
    # the commit names the shard a receipt is missing for
    run = re.search(r"--run (\S+) --indexes 1 --wait", err)
    assert run, err
    r = _bcdr(slurm, password, "shard", "commit", "--repo", repo, "--run", run.group(1))
    assert r.code != 0 and "shard(s) 1)" in r.err and "nothing was committed" in r.err
    # the hint's command re-runs shard 1 alone, then commits
    hint = err.split("hint: run just them again: ")[1].splitlines()[0]
    argv = shlex.split(hint)
    assert argv[:3] == ["bcdr", "shard", "submit"]
    r = _bcdr(slurm, password, *argv[1:], "--json", "--slurm-output", tmp_path / "again-%A_%a.out")
    assert r.code == 0, r.out + r.err
    doc = r.json()
    assert doc["snapshot"] and doc["failed"] == []
    ran_again = [s for s in doc["shards"] if s["slurm_job"].startswith(doc["array_job"] + "_")]
    assert [s["index"] for s in ran_again] == [1]  # shards 0 and 2 kept their receipts
    trees = _trees(repo, src)
    assert trees["sl"] == trees["whole"]
    # submitting the committed run again commits nothing twice
    r = _bcdr(
        slurm,
        password,
        "shard",
        "submit",
        "--repo",
        repo,
        "--run",
        run.group(1),
        "--wait",
        "--json",
        "--slurm-output",
        tmp_path / "third-%j.out",
    )
    assert r.code == 0, r.err
    assert r.json()["snapshot"] == doc["snapshot"]
    snaps = _bcdr(slurm, password, "snapshots", "--repo", repo, "--job", "sl", "--json").json()
    assert len(snaps) == 1


def test_slurm_usage_errors(tmp_path: Path, slurm: SlurmCluster) -> None:
    src = _source(tmp_path, seed=4)
    repo = tmp_path / "repo"
    _init(repo)
    r = run_process("backup", "--repo", repo, "--shards", 2, "--wait", src)
    assert r.code == 2 and "--wait goes with --executor slurm" in r.err
    # no sbatch on this host: said before anything is submitted
    bindir = Path(sys.executable).parent
    r = run_process(
        "backup",
        "--repo",
        repo,
        "--shards",
        2,
        "--executor",
        "slurm",
        src,
        env={"PATH": str(bindir)},
    )
    assert r.code == 2 and "sbatch was not found" in r.err, r.err
    assert "Traceback" not in r.err
    # sbatch refuses a partition that does not exist: its words, exit 1, no traceback
    r = _bcdr(
        slurm,
        {},
        "backup",
        "--repo",
        repo,
        "--shards",
        2,
        "--executor",
        "slurm",
        "--slurm-partition",
        "nosuch",
        src,
    )
    assert r.code == 1 and "sbatch refused the job" in r.err and "Traceback" not in r.err
    r = _bcdr(slurm, {}, "shard", "submit", "--repo", repo, "--run", "x", "--indexes", "a")
    assert r.code != 0 and "Traceback" not in r.err
    assert json.dumps(slurm.command("squeue", "-h")) == json.dumps("")


def test_a_sharded_restore_through_slurm(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path, seed=5)
    repo = tmp_path / "repo"
    _init_encrypted(slurm, password, repo)
    assert _bcdr(slurm, password, "backup", "--repo", repo, "--job", "j", src).code == 0
    want = snapshot_tree(src)
    out = tmp_path / "out"
    r = _bcdr(
        slurm,
        password,
        "restore",
        "--repo",
        repo,
        "latest",
        "--target",
        out,
        "--shards",
        3,
        "--executor",
        "slurm",
        "--wait",
        "--json",
        "--slurm-output",
        tmp_path / "r-%A_%a.out",
    )
    assert r.code == 0, r.out + r.err
    doc = r.json()
    assert doc["ok"] and doc["array_job"] and doc["finish_job"] is None  # finished here
    assert [(p["index"], p["ok"], p["node"]) for p in doc["parts"]] == [
        (i, True, slurm.host) for i in range(3)
    ]
    assert snapshot_tree(restored_root(out, src)) == want
    # without --wait the finish is a job after the array
    out2 = tmp_path / "out2"
    r = _bcdr(
        slurm,
        password,
        "restore",
        "--repo",
        repo,
        "latest",
        "--target",
        out2,
        "--shards",
        2,
        "--executor",
        "slurm",
        "--json",
        "--slurm-output",
        tmp_path / "r2-%j.out",
    )
    assert r.code == 0, r.err
    doc = r.json()
    _wait_gone(slurm, [doc["array_job"], doc["finish_job"]])
    assert snapshot_tree(restored_root(out2, src)) == want


def test_a_plan_runs_its_backup_and_drill_through_slurm(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path, seed=6)
    logs = tmp_path / "logs"
    logs.mkdir()
    slurm_settings = f"{{cpus_per_task: 1, output: '{logs}/%x-%A_%a.out'}}"
    f = tmp_path / "plan.yaml"
    f.write_text(
        plan_text(
            src,
            backup=f"{{shards: 3, executor: slurm, slurm: {slurm_settings}}}",
            drill=f"{{shards: 2, executor: slurm, slurm: {slurm_settings}}}",
        )
    )
    assert _bcdr(slurm, password, "validate", f).code == 0
    r = _bcdr(slurm, password, "run", f, "--job", "ckpt", "--state-dir", tmp_path / "state")
    assert r.code == 0, r.out + r.err
    repo = tmp_path / "repo"
    [snap] = _bcdr(slurm, password, "snapshots", "--repo", repo, "--json").json()
    records = _bcdr(slurm, password, "evidence", "list", "--repo", repo, "--json").json()
    [backup] = [x for x in records if x["kind"] == "backup"]
    jobs = backup["facts"]["slurm_jobs"]
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1  # one array's tasks
    assert backup["facts"]["snapshot"] == snap["id"] and backup["plan"] == "scaled"
    r = _bcdr(slurm, password, "drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [report] = r.json()["drills"]
    assert report["verdict"] == "pass" and report["executor"] == "slurm"
    assert len(report["slurm_jobs"]) == 1
    # the parts ran as Slurm tasks, and each read back the files it wrote
    parts = [json.loads(p.read_text()) for p in logs.glob("bcdr-restore-*")]
    assert len(parts) == 2
    assert sum(p["files_read_back"] for p in parts) == sum(p["files"] for p in parts) > 0
    assert report["read_back"] == "parts" and report["files_verified"] == report["files_total"]


def test_a_plans_run_names_the_shard_slurm_cancelled(
    tmp_path: Path, slurm: SlurmCluster, password: dict[str, str]
) -> None:
    src = _source(tmp_path, seed=7)
    f = tmp_path / "plan.yaml"
    out = f"'{tmp_path}/%x-%A_%a.out'"
    f.write_text(
        plan_text(
            src,
            backup=f"{{shards: 2, executor: slurm, slurm: {{output: {out}, "
            "extra_args: [--hold]}}",
            drill="{shards: 2}",
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bcdr",
            "run",
            str(f),
            "--job",
            "ckpt",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        env={**os.environ, **password, "SLURM_CONF": str(slurm.conf)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _cancel_one_task(slurm, "bcdr-ckpt", 0)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 1, stdout + stderr
    text = stdout + stderr
    assert "1 of 2 shard(s)" in text and "shard 0: Slurm task" in text and "CANCELLED" in text
    assert "nothing was committed" in text and "Traceback" not in text
    snaps = _bcdr(slurm, password, "snapshots", "--repo", tmp_path / "repo", "--json").json()
    assert snaps == []
