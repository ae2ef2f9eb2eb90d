"""Monitoring: the metrics textfile (parsed by prometheus_client, checked by Debian's
``promtool``), the alert rules (``promtool test rules``, on hand-written series and on series a
real scheduler wrote through days of a fake clock, a stopped scheduler included), the Grafana
dashboard's queries, and the scheduler's logs (JSON lines and logfmt)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from bcdr.actions.run import run_job
from bcdr.actions.tick import Scheduler
from bcdr.clock import Clock, FakeClock
from bcdr.plan.loader import load_plan
from bcdr.plan.model import Plan
from bcdr.scheduler.engine import RunResult
from bcdr.scheduler.history import History
from bcdr.scheduler.metrics import METRICS, render_metrics
from tests.conftest import run_process, write_tree
from tests.monitoring_series import (
    SCHEDULER_STOPS,
    SCRAPE,
    Key,
    Recording,
    record,
    samples,
    shifted,
)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "bcdr-alerts.yml"
DASHBOARD = ROOT / "monitoring" / "bcdr-dashboard.json"
NOW = datetime(2026, 11, 2, 3, 0, tzinfo=UTC)


def promtool(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool (Debian's prometheus) is needed: make test installs it")
    return subprocess.run(
        [exe, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=300
    )


def value(found: dict[Key, float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def _plan(tmp_path: Path, extra: str = "", name: str = "mon") -> Plan:
    write_tree(tmp_path / "data", {"ckpt/a.bin": os.urandom(30_000), "ckpt/b.bin": b"b" * 9000})
    f = tmp_path / f"{name}.yaml"
    f.write_text(
        f"""\
version: 1
name: {name}
timezone: UTC
repositories:
  local:
    url: repo
backups:
  ckpt:
    paths: [data/ckpt]
    repository: local
    schedule: daily
    at: "02:30"
    rpo: 26h
drills:
  drill:
    backup: ckpt
    schedule: daily
    at: "02:45"
    rto: 10m
checks:
  verify:
    repository: local
    schedule: weekly
    on: sunday
{extra}"""
    )
    return load_plan(f)


@pytest.fixture
def history(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[History]:
    """The run history, with the evidence heads beside it (as --state-dir does)."""
    monkeypatch.setenv("BCDR_STATE_DIR", str(tmp_path / "state"))
    h = History(tmp_path / "state")
    yield h
    h.close()


# --- the textfile -----------------------------------------------------------------------------


def test_every_job_has_its_series_from_the_first_write(tmp_path: Path, history: History) -> None:
    """Before any run: state ``never``, timestamps 0 (so the RPO alert fires), the next slot."""
    plan = _plan(tmp_path)
    text = render_metrics([plan], history, NOW)
    assert promtool("check", "metrics", stdin=text).returncode == 0, text
    found = samples(text)
    for job, kind in (("ckpt", "backup"), ("drill", "drill"), ("verify", "check")):
        labels = {"plan": "mon", "job": job, "kind": kind}
        states = {
            s: value(found, "bcdr_job_state", **labels, state=s)
            for s in ("ok", "partial", "failed", "running", "never")
        }
        assert states == {"ok": 0, "partial": 0, "failed": 0, "running": 0, "never": 1}
        assert value(found, "bcdr_last_success_timestamp_seconds", **labels) == 0
        assert value(found, "bcdr_last_attempt_timestamp_seconds", **labels) == 0
        assert value(found, "bcdr_next_run_timestamp_seconds", **labels) > NOW.timestamp()
    ckpt = {"plan": "mon", "job": "ckpt", "kind": "backup"}
    assert value(found, "bcdr_recovery_point_timestamp_seconds", **ckpt) == 0
    assert value(found, "bcdr_rpo_target_seconds", **ckpt) == 26 * 3600
    next_ckpt = datetime(2026, 11, 3, 2, 30, tzinfo=UTC).timestamp()
    assert value(found, "bcdr_next_run_timestamp_seconds", **ckpt) == next_ckpt
    assert value(found, "bcdr_metrics_written_timestamp_seconds", host=socket.gethostname()) == (
        NOW.timestamp()
    )
    # values print as Prometheus prints them: no 17-digit noise
    assert f"}} {next_ckpt / 1e9:.8g}e+09" in text.replace(".0e+09", "e+09")
    assert not re.search(r"\d{16,}", text)


def test_metrics_follow_real_runs(tmp_path: Path, history: History) -> None:
    plan = _plan(tmp_path)
    clock = FakeClock(NOW)
    out = tmp_path / "metrics" / "bcdr.prom"
    outcomes = {o.job: o for o in Scheduler(history, clock).tick(plan, metrics=out)}
    assert {o.status for o in outcomes.values()} == {"ok"}, outcomes
    text = out.read_text()
    assert promtool("check", "metrics", stdin=text).returncode == 0
    assert oct(out.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in out.parent.iterdir()] == ["bcdr.prom"]  # no temporary left
    found = samples(text)
    ckpt = {"plan": "mon", "job": "ckpt", "kind": "backup"}
    snap = outcomes["ckpt"].result.backup.snapshot  # type: ignore[union-attr]
    assert value(found, "bcdr_job_state", **ckpt, state="ok") == 1
    assert value(found, "bcdr_job_state", **ckpt, state="never") == 0
    assert value(found, "bcdr_last_success_timestamp_seconds", **ckpt) == NOW.timestamp()
    assert value(found, "bcdr_last_attempt_timestamp_seconds", **ckpt) == NOW.timestamp()
    assert value(found, "bcdr_recovery_point_timestamp_seconds", **ckpt) == (
        datetime.fromisoformat(snap.time).timestamp()
    )
    assert value(found, "bcdr_last_added_bytes", **ckpt) == snap.stats["bytes_added"] > 30_000
    assert value(found, "bcdr_last_duration_seconds", **ckpt) > 0
    assert value(found, "bcdr_failures_total", **ckpt) == 0
    # the drill's RTO and RPO against its targets, as its report measured them
    drill = {"plan": "mon", "job": "drill", "kind": "drill"}
    report = outcomes["drill"].result.drill  # type: ignore[union-attr]
    assert value(found, "bcdr_drill_rto_seconds", **drill) == pytest.approx(report.rto_s)
    assert value(found, "bcdr_drill_rto_target_seconds", **drill) == 600
    assert value(found, "bcdr_drill_rpo_seconds", **drill) == pytest.approx(report.rpo_s)
    assert value(found, "bcdr_drill_verified_bytes", **drill) == report.bytes_verified == 39_000
    # the repository's size and snapshots, as `bcdr stats` counts them
    stats = run_process("stats", "--repo", tmp_path / "repo", "--json").json()
    repo = {"plan": "mon", "repository": "local"}
    assert value(found, "bcdr_repository_stored_bytes", **repo) == stats["stored_bytes"]
    assert value(found, "bcdr_repository_snapshots", **repo) == stats["snapshots"] == 1
    # the evidence head the jobs appended, and the check state of nothing checked yet
    heads = [k for k in found if k[0] == "bcdr_evidence_head_sequence"]
    assert heads and all(found[k] >= 1 for k in heads)


def test_a_job_shows_as_running_while_it_runs(tmp_path: Path, history: History) -> None:
    plan = _plan(tmp_path)
    out = tmp_path / "m.prom"
    seen: dict[str, float] = {}

    def runner(plan: Plan, name: str, clock: Clock) -> RunResult:
        found = samples(out.read_text())
        labels = {"plan": "mon", "job": name, "kind": plan.job(name)[0]}
        seen[name] = value(found, "bcdr_job_state", **labels, state="running")
        return run_job(plan, name, clock=clock)

    sched = Scheduler(history, FakeClock(NOW), runner=runner)
    sched.tick(plan, metrics=out)
    assert seen == {"ckpt": 1, "drill": 1, "verify": 1}
    found = samples(out.read_text())
    assert (
        value(found, "bcdr_job_state", plan="mon", job="ckpt", kind="backup", state="running") == 0
    )


def test_a_failing_job_that_never_succeeded(tmp_path: Path, history: History) -> None:
    f = tmp_path / "gone.yaml"
    f.write_text(
        "version: 1\nname: gone\ntimezone: UTC\nrepositories:\n  local:\n    url: repo\n"
        "backups:\n  gone:\n    paths: [data/gone]\n    repository: local\n"
        "    schedule: daily\n    rpo: 1d\n"
    )
    plan = load_plan(f)
    out = tmp_path / "m.prom"
    Scheduler(history, FakeClock(NOW)).tick(plan, metrics=out)
    found = samples(out.read_text())
    labels = {"plan": "gone", "job": "gone", "kind": "backup"}
    assert value(found, "bcdr_job_state", **labels, state="failed") == 1
    assert value(found, "bcdr_job_state", **labels, state="ok") == 0
    assert value(found, "bcdr_failures_total", **labels) == 1
    assert value(found, "bcdr_last_attempt_timestamp_seconds", **labels) == NOW.timestamp()
    assert value(found, "bcdr_last_success_timestamp_seconds", **labels) == 0
    assert value(found, "bcdr_recovery_point_timestamp_seconds", **labels) == 0
    assert ("bcdr_last_added_bytes", tuple(sorted(labels.items()))) not in found


def test_a_partial_backup_is_partial_not_ok(tmp_path: Path) -> None:
    """A backup that skipped a file it could not read (run without root's read-anything
    capability) is ``partial``, never ``ok``."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed for permission tests")
    plan = _plan(tmp_path)
    secret = tmp_path / "data" / "ckpt" / "secret.bin"
    secret.write_bytes(b"no access")
    secret.chmod(0)
    out = tmp_path / "m.prom"
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search"]
    drop.append("--bounding-set=-dac_override,-dac_read_search")
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "bcdr", "run", str(plan.file), "--job", "ckpt"]
        + ["--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    r = run_process("metrics", plan.file, "--output", out, "--state-dir", tmp_path / "state")
    assert r.code == 0, r.err
    found = samples(out.read_text())
    labels = {"plan": "mon", "job": "ckpt", "kind": "backup"}
    assert value(found, "bcdr_job_state", **labels, state="partial") == 1
    assert value(found, "bcdr_job_state", **labels, state="ok") == 0


def test_one_textfile_holds_every_plan_named_for_it(tmp_path: Path) -> None:
    """``tick a.yaml b.yaml --metrics-textfile F``: F has both plans, not the last one only."""
    a = _plan(tmp_path / "a", name="alpha")
    b = _plan(tmp_path / "b", name="beta")
    out = tmp_path / "all.prom"
    r = run_process("tick", a.file, b.file, "--metrics-textfile", out)
    assert r.code == 0, r.err
    found = samples(out.read_text())
    for plan in ("alpha", "beta"):
        labels = {"plan": plan, "job": "ckpt", "kind": "backup"}
        assert value(found, "bcdr_job_state", **labels, state="ok") == 1


def test_copies_lag_and_a_copy_never_made(tmp_path: Path, history: History) -> None:
    (tmp_path / "a-file").write_text("")  # no repository can be made beneath a file
    extra = f"  dr:\n    url: repo-dr\n  far:\n    url: {tmp_path}/a-file/repo\n"
    plan_file = tmp_path / "c.yaml"
    plan_file.write_text(
        "version: 1\nname: c\ntimezone: UTC\nrepositories:\n  local:\n    url: repo\n"
        + extra
        + "backups:\n  ckpt:\n    paths: [data]\n    repository: local\n    schedule: daily\n"
        "    rpo: 26h\n    copy_to: [dr, far]\n"
    )
    write_tree(tmp_path / "data", {"x": b"x" * 5000})
    plan = load_plan(plan_file)
    clock = FakeClock(NOW)
    [outcome] = Scheduler(history, clock).tick(plan, metrics=tmp_path / "m.prom")
    snap_time = datetime.fromisoformat(outcome.result.recovery_point).timestamp()  # type: ignore[union-attr, arg-type]
    found = samples((tmp_path / "m.prom").read_text())
    labels = {"plan": "c", "job": "ckpt", "kind": "backup"}
    copy = "bcdr_copy_recovery_point_timestamp_seconds"
    assert value(found, copy, **labels, repository="dr") == snap_time
    assert value(found, copy, **labels, repository="far") == 0  # never copied: the alert fires
    # the job failed (a copy did): its recovery point did not advance, so no lag is computed
    lag = ("bcdr_copy_lag_seconds", tuple(sorted({**labels, "repository": "far"}.items())))
    assert lag not in found
    (tmp_path / "a-file").unlink()  # the far repository can be made now
    clock.advance(timedelta(days=1))
    [outcome] = Scheduler(history, clock).tick(plan, metrics=tmp_path / "m.prom")
    assert outcome.status == "ok", outcome.message
    found = samples((tmp_path / "m.prom").read_text())
    newest = datetime.fromisoformat(outcome.result.recovery_point).timestamp()  # type: ignore[union-attr, arg-type]
    for where in ("dr", "far"):
        assert value(found, copy, **labels, repository=where) == newest
        assert value(found, "bcdr_copy_lag_seconds", **labels, repository=where) == 0
    # the far copy fails again a day later: its lag is that day, though the job failed
    shutil.move(tmp_path / "a-file", tmp_path / "far-moved")
    (tmp_path / "a-file").write_text("")
    clock.advance(timedelta(days=1))
    [outcome] = Scheduler(history, clock).tick(plan, metrics=tmp_path / "m.prom")
    assert outcome.status == "failed" and outcome.result is not None
    third = datetime.fromisoformat(outcome.result.recovery_point).timestamp()  # type: ignore[arg-type]
    found = samples((tmp_path / "m.prom").read_text())
    assert value(found, copy, **labels, repository="dr") == third
    assert value(found, copy, **labels, repository="far") == newest
    assert value(found, "bcdr_copy_lag_seconds", **labels, repository="far") == third - newest
    assert third - newest == pytest.approx(86400, abs=120)


def test_a_chain_cut_from_its_end_turns_chain_ok_to_0(tmp_path: Path, history: History) -> None:
    """The newest evidence record deleted: the next append notices (no extra reads), and so
    does `evidence verify`; an intact chain verified reads 1."""
    plan = _plan(tmp_path)
    clock = FakeClock(NOW)
    sched = Scheduler(history, clock)
    out = tmp_path / "m.prom"
    sched.tick(plan, metrics=out)
    state = history.state_dir
    env = {"BCDR_STATE_DIR": str(state)}
    assert run_process("evidence", "verify", "--repo", tmp_path / "repo", env=env).code == 0
    r = run_process("metrics", plan.file, "--state-dir", state, env=env)
    [ok] = [v for k, v in samples(r.out).items() if k[0] == "bcdr_evidence_chain_ok"]
    assert ok == 1
    newest = sorted((tmp_path / "repo" / "evidence").iterdir())[-1]
    newest.unlink()
    clock.advance(timedelta(days=1))
    sched.tick(plan, metrics=out)  # the backup appends: the chain is shorter than seen
    [broken] = [v for k, v in samples(out.read_text()).items() if k[0] == "bcdr_evidence_chain_ok"]
    assert broken == 0


def test_a_history_from_before_measures_is_upgraded(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "history.db")
    db.executescript(
        "CREATE TABLE runs (id INTEGER PRIMARY KEY, plan TEXT NOT NULL, job TEXT NOT NULL,"
        " kind TEXT NOT NULL, slot TEXT, attempt INTEGER NOT NULL DEFAULT 1, started TEXT NOT"
        " NULL, finished TEXT, status TEXT NOT NULL, duration_s REAL, message TEXT NOT NULL"
        " DEFAULT '', transient INTEGER NOT NULL DEFAULT 0, snapshot TEXT, recovery_point"
        " TEXT, bytes_added INTEGER, host TEXT NOT NULL, pid INTEGER NOT NULL, source TEXT"
        " NOT NULL);"
        "INSERT INTO runs VALUES (1,'mon','ckpt','backup',NULL,1,'2026-11-01T00:00:00+00:00',"
        "'2026-11-01T00:01:00+00:00','ok',60,'',0,'abc','2026-11-01T00:00:00+00:00',5,'h',1,'run');"
    )
    db.commit()
    db.close()
    history = History(state)
    try:
        plan = _plan(tmp_path)
        found = samples(render_metrics([plan], history, NOW))
        labels = {"plan": "mon", "job": "ckpt", "kind": "backup"}
        assert value(found, "bcdr_recovery_point_timestamp_seconds", **labels) == (
            datetime(2026, 11, 1, tzinfo=UTC).timestamp()
        )
        assert history.runs("mon", "ckpt")[0].measures == {}
    finally:
        history.close()


def test_metrics_command_prints_writes_and_refuses_clearly(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    r = run_process("metrics", plan.file, "--state-dir", state)
    assert r.code == 0, r.err
    assert promtool("check", "metrics", stdin=r.out).returncode == 0
    assert 'bcdr_job_state{job="ckpt",kind="backup",plan="mon",state="never"} 1.0' in r.out
    r = run_process("metrics", plan.file, "--state-dir", state, "--write")
    assert r.code == 2
    assert "names no metrics_textfile" in r.err and "--output" in r.err
    assert "Traceback" not in r.err
    out = tmp_path / "node" / "bcdr.prom"
    r = run_process("metrics", plan.file, "--state-dir", state, "-o", out)
    assert r.code == 0 and oct(out.stat().st_mode & 0o777) == "0o640"
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    r = run_process("metrics", plan.file, "--state-dir", state, "-o", blocked / "x.prom")
    assert r.code == 2 and "cannot write the metrics file" in r.err and "Traceback" not in r.err


# --- alert rules ------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    r = promtool("check", "rules", RULES)
    assert r.returncode == 0, r.stdout + r.stderr
    r = promtool("test", "rules", RULES.with_name("bcdr-alerts.test.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    # every rule queries only metrics bcdr writes
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    for rule in rules:
        for name in re.findall(r"\bbcdr_\w+", rule["expr"]):
            assert _written(name), (rule["alert"], name)


def _written(sample: str) -> bool:
    name = sample.removesuffix("_total")
    return name in METRICS


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    return record(tmp_path_factory.mktemp("story"))


def _promtool_series(rec: Recording) -> list[dict[str, str]]:
    out = []
    for (name, labels), values in rec.series().items():
        text = ",".join(f'{k}="{v}"' for k, v in labels)
        shown = [
            "_" if v is None else repr(shifted(v, name.removesuffix("_total"))) for v in values
        ]
        out.append({"series": f"{name}{{{text}}}", "values": " ".join(shown)})
    return out


def test_alerts_fire_and_stay_quiet_on_series_a_real_scheduler_wrote(
    recording: Recording, tmp_path: Path
) -> None:
    """The story in tests/monitoring_series.py, replayed through the shipped rules."""
    host = socket.gethostname()
    lost = {"plan": "ml", "job": "lost", "kind": "backup"}
    ckpt = {"plan": "ml", "job": "ckpt", "kind": "backup"}

    def alert(name: str, severity: str, **labels: str) -> dict[str, str]:
        return {"alertname": name, "alertstate": "firing", "severity": severity, **labels}

    always = [
        alert("BcdrJobFailed", "warning", **lost, state="failed"),
        alert("BcdrRecoveryPointTooOld", "critical", **lost),
    ]
    chain = alert("BcdrEvidenceChainBroken", "critical", repository_id=recording.repository_id)
    stale = alert("BcdrMetricsStale", "warning", host=host)
    overdue = [
        alert("BcdrJobOverdue", "warning", plan="ml", job=j, kind=k)
        for j, k in (
            ("ckpt", "backup"),
            ("lost", "backup"),
            ("restore", "drill"),
            ("verify", "check"),
        )
    ]
    expected = {
        "12h": always,  # Monday noon: ckpt, its copy, the drill and the check are fine
        "56h": [*always, chain],  # Wednesday 08:00: the append at 02:30 found the cut
        "62h": [*always, chain, stale],  # the scheduler stopped at 60h
        "80h": [
            *always,
            chain,
            stale,
            *overdue,
            alert("BcdrRecoveryPointTooOld", "critical", **ckpt),  # 02:30 Wed + 26h = 76.5h
            alert("BcdrCopyBehind", "warning", **ckpt, repository="dr"),
        ],
    }
    assert SCHEDULER_STOPS == timedelta(hours=60) and SCRAPE == timedelta(minutes=5)
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "5m",
                "input_series": _promtool_series(recording),
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": at,
                        "exp_samples": [
                            {
                                "labels": "ALERTS{"
                                + ",".join(f'{k}="{v}"' for k, v in sorted(a.items()))
                                + "}",
                                "value": 1,
                            }
                            for a in alerts
                        ],
                    }
                    for at, alerts in expected.items()
                ],
            }
        ],
    }
    file = tmp_path / "replay.test.yml"
    file.write_text(yaml.safe_dump(tests, width=1 << 20))
    r = promtool("test", "rules", file)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def test_the_recording_tells_the_story_it_claims(recording: Recording) -> None:
    """The replay above means something only if the series are what the story says."""
    noon = recording.at(timedelta(hours=12))
    ckpt = {"plan": "ml", "job": "ckpt", "kind": "backup"}
    assert value(noon, "bcdr_job_state", **ckpt, state="ok") == 1
    assert value(noon, "bcdr_job_state", plan="ml", job="restore", kind="drill", state="ok") == 1
    last = recording.at(timedelta(hours=84) - SCRAPE)
    assert last == recording.at(SCHEDULER_STOPS)  # frozen after the stop
    assert value(last, "bcdr_recovery_point_timestamp_seconds", **ckpt) == (
        datetime(2026, 11, 4, 2, 30, tzinfo=UTC).timestamp()
    )


# --- the dashboard ----------------------------------------------------------------------------


def _targets(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def test_every_dashboard_query_names_a_metric_bcdr_writes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
    assert len(panels) >= 8
    for panel in panels:
        assert panel.get("targets"), panel["title"]
    for title, expr in _targets(dashboard):
        names = re.findall(r"\bbcdr_\w+", expr)
        assert names, (title, expr)
        for name in names:
            assert _written(name), (title, name)
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            assert all(_written(n) for n in re.findall(r"\bbcdr_\w+", query)), query
    assert {i["name"] for i in dashboard["__inputs"]} == {"DS_PROMETHEUS"}


# --- logs -------------------------------------------------------------------------------------

TIME_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"=]+)')


def _logfmt(line: str) -> dict[str, str]:
    """A strict logfmt reading: the whole line is key=value pairs."""
    pairs = LOGFMT.findall(line)
    rebuilt = " ".join(f"{k}={v}" for k, v in pairs)
    assert rebuilt == line, f"not logfmt: {line!r}"
    return {k: (json.loads(v) if v.startswith('"') else v) for k, v in pairs}


def test_json_logs_have_time_level_message_host_pid_and_no_summary_off_a_tty(
    tmp_path: Path,
) -> None:
    plan = _plan(tmp_path)
    state = tmp_path / "state"
    r = run_process("tick", plan.file, "--state-dir", state, "--log-format", "json")
    assert r.code == 0, r.err
    assert r.out == ""  # no human summary beside the JSON in journald
    events = [json.loads(line) for line in r.err.splitlines()]
    assert [e["event"] for e in events] == ["job-start", "job-end"] * 3
    pids = {e["pid"] for e in events}
    assert len(pids) == 1 and pids != {os.getpid()}
    for e in events:
        assert TIME_MS.match(e["time"]), e
        assert e["level"] == "info" and e["host"] == socket.gethostname()
        assert e["plan"] == "mon" and e["job"] in ("ckpt", "drill", "verify")
        assert e["message"]
    end = [e for e in events if e["event"] == "job-end" and e["job"] == "ckpt"][0]
    assert end["message"].startswith("backup mon/ckpt: ok — snapshot ")
    # asked for, the summary comes back
    r = run_process("tick", plan.file, "--state-dir", state, "--summary")
    assert r.code == 0 and r.out.strip() == "nothing due"


def test_text_logs_are_logfmt_and_failures_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "version: 1\nname: p\ntimezone: UTC\nrepositories:\n  local:\n    url: repo\n"
        'backups:\n  gone:\n    paths: ["data/a dir \\"quoted\\""]\n    repository: local\n'
        "    schedule: daily\n"
    )
    r = run_process("tick", f, "--state-dir", tmp_path / "state")
    assert r.code == 1
    lines = [_logfmt(line) for line in r.err.splitlines()]
    end = [e for e in lines if e["event"] == "job-end"][0]
    assert end["level"] == "error" and end["status"] == "failed"
    assert 'a dir "quoted"' in end["msg"]
    assert TIME_MS.match(end["time"]) and end["host"] == socket.gethostname()
    # --quiet keeps the error, drops the info
    r = run_process("tick", f, "--state-dir", tmp_path / "state2", "--quiet")
    events = [_logfmt(line)["event"] for line in r.err.splitlines() if "=" in line]
    assert "job-end" in events and "job-start" not in events


def test_bcdr_log_records_join_the_json_stream(tmp_path: Path) -> None:
    """A warning of bcdr's own loggers (here: the evidence head cannot be kept, the state
    folder being a file) comes out as a JSON line, not plain text among them."""
    import io
    import logging

    from bcdr.scheduler.eventlog import EventLog, route_bcdr_logging

    stream = io.StringIO()
    log = EventLog(stream, fmt="json")
    route_bcdr_logging(log)
    try:
        logging.getLogger("bcdr.evidence").warning("head #%d not kept: %s", 7, "read-only")
    finally:
        logging.getLogger("bcdr").handlers.clear()
    [line] = stream.getvalue().splitlines()
    doc = json.loads(line)
    assert doc["level"] == "warning" and doc["message"] == "head #7 not kept: read-only"
    assert doc["logger"] == "bcdr.evidence" and doc["event"] == "log"


def test_metrics_and_log_writes_from_parallel_jobs_never_collide(
    tmp_path: Path, history: History
) -> None:
    plan = _plan(tmp_path, extra="max_parallel: 3\n")
    out = tmp_path / "m.prom"
    outcomes = Scheduler(history, FakeClock(NOW)).tick(plan, metrics=out)
    assert len(outcomes) == 3
    assert promtool("check", "metrics", stdin=out.read_text()).returncode == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_every_dashboard_panel_answers_from_a_real_prometheus(
    recording: Recording, tmp_path: Path
) -> None:
    """The recorded series backfilled into Debian's Prometheus: every panel's queries, as
    Grafana sends them, return data; the picture in docs/monitoring.md is made this way."""
    from tests.dashboard_preview import render

    out = tmp_path / "dashboard.png"
    answers = render(out, tmp_path, rec=recording)
    assert [a.panel["title"] for a in answers if a.empty] == []
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    by_title = {a.panel["title"]: a for a in answers}
    # at the end of the story: ckpt and lost are past their RPO, lost failed, the chain broken
    [(_, past)] = by_title["Jobs past their RPO"].results
    assert float(past[0]["value"][1]) == 2
    [(_, chain)] = by_title["Evidence chains intact"].results
    assert float(chain[0]["value"][1]) == 0


def test_a_new_host_publishes_what_the_evidence_holds(tmp_path: Path) -> None:
    """`bcdr metrics` on a host without history reads the repository's evidence first: the
    backup's recovery point and the drill's RTO are there, as the old host measured them."""
    plan = _plan(tmp_path)
    old, new = tmp_path / "old-host", tmp_path / "new-host"
    assert run_process("tick", plan.file, "--state-dir", old).code == 0
    before = samples(run_process("metrics", plan.file, "--state-dir", old).out)
    r = run_process("metrics", plan.file, "--state-dir", new)
    assert r.code == 0 and "read from its repositories' evidence" in r.err, r.err
    after = samples(r.out)
    drill = {"plan": "mon", "job": "drill", "kind": "drill"}
    for name in ("bcdr_drill_rto_seconds", "bcdr_drill_rto_target_seconds"):
        assert value(after, name, **drill) == pytest.approx(value(before, name, **drill))
    ckpt = {"plan": "mon", "job": "ckpt", "kind": "backup"}
    assert value(after, "bcdr_recovery_point_timestamp_seconds", **ckpt) == value(
        before, "bcdr_recovery_point_timestamp_seconds", **ckpt
    )
    assert value(after, "bcdr_job_state", **drill, state="ok") == 1


def test_bcdr_run_keeps_the_plans_textfile_current(tmp_path: Path) -> None:
    plan = _plan(tmp_path, extra="metrics_textfile: node/bcdr.prom\n")
    state = tmp_path / "state"
    r = run_process("run", plan.file, "--job", "ckpt", "--state-dir", state)
    assert r.code == 0, r.err
    found = samples((tmp_path / "node" / "bcdr.prom").read_text())
    labels = {"plan": "mon", "job": "ckpt", "kind": "backup"}
    assert value(found, "bcdr_job_state", **labels, state="ok") == 1
    # a textfile that cannot be written is said; the job's result stands
    shutil.rmtree(tmp_path / "node")
    (tmp_path / "node").write_text("a file where the folder was")
    r = run_process("run", plan.file, "--job", "ckpt", "--state-dir", state)
    assert r.code == 0, r.err
    assert r.err.count("warning: metrics not written") == 1, r.err
    assert "cannot write the metrics file: a file is in the way of its folder" in r.err
    assert "Traceback" not in r.err


# --- Azure Monitor Logs -----------------------------------------------------------------------

RULE = "dcr-0123456789abcdef0123456789abcdef"
STREAM = "Custom-BcdrEvents"


def _monitored_plan(tmp_path: Path, endpoint: str) -> Plan:
    return _plan(
        tmp_path,
        extra=f"azure_monitor:\n  endpoint: {endpoint}\n  rule_id: {RULE}\n"
        f"  stream: {STREAM}\n  token_env: BCDR_T_MONITOR\n",
    )


def test_job_results_and_evidence_heads_reach_azure_monitor(tmp_path: Path) -> None:
    from tests.monitor_server import MonitorServer

    (tmp_path / "srv").mkdir()
    with MonitorServer(tmp_path / "srv", "mon-token", RULE, STREAM) as server:
        plan = _monitored_plan(tmp_path, server.url)
        env = {"BCDR_T_MONITOR": "mon-token", "REQUESTS_CA_BUNDLE": str(server.ca_file)}
        r = run_process("tick", plan.file, "--state-dir", tmp_path / "state", env=env)
        assert r.code == 0, r.err
        assert {q["authorization"] for q in server.requests} == {"Bearer mon-token"}
        results = {row["Job"]: row for row in server.rows if row["Record"] == "job-result"}
        assert set(results) == {"ckpt", "drill", "verify"}
        ckpt = results["ckpt"]
        assert ckpt["Status"] == "ok" and ckpt["Kind"] == "backup" and ckpt["BytesAdded"] > 0
        assert ckpt["Snapshot"] and ckpt["EvidenceRecord"] and ckpt["Host"]
        assert TIME_MS.match(ckpt["TimeGenerated"])
        assert results["drill"]["Measures"]["rto_target_s"] == 600
        heads = [row for row in server.rows if row["Record"] == "evidence-head"]
        listed = run_process("evidence", "list", "--repo", tmp_path / "repo", "--json").json()
        assert heads[-1]["EvidenceRecord"] == listed[-1]["id"]
        assert "mon-token" not in json.dumps(server.rows)  # no secret in a row
        spool = list((tmp_path / "state" / "azure-monitor").glob("*.jsonl"))
        assert [p.read_text() for p in spool] == [""]  # all sent


def test_rows_that_cannot_be_sent_wait_and_go_with_the_next_tick(tmp_path: Path) -> None:
    from tests.monitor_server import MonitorServer

    (tmp_path / "srv").mkdir()
    with MonitorServer(tmp_path / "srv", "mon-token", RULE, STREAM) as server:
        plan = _monitored_plan(tmp_path, server.url)
        env = {"BCDR_T_MONITOR": "mon-token", "REQUESTS_CA_BUNDLE": str(server.ca_file)}
        server.fail_next(1000)  # the endpoint is down for the whole first tick
        r = run_process("tick", plan.file, "--state-dir", tmp_path / "state", "--summary", env=env)
        assert r.code == 0, r.err  # the jobs' results stand
        assert "not sent to Azure Monitor (HTTP 503" in r.out
        assert "row(s) kept for the next run" in r.out
        assert server.rows == []
        server.recover()
        r = run_process("tick", plan.file, "--state-dir", tmp_path / "state", env=env)
        assert r.code == 0, r.err  # nothing due: the waiting rows go all the same
        jobs = sorted(row["Job"] for row in server.rows if row["Record"] == "job-result")
        assert jobs == ["ckpt", "drill", "verify"]
        # a wrong token is said, and the rows wait again
        r = run_process(
            "run",
            plan.file,
            "--job",
            "ckpt",
            "--state-dir",
            tmp_path / "state",
            env={**env, "BCDR_T_MONITOR": "wrong"},
        )
        assert r.code == 0 and "not sent to Azure Monitor (HTTP 401" in r.out + r.err


def test_an_azure_monitor_section_is_checked(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(
        "version: 1\nname: p\nrepositories:\n  local:\n    url: repo\nazure_monitor:\n"
        "  endpoint: http://dce.example\n  rule_id: dcr-123\n  stream: Bcdr\n"
    )
    r = run_process("validate", f)
    assert r.code == 2
    for line in ("p.yaml:7:13: azure_monitor.endpoint", "azure_monitor.rule_id"):
        assert line in r.out, r.out
    assert "azure_monitor.stream" in r.out and "3 problem(s)" in r.out
    assert "https://HOST" in r.out and "dcr- and 32 hex digits" in r.out


def test_the_spool_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    """While a process holds the spool (sending), another's job result waits for it instead
    of taking the same rows, or removing lines it did not send."""
    import time as _time

    from bcdr.cloud.azmonitor import Spool

    spool = Spool(tmp_path, "https://dce.example", RULE, STREAM)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bcdr.cloud.azmonitor import Spool;"
            f"s = Spool(Path({str(tmp_path)!r}), 'https://dce.example', {RULE!r}, {STREAM!r});"
            "c = s.locked(); c.__enter__(); s.add([{'Record': 'held'}]);"
            "print('held', flush=True); time.sleep(1.5); s.sent(1)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = _time.monotonic()
    with spool.locked():
        waited = _time.monotonic() - started
        spool.add([{"Record": "mine"}])
        rows, _, _ = spool.take()
    assert holder.wait(timeout=30) == 0
    assert waited >= 1.0  # it waited for the holder to finish sending
    assert rows == [{"Record": "mine"}]  # the holder's row was sent and removed, never twice
