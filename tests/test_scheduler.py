"""The scheduler: which jobs run when (a fake clock through days and weeks, in the plan's time
zone, across both daylight-saving changes, with missed slots), locks, retries, crashes,
history, status, metrics, hooks. Jobs are real: plans back up real trees into local
repositories."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bcdr.actions.run import FAILED, JobResult, run_job
from bcdr.actions.tick import BUSY, Scheduler, retry_delay
from bcdr.clock import Clock, FakeClock
from bcdr.errors import TransientStorageError
from bcdr.plan.loader import load_plan
from bcdr.plan.model import Plan, secret_env_names
from bcdr.scheduler.due import due_slot
from bcdr.scheduler.history import History
from bcdr.scheduler.locks import job_lock, plan_slot
from bcdr.scheduler.status import RPO_MISSED, RPO_NONE, RPO_OK, job_statuses
from tests.conftest import write_tree

BERLIN = ZoneInfo("Europe/Berlin")


def _plan(tmp_path: Path, extra: str = "", tz: str = "Europe/Berlin") -> Plan:
    write_tree(tmp_path / "data", {"ckpt/a.bin": b"a" * 20_000, "ds/b.bin": b"b" * 10_000})
    f = tmp_path / "plan.yaml"
    f.write_text(
        f"""\
version: 1
name: sched
timezone: {tz}
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
checks:
  verify:
    repository: local
    schedule: weekly
    on: sunday
    at: "05:00"
    read_data: 100%
{extra}"""
    )
    return load_plan(f)


def _drive(
    sched: Scheduler, plan: Plan, clock: FakeClock, until: datetime, step: timedelta
) -> list[tuple[str, datetime, str]]:
    """Tick every ``step`` until ``until``; (job, local time, status) of every run."""
    ran = []
    while clock.now() < until:
        for o in sched.tick(plan):
            ran.append((o.job, clock.now().astimezone(plan.timezone.zone), o.status))
        clock.advance(step)
    return ran


@pytest.fixture
def history(tmp_path: Path) -> Iterator[History]:
    h = History(tmp_path / "state")
    yield h
    h.close()


@pytest.mark.parametrize(
    "start",
    [datetime(2026, 3, 23, 0, 0, tzinfo=BERLIN), datetime(2026, 10, 19, 0, 0, tzinfo=BERLIN)],
    ids=["spring-forward", "fall-back"],
)
def test_jobs_run_exactly_on_their_slots_for_two_weeks_across_dst(
    tmp_path: Path, history: History, start: datetime
) -> None:
    plan = _plan(tmp_path)
    clock = FakeClock(start.astimezone(UTC))
    sched = Scheduler(history, clock)
    ran = _drive(sched, plan, clock, clock.now() + timedelta(days=14), timedelta(minutes=10))
    # first tick: both jobs at once (no recovery point yet), then on their slots only
    assert [(j, t) for j, t, _ in ran[:2]] == [("ckpt", start), ("verify", start)]
    rest = ran[2:]
    assert all(s == "ok" for _, _, s in ran), ran
    backups = [t for j, t, _ in rest if j == "ckpt"]
    checks = [t for j, t, _ in rest if j == "verify"]
    assert [t.date() for t in backups] == [(start + timedelta(days=d)).date() for d in range(14)], (
        "exactly one backup per local day"
    )
    dst_day = [t for t in backups if t.utcoffset() != backups[0].utcoffset()]
    for t in backups:
        if start.month == 3 and t.date().isoformat() == "2026-03-29":
            assert (t.hour, t.minute) == (3, 0)  # 02:30 does not exist that night
        else:
            assert (t.hour, t.minute) == (2, 30), t
    assert dst_day, "the two weeks cross a daylight-saving change"
    assert [(t.weekday(), t.hour) for t in checks] == [(6, 5), (6, 5)]
    # the history has one row per run, and the recovery points are the backups
    assert len(history.runs("sched", "ckpt")) == 15
    assert len(history.runs("sched", "verify")) == 3


def test_missed_slots_run_once_and_catch_up_false_waits(tmp_path: Path, history: History) -> None:
    plan = _plan(tmp_path)
    start = datetime(2026, 11, 2, 3, 0, tzinfo=BERLIN)
    clock = FakeClock(start.astimezone(UTC))
    sched = Scheduler(history, clock)
    assert {o.job for o in sched.tick(plan)} == {"ckpt", "verify"}
    clock.advance(timedelta(days=3, hours=6))  # machine off: three 02:30 slots missed
    outcomes = sched.tick(plan)
    assert [(o.job, o.slot) for o in outcomes] == [
        ("ckpt", datetime(2026, 11, 5, 2, 30, tzinfo=BERLIN).isoformat())
    ]
    assert sched.tick(plan) == []  # once, not once per missed slot

    late = _plan(tmp_path / "late", extra="catch_up: false\n")
    clock2 = FakeClock(datetime(2026, 11, 2, 2, 31, tzinfo=BERLIN).astimezone(UTC))
    h2 = History(tmp_path / "state2")
    s2 = Scheduler(h2, clock2)
    assert {o.job for o in s2.tick(late)} == {"ckpt"}  # fresh slot (within the grace)
    clock2.advance(timedelta(days=2, hours=5))  # 07:31 two days later: slot missed
    assert s2.tick(late) == []
    clock2.set(datetime(2026, 11, 5, 2, 35, tzinfo=BERLIN).astimezone(UTC))
    assert [o.job for o in s2.tick(late)] == ["ckpt"]
    h2.close()


def test_due_slot_rules() -> None:
    tz = ZoneInfo("UTC")
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert due_slot("0 2 * * *", tz, None, now) == datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert due_slot("0 2 * * *", tz, None, now, catch_up=False) is None
    last = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)
    assert due_slot("0 2 * * *", tz, last, now) is None
    assert due_slot("0 12 * * *", tz, last, now) == now  # a tick exactly on the slot serves it


def test_one_run_per_job_across_processes_and_max_parallel(
    tmp_path: Path, history: History
) -> None:
    plan = _plan(tmp_path)
    clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    sched = Scheduler(history, clock)
    held = job_lock(history.state_dir, "sched", "ckpt")  # "another process" runs ckpt
    assert held.acquire()
    outcomes = {o.job: o for o in sched.tick(plan)}
    assert outcomes["ckpt"].status == BUSY and "already running" in outcomes["ckpt"].message
    # the other job still runs (and fails: no backup has created the repository yet)
    assert outcomes["verify"].status == "failed" and "repository" in outcomes["verify"].message
    assert history.runs("sched", "ckpt") == []  # nothing recorded for a run that did not start
    held.release()
    assert [o.job for o in sched.tick(plan)] == ["ckpt"]  # its slot is still due
    # max_parallel 1: with the plan's only seat taken, nothing else starts
    seat = plan_slot(history.state_dir, "sched", 1)
    assert seat is not None
    clock.advance(timedelta(days=1))
    assert [o.status for o in sched.tick(plan)] == [BUSY]
    seat.release()


class _Flaky:
    """Fails the first ``n`` attempts the way an unreachable storage does, then runs the job."""

    def __init__(self, n: int):
        self.n = n
        self.calls = 0

    def __call__(self, plan: Plan, name: str, clock: Clock) -> JobResult:
        self.calls += 1
        if self.calls <= self.n:
            exc = TransientStorageError("storage unreachable (test)")
            return JobResult(name, "backup", FAILED, str(exc), transient=True)
        return run_job(plan, name, clock=clock)


def test_transient_failures_are_retried_with_backoff_and_permanent_ones_are_not(
    tmp_path: Path, history: History
) -> None:
    plan = _plan(tmp_path, extra="retries: 3\nretry_wait: 10s\n")
    clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    flaky = _Flaky(2)
    sched = Scheduler(history, clock, runner=flaky, rng=random.Random(1))
    [ck] = [o for o in sched.tick(plan) if o.job == "ckpt"]
    assert ck.status == "ok" and ck.attempts == 3
    rows = list(reversed(history.runs("sched", "ckpt")))
    assert [(r.attempt, r.status, r.transient) for r in rows] == [
        (1, "failed", True),
        (2, "failed", True),
        (3, "ok", False),
    ]
    first, second = clock.slept[:2]
    assert 5 <= first < 15 and 10 <= second < 30  # 10s then 20s, each with jitter
    assert retry_delay(10, 20, random.Random(0)) <= 3600 * 1.5  # capped
    # permanent: a missing path fails once, no retry, no sleep
    (tmp_path / "data" / "ckpt" / "a.bin").unlink()
    (tmp_path / "data" / "ckpt").rmdir()
    clock.advance(timedelta(days=1))
    before = len(clock.slept)
    [ck] = [o for o in Scheduler(history, clock).tick(plan) if o.job == "ckpt"]
    assert ck.status == "failed" and ck.attempts == 1 and len(clock.slept) == before
    # retries exhausted: 1 + retries attempts, then failed
    write_tree(tmp_path / "data", {"ckpt/a.bin": b"x"})
    clock.advance(timedelta(days=1))
    always = _Flaky(99)
    [ck] = [o for o in Scheduler(history, clock, runner=always).tick(plan) if o.job == "ckpt"]
    assert ck.status == "failed" and ck.attempts == 4 and always.calls == 4


class _Crash(BaseException):
    """The process dies in the middle of the job (nothing below catches it)."""


def test_a_crash_in_the_middle_of_a_job_is_recorded_and_the_slot_runs_again(
    tmp_path: Path, history: History
) -> None:
    plan = _plan(tmp_path)
    clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))

    def crash(plan: Plan, name: str, clock: Clock) -> JobResult:
        raise _Crash

    with pytest.raises(_Crash):
        Scheduler(history, clock, runner=crash).tick(plan)
    [row] = history.runs("sched", "ckpt")
    assert row.status == "running"
    clock.advance(timedelta(minutes=5))
    outcomes = {o.job: o for o in Scheduler(history, clock).tick(plan)}
    assert outcomes["ckpt"].status == "ok"
    assert any("ended with their process" in n for n in outcomes["ckpt"].notes)
    assert [r.status for r in history.runs("sched", "ckpt")] == ["ok", "crashed"]


def test_status_reports_rpo_from_the_newest_recovery_point(
    tmp_path: Path, history: History
) -> None:
    plan = _plan(tmp_path)
    clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    rows = {s.job: s for s in job_statuses(plan, history, clock.now())}
    assert rows["ckpt"].rpo_status == RPO_NONE and rows["ckpt"].last_run is None
    sched = Scheduler(history, clock)
    sched.tick(plan)
    clock.advance(timedelta(hours=20))
    rows = {s.job: s for s in job_statuses(plan, history, clock.now())}
    ck = rows["ckpt"]
    assert ck.rpo_status == RPO_OK and ck.last_status == "ok" and ck.rpo == "26h"
    assert 20 * 3600 - 60 <= (ck.recovery_point_age_s or 0) <= 20 * 3600 + 60
    assert ck.next_run == "2026-11-03T02:30+01:00"
    assert rows["verify"].rpo_status == "no target"
    clock.advance(timedelta(hours=7))  # 27h: the 02:30 backup did not happen (no tick)
    assert {s.job: s for s in job_statuses(plan, history, clock.now())}["ckpt"].rpo_status == (
        RPO_MISSED
    )


class _Receiver(BaseHTTPRequestHandler):
    posts: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_hooks_run_with_facts_and_a_failing_hook_never_fails_the_job(
    tmp_path: Path, history: History
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    facts = tmp_path / "facts.txt"
    try:
        plan = _plan(
            tmp_path,
            extra=f"hooks:\n  on_success: 'echo $BCDR_JOB $BCDR_STATUS $BCDR_SNAPSHOT >> {facts}'"
            f"\n  on_failure: {url}\n",
        )
        clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
        outcomes = {o.job: o for o in Scheduler(history, clock).tick(plan)}
        lines = facts.read_text().splitlines()
        snap = outcomes["ckpt"].result.backup.snapshot.id  # type: ignore[union-attr]
        assert f"ckpt ok {snap}" in lines and any(ln.startswith("verify ok") for ln in lines)
        # a failure POSTs its facts to the URL
        (tmp_path / "data" / "ckpt" / "a.bin").unlink()
        (tmp_path / "data" / "ckpt").rmdir()
        clock.advance(timedelta(days=1))
        Scheduler(history, clock).tick(plan)
        [post] = _Receiver.posts
        assert post["job"] == "ckpt" and post["status"] == "failed"
        assert "do not exist" in str(post["message"])
        # a hook that fails is reported; the job's result stands
        bad = _plan(tmp_path / "bad", extra="hooks:\n  on_success: 'exit 3'\n")
        [ck, _] = Scheduler(History(tmp_path / "s3"), clock).tick(bad)
        assert ck.status == "ok"
        assert any("hook on_success failed: command exited with status 3" in n for n in ck.notes)
    finally:
        server.shutdown()


def test_hook_commands_get_no_secrets_unless_the_plan_passes_them(
    tmp_path: Path, history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook is often a script someone else maintains (a chat notifier): it must not see the
    repository password, the Azure keys or the variables the plan names as secrets."""
    secrets = {
        "PLAN_PW": "s1-plan-password",
        "BCDR_PASSWORD": "s2-bcdr-password",
        "AZURE_STORAGE_KEY": "s3-account-key",
        "AZURE_CLIENT_SECRET": "s4-client-secret",
        "AZURE_STORAGE_SAS_TOKEN": "s5-sas",
        "NOTIFY_TOKEN": "s6-passed-on-purpose",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    dump = tmp_path / "hook-env.txt"
    plan = _plan(
        tmp_path,
        extra=f"hooks:\n  on_success: 'env > {dump}'\n  pass_env: [NOTIFY_TOKEN]\n",
    )
    text = (
        (tmp_path / "plan.yaml")
        .read_text()
        .replace("    url: repo\n", "    url: repo\n    encryption: {password_env: PLAN_PW}\n")
    )
    (tmp_path / "plan.yaml").write_text(text)
    plan = load_plan(tmp_path / "plan.yaml")
    assert "PLAN_PW" in secret_env_names(plan)
    clock = FakeClock(datetime(2026, 11, 2, 3, 0, tzinfo=UTC))
    outcomes = {o.job: o for o in Scheduler(history, clock).tick(plan)}
    assert outcomes["ckpt"].status == "ok", outcomes["ckpt"].message
    seen = dump.read_text()
    assert "BCDR_JOB=" in seen and "PATH=" in seen
    for name, value in secrets.items():
        assert (value in seen) == (name == "NOTIFY_TOKEN"), name
