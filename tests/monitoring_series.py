"""Metrics a real scheduler wrote through days of a fake clock, as Prometheus would have
scraped them: the alert-rule tests replay them in ``promtool test rules`` and the dashboard
preview backfills them into a real Prometheus.

The story (plan ``ml``, time zone UTC, from Monday 2026-11-02 00:00):

- ``ckpt`` backs up a real tree daily at 02:30 (RPO 26 h) and copies it to a second
  repository (``dr``); ``lost`` backs up a folder that does not exist, daily at 03:00 (RPO 26 h):
  it never succeeds; ``restore`` drills ``ckpt`` daily at 05:00 (RTO 10 m); ``verify`` checks
  the repository daily at 06:00.
- ``bcdr tick`` runs every 15 minutes; node_exporter is scraped every 5 (the file is served as
  it was between ticks).
- On day 2 at 12:00 someone deletes the newest evidence record; the next append finds the cut.
- On day 3 at 12:00 the scheduler stops (a disabled timer, a wedged host): the file stays as it
  was, and is scraped as it was until day 4 at 12:00.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bcdr.actions.tick import Scheduler
from bcdr.clock import FakeClock
from bcdr.plan.loader import load_plan
from bcdr.scheduler.history import History
from bcdr.statedir import STATE_ENV
from tests.conftest import write_tree

START = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
TICK = timedelta(minutes=15)
SCRAPE = timedelta(minutes=5)
EVIDENCE_CUT = timedelta(days=1, hours=12)  # from START
SCHEDULER_STOPS = timedelta(days=2, hours=12)
SCRAPING_ENDS = timedelta(days=3, hours=12)

PLAN = """\
version: 1
name: ml
timezone: UTC
repositories:
  main:
    url: repo
  dr:
    url: repo-dr
backups:
  ckpt:
    paths: [data/ckpt]
    repository: main
    schedule: daily
    at: "02:30"
    rpo: 26h
    copy_to: [dr]
  lost:
    paths: [data/lost]
    repository: main
    schedule: daily
    at: "03:00"
    rpo: 26h
drills:
  restore:
    backup: ckpt
    schedule: daily
    at: "05:00"
    rto: 10m
checks:
  verify:
    repository: main
    schedule: daily
    at: "06:00"
"""

Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


def samples(text: str) -> dict[Key, float]:
    """A textfile's samples, read by prometheus_client's own parser."""
    out: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@dataclass
class Recording:
    """What Prometheus scraped, every ``SCRAPE`` from ``START``."""

    scrapes: list[dict[Key, float]] = field(default_factory=list)
    repository_id: str = ""
    files: list[str] = field(default_factory=list)  # the textfile at each tick

    def at(self, offset: timedelta) -> dict[Key, float]:
        return self.scrapes[int(offset / SCRAPE)]

    def series(self) -> dict[Key, list[float | None]]:
        keys = sorted({k for s in self.scrapes for k in s})
        return {k: [s.get(k) for s in self.scrapes] for k in keys}


def record(folder: Path) -> Recording:
    """Run the story above with real jobs into ``folder``; the scrapes."""
    write_tree(folder / "data", {"ckpt/model.bin": b"w" * 200_000, "ckpt/opt.bin": b"o" * 50_000})
    (folder / "plan.yaml").write_text(PLAN)
    plan = load_plan(folder / "plan.yaml")
    state_before = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(folder / "state")  # evidence heads beside the history
    history = History(folder / "state")
    clock = FakeClock(START)
    textfile = folder / "metrics" / "bcdr.prom"
    sched = Scheduler(history, clock)
    out = Recording()
    text = ""
    cut = False
    try:
        while clock.now() < START + SCRAPING_ENDS:
            elapsed = clock.now() - START
            if elapsed < SCHEDULER_STOPS and elapsed % TICK == timedelta(0):
                if elapsed >= EVIDENCE_CUT and not cut:
                    newest = sorted((folder / "repo" / "evidence").iterdir())[-1]
                    newest.unlink()
                    cut = True
                sched.tick(plan, textfile)
                text = textfile.read_text()
                out.files.append(text)
            out.scrapes.append(samples(text))
            clock.advance(SCRAPE)
    finally:
        history.close()
        if state_before is None:
            os.environ.pop(STATE_ENV, None)
        else:
            os.environ[STATE_ENV] = state_before
    out.repository_id = _repository_id(folder / "repo")
    return out


def _repository_id(repo: Path) -> str:
    from bcdr.actions.common import open_repo

    r = open_repo(str(repo))
    try:
        return r.config.id
    finally:
        r.close()


def shifted(value: float, name: str) -> float:
    """promtool's clock starts at 0: timestamps move back by START (0, "never", stays as far
    before the first scrape as it was)."""
    return value - START.timestamp() if name.endswith("_timestamp_seconds") else value
