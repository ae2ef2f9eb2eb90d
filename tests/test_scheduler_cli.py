"""The scheduler as users run it: `bcdr tick` from cron, `bcdr schedule run` as a daemon
stopped by SIGTERM, a tick killed in the middle of a backup, `bcdr status`, `schedule
rebuild` on a new host, `schedule install/remove` for systemd (checked by systemd-analyze) and
cron (through the crontab command's protocol)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_process, write_tree

BIG = 256 << 20  # a backup long enough (~0.4 s) to be stopped in the middle


def _plan(tmp_path: Path, extra: str = "", big: bool = False) -> Path:
    data = tmp_path / "data"
    write_tree(data, {"a.bin": b"a" * 50_000})
    if big:
        with open(data / "big.bin", "wb") as out:
            for _ in range(BIG // (4 << 20)):
                out.write(os.urandom(4 << 20))
    f = tmp_path / "plan.yaml"
    f.write_text(
        f"""\
version: 1
name: cli-sched
repositories:
  local: {{url: repo}}
backups:
  ckpt:
    paths: [data]
    repository: local
    schedule: daily
    rpo: 26h
{extra}"""
    )
    return f


def _rows(state: Path, job: str = "ckpt") -> list[tuple[str, int]]:
    db = sqlite3.connect(state / "history.db")
    try:
        return db.execute(
            "SELECT status, attempt FROM runs WHERE job=? ORDER BY id", (job,)
        ).fetchall()
    finally:
        db.close()


def test_tick_runs_what_is_due_logs_json_and_writes_the_plans_metrics(tmp_path: Path) -> None:
    f = _plan(tmp_path, extra="metrics_textfile: metrics/bcdr.prom\n")
    state = tmp_path / "state"
    r = run_process("tick", f, "--state-dir", state, "--log-format", "json", "--summary")
    assert r.code == 0, r.out + r.err
    assert "backup cli-sched/ckpt: ok" in r.out
    events = [json.loads(line) for line in r.err.splitlines()]
    assert [e["event"] for e in events] == ["job-start", "job-end"]
    assert events[1]["status"] == "ok" and events[1]["job"] == "ckpt"
    assert events[1]["bytes_added"] > 0
    metrics = (tmp_path / "metrics" / "bcdr.prom").read_text()
    assert 'bcdr_job_state{job="ckpt",kind="backup",plan="cli-sched",state="ok"} 1.0' in metrics
    # the evidence head the backup appended, kept in --state-dir and published for monitoring
    [record] = run_process("evidence", "list", "--repo", tmp_path / "repo", "--json").json()
    assert f'head_id="{record["id"]}",repository_id=' in metrics, metrics
    assert "bcdr_evidence_head_sequence{head_id=" in metrics
    r = run_process("tick", f, "--state-dir", state, "--summary")
    assert r.code == 0 and "nothing due" in r.out
    r = run_process("status", f, "--state-dir", state, "--json")
    assert r.code == 0, r.out
    [job] = r.json()["jobs"]
    assert job["last_status"] == "ok" and job["rpo_status"] == "ok"
    text = run_process("status", f, "--state-dir", state).out
    assert "cli-sched/ckpt" in text and "ok: newest" in text and "target 26h" in text


def test_status_exits_4_when_a_job_misses_its_rpo(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    r = run_process("status", f, "--state-dir", tmp_path / "state")
    assert r.code == 4, r.out + r.err
    assert "no recovery point" in r.out


def test_a_tick_killed_in_the_middle_of_a_backup_is_run_again(tmp_path: Path) -> None:
    f = _plan(tmp_path, big=True)
    assert run_process("init", "--repo", tmp_path / "repo").code == 0
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bcdr",
            "tick",
            str(f),
            "--state-dir",
            str(state),
            "--log-format",
            "json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert json.loads(line)["event"] == "job-start"
    time.sleep(0.15)  # into the upload of the big file
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _rows(state) == [("running", 1)], "the kill came after the job finished"
    r = run_process("tick", f, "--state-dir", state, "--summary")
    assert r.code == 0, r.out + r.err
    assert "ended with their process" in r.out
    assert _rows(state) == [("crashed", 1), ("ok", 1)]
    r = run_process("check", "--repo", tmp_path / "repo", "--read-data")
    assert r.code == 0 and "no errors found" in r.out, r.out


def test_daemon_stops_cleanly_on_sigterm_idle_and_in_the_middle_of_a_job(tmp_path: Path) -> None:
    f = _plan(tmp_path, big=True)
    assert run_process("init", "--repo", tmp_path / "repo").code == 0
    state = tmp_path / "state"
    argv = [
        sys.executable,
        "-m",
        "bcdr",
        "schedule",
        "run",
        str(f),
        "--state-dir",
        str(state),
        "--log-format",
        "json",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    events = [json.loads(proc.stderr.readline()) for _ in range(2)]
    assert [e["event"] for e in events] == ["daemon-start", "job-start"]
    time.sleep(0.15)  # into the upload of the big file
    proc.send_signal(signal.SIGTERM)
    try:  # a lost signal fails here, instead of hanging the suite
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"the daemon did not stop on SIGTERM: {err[-2000:]}")
    rest = [json.loads(x) for x in err.splitlines()]
    assert proc.returncode == 0
    assert [e["event"] for e in rest] == ["job-interrupted", "daemon-stop"]
    assert _rows(state) == [("interrupted", 1)]
    r = run_process("check", "--repo", tmp_path / "repo")
    assert r.code == 0 and "no errors found" in r.out, r.out
    r = run_process("snapshots", "--repo", tmp_path / "repo", "--json")
    assert r.json() == []  # nothing half-committed
    # started again, it runs the interrupted slot, then sleeps until the next; SIGTERM idle
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["event"] != "sleep":
        seen.append(json.loads(proc.stderr.readline()))
    assert [e["event"] for e in seen] == ["daemon-start", "job-start", "job-end", "sleep"]
    assert seen[2]["status"] == "ok"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert _rows(state) == [("interrupted", 1), ("ok", 1)]


def test_transient_failures_are_retried_then_reported(tmp_path: Path) -> None:
    f = _plan(tmp_path, extra="retries: 1\nretry_wait: 1s\n")
    f.write_text(
        f.read_text().replace(
            "local: {url: repo}",
            "local:\n    url: azure://devstoreaccount1/ck1\n    endpoint: http://127.0.0.1:9/x\n"
            "    credential: {connection_string_env: BCDR_T_CS}",
        )
    )
    cs = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    state = tmp_path / "state"
    r = run_process(
        "tick",
        f,
        "--state-dir",
        state,
        "--summary",
        env={"BCDR_T_CS": cs, "BCDR_RETRY_SECONDS": "1"},
    )
    assert r.code == 1, r.out + r.err
    assert "failed after 2 attempts" in r.out and "job-retry" in r.err
    assert _rows(state) == [("failed", 1), ("failed", 2)]
    assert "Eby8vdM02" not in r.out + r.err


def test_rebuild_lets_a_new_host_take_over_without_rerunning(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    old = tmp_path / "old-host"
    assert run_process("tick", f, "--state-dir", old).code == 0
    new = tmp_path / "new-host"
    r = run_process("schedule", "rebuild", f, "--state-dir", new)
    assert r.code == 0, r.out + r.err
    assert "cli-sched/ckpt: 1 run(s) added" in r.out
    r = run_process("tick", f, "--state-dir", new, "--summary")
    assert r.code == 0 and "nothing due" in r.out, r.out
    r = run_process("status", f, "--state-dir", new, "--json")
    assert r.code == 0 and r.json()["jobs"][0]["rpo_status"] == "ok"
    again = run_process("schedule", "rebuild", f, "--state-dir", new)
    assert "1 run(s) added" not in again.out and "0 run(s) added" in again.out


def test_status_on_a_new_host_reads_every_kind_of_run_from_the_evidence(tmp_path: Path) -> None:
    f = _plan(
        tmp_path,
        extra="drills:\n  restore-ckpt: {backup: ckpt, schedule: weekly, rto: 15m}\n"
        "checks:\n  verify: {repository: local, schedule: weekly}\n",
    )
    assert run_process("tick", f, "--state-dir", tmp_path / "old-host").code == 0
    new = tmp_path / "new-host"
    r = run_process("status", f, "--state-dir", new, "--json")
    assert r.code == 0, r.out + r.err  # not "no recovery point": the repository holds one
    assert "no history of plan cli-sched on this host: 3 run(s) read" in r.err
    jobs = {j["job"]: j for j in r.json()["jobs"]}
    assert jobs["ckpt"]["rpo_status"] == "ok" and jobs["ckpt"]["last_status"] == "ok"
    assert jobs["restore-ckpt"]["last_status"] == "ok"
    assert jobs["verify"]["last_status"] == "ok"
    quiet = run_process("status", f, "--state-dir", tmp_path / "third", "--quiet")
    assert quiet.code == 0 and quiet.err == ""
    # a plan whose repository cannot be read: said, and status still answers
    gone = _plan(tmp_path / "elsewhere")
    r = run_process("status", gone, "--state-dir", tmp_path / "fourth")
    assert r.code == 4 and "could not be read" in r.err and "Traceback" not in r.err


def test_quiet_prints_only_what_went_wrong(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    state = tmp_path / "state"
    first = run_process("tick", f, "--state-dir", state, "--quiet")
    assert (first.code, first.out, first.err) == (0, "", "")  # a good backup: nothing
    again = run_process("tick", f, "--state-dir", state, "--quiet")
    assert (again.out, again.err) == ("", "")  # no "nothing due" every five minutes
    (tmp_path / "data" / "locked.bin").write_bytes(b"x")
    (tmp_path / "data" / "locked.bin").chmod(0)
    repo = tmp_path / "repo"
    quiet = run_process("backup", "--repo", repo, tmp_path / "data", "--quiet")
    if os.geteuid() != 0:  # root reads any file
        assert quiet.code == 3 and "locked.bin" in quiet.err and quiet.out == ""
    else:
        assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    loud = run_process("backup", "--repo", repo, tmp_path / "data")
    assert "snapshot" in loud.out and "saved" in loud.out
    out = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--target", out, "-q")
    assert (r.code, r.out, r.err) == (0, "", "")
    # a failing job is said on stderr even with --quiet
    broken = _plan(tmp_path / "broken")
    (tmp_path / "broken" / "data").chmod(0o755)
    (tmp_path / "broken" / "repo").write_text("not a repository")
    bad = run_process("tick", broken, "--state-dir", tmp_path / "bstate", "--quiet")
    assert bad.code == 1 and bad.out == ""
    assert "backup cli-sched/ckpt: failed" in bad.err
    # answers stay: --quiet on a listing still lists
    listed = run_process("snapshots", "--repo", repo, "-q")
    assert listed.code == 0 and listed.out.count("\n") >= 2


def test_install_and_remove_a_systemd_timer(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    units = tmp_path / "units"
    r = run_process(
        "schedule",
        "install",
        f,
        "--systemd",
        "--user",
        "--unit-dir",
        units,
        "--no-enable",
        "--every",
        "10",
        "--state-dir",
        tmp_path / "st",
    )
    assert r.code == 0, r.out + r.err
    service = (units / "bcdr-cli-sched.service").read_text()
    timer = (units / "bcdr-cli-sched.timer").read_text()
    assert f' "tick" "{f}" "--quiet"' in service and '"--state-dir"' in service
    assert "Type=oneshot" in service
    assert "OnCalendar=*:0/10" in timer
    if shutil.which("systemd-analyze"):
        proc = subprocess.run(
            [
                "systemd-analyze",
                "verify",
                "--man=no",
                str(units / "bcdr-cli-sched.service"),
                str(units / "bcdr-cli-sched.timer"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
    printed = run_process("schedule", "install", f, "--systemd", "--print").out
    assert "# bcdr-cli-sched.timer" in printed and "ExecStart=" in printed
    r = run_process("schedule", "remove", f, "--systemd", "--unit-dir", units, "--no-enable")
    assert r.code == 0 and not list(units.iterdir())
    bad = run_process("schedule", "install", f, "--cron", "--every", "90", "--print")
    assert bad.code == 2 and "every 1 to 59 minutes" in bad.err


def test_install_and_remove_a_crontab_entry_keeps_other_lines(tmp_path: Path) -> None:
    f = _plan(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    table = tmp_path / "crontab.txt"
    fake = bin_dir / "crontab"
    fake.write_text(  # the crontab command's protocol: -l prints the table, - replaces it
        '#!/bin/sh\nF="$BCDR_TEST_CRONTAB"\n'
        'if [ "$1" = "-l" ]; then [ -f "$F" ] && exec cat "$F"; '
        'echo "no crontab for $(id -un)" >&2; exit 1; fi\n'
        'if [ "$1" = "-" ]; then cat > "$F"; exit 0; fi\nexit 2\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "BCDR_TEST_CRONTAB": str(table)}
    assert run_process("schedule", "install", f, "--cron", env=env).code == 0
    table.write_text("0 3 * * * /usr/bin/other-job\n" + table.read_text())
    r = run_process("schedule", "install", f, "--cron", "--log-file", tmp_path / "t.log", env=env)
    assert r.code == 0, r.err
    lines = table.read_text().splitlines()
    assert lines[0] == "0 3 * * * /usr/bin/other-job"
    [ours] = [ln for ln in lines if "bcdr-schedule:bcdr-cli-sched" in ln]  # once, replaced
    assert ours.startswith("*/5 * * * * ") and f" tick {f}" in ours and "t.log" in ours
    assert run_process("schedule", "remove", f, "--cron", env=env).code == 0
    assert table.read_text().splitlines() == ["0 3 * * * /usr/bin/other-job"]


@pytest.mark.parametrize(
    "argv",
    [
        ["tick", "--help"],
        ["schedule", "install", "--help"],
        ["status", "--help"],
        ["schedule", "run", "--help"],
    ],
)
def test_help_explains_the_scheduler(argv: list[str]) -> None:
    r = run_process(*argv)
    assert r.code == 0 and "usage: bcdr" in r.out


def test_bcdr_run_takes_the_job_lock_and_records_its_runs(tmp_path: Path) -> None:
    from bcdr.scheduler.locks import job_lock

    f = _plan(tmp_path)
    state = tmp_path / "state"
    held = job_lock(state, "cli-sched", "ckpt")
    assert held.acquire()  # the scheduler is running this job
    r = run_process("run", f, "--state-dir", state)
    assert r.code == 1 and "already running" in r.out, r.out + r.err
    held.release()
    r = run_process("run", f, "--state-dir", state)
    assert r.code == 0, r.out + r.err
    assert _rows(state) == [("ok", 1)]
    r = run_process("status", f, "--state-dir", state)
    assert r.code == 0 and "ok: newest" in r.out


def _systemd_words(line: str) -> list[str]:
    """ExecStart= words as systemd.syntax(7) and systemd.service(5) read them: quoted words
    with C escapes, ``%%`` a literal percent, ``$$`` a literal dollar."""
    words, i = [], 0
    while i < len(line):
        if line[i] == " ":
            i += 1
            continue
        assert line[i] == '"', line[i:]
        i += 1
        word = []
        while line[i] != '"':
            if line[i] == "\\":
                word.append(line[i + 1])
                i += 2
            elif line[i] in "%$":
                assert line[i + 1] == line[i], f"unescaped {line[i]} in {line!r}"
                word.append(line[i])
                i += 2
            else:
                word.append(line[i])
                i += 1
        words.append("".join(word))
        i += 1
    return words


def test_units_and_crontab_lines_say_exactly_the_paths_they_were_given(tmp_path: Path) -> None:
    """A plan path with spaces, %, $, quotes and backslashes is one argument in the unit and
    the crontab line; one with a newline (which would add an ExecStartPre= or a cron entry
    of its own) is refused."""
    from bcdr.scheduler.install import TickCommand

    odd = tmp_path / 'we ird %h $HOME \\x "q" \'s'
    odd.mkdir()
    f = _plan(odd)
    units = tmp_path / "units"
    state = odd / "st %n"
    r = run_process(
        "schedule",
        "install",
        f,
        "--systemd",
        "--user",
        "--unit-dir",
        units,
        "--no-enable",
        "--state-dir",
        state,
    )
    assert r.code == 0, r.out + r.err
    service = (units / "bcdr-cli-sched.service").read_text()
    [exec_start] = [ln for ln in service.splitlines() if ln.startswith("ExecStart")]
    want = TickCommand((f.resolve(),), state_dir=state).argv()
    want[0] = exec_start.split('"')[1]  # the interpreter of the process that wrote it
    assert _systemd_words(exec_start.removeprefix("ExecStart=")) == want
    assert "%h" not in service.replace("%%h", "")  # every specifier escaped
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # the crontab line: sh reads back the same words once cron has turned \% into %
    line = run_process("schedule", "install", f, "--cron", "--print", "--state-dir", state).out
    entry = [ln for ln in line.splitlines() if "bcdr-schedule:" in ln][0]
    command = entry.split(" ", 5)[5].rsplit(" # bcdr-schedule:", 1)[0]
    assert "%" not in command.replace("\\%", "")
    words = subprocess.run(
        ["/bin/sh", "-c", f"set -- {command.replace(chr(92) + '%', '%')}; printf '%s\\0' \"$@\""],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")[:-1]
    assert words[1:] == [*want[1:]]
    # a newline in a path is refused, and nothing is written
    bad_dir = tmp_path / "x\nExecStartPre=!evil"
    bad_dir.mkdir()
    bad = _plan(bad_dir)
    for how in (
        ["--systemd", "--user", "--unit-dir", tmp_path / "u2", "--no-enable"],
        ["--cron", "--print"],
    ):
        r = run_process("schedule", "install", bad, *how)
        assert r.code == 2 and "control character" in r.err and "Traceback" not in r.err, r.err
    assert not (tmp_path / "u2").exists() or not list((tmp_path / "u2").iterdir())


@pytest.mark.parametrize("command", ["run", "tick"])
def test_run_and_tick_print_each_jobs_result_as_it_ends(tmp_path: Path, command: str) -> None:
    f = _plan(
        tmp_path,
        extra="  second:\n    paths: [data]\n    repository: local\n"
        "    schedule: daily\nhooks:\n  on_success: 'sleep 2'\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcdr", command, str(f), "--state-dir", str(tmp_path / "st")]
        + (["--summary"] if command == "tick" else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    still_running = proc.poll() is None  # the second job (and its hook) is not done yet
    rest = proc.stdout.read()
    assert proc.wait(timeout=60) == 0
    assert first.startswith(("backup ckpt: ok", "backup cli-sched/ckpt: ok")), (first, rest)
    assert still_running, (first, rest)
    assert "second: ok" in rest
