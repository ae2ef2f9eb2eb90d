"""Files bcdr writes that hold operational detail are private whatever the umask: reports and
metrics textfiles 0640, the run history 0600 in a 0700 state folder; a password file others
can read gets a warning."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcdr.scheduler.history import History
from bcdr.scheduler.metrics import write_metrics
from tests.conftest import run_process, write_tree
from tests.test_report import _real_plan_run


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the most careless setting: files would come out world-writable
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_metrics_and_history_are_private_whatever_the_umask(
    tmp_path: Path, open_umask: None
) -> None:
    prom = tmp_path / "textfiles" / "bcdr.prom"
    write_metrics(prom, "bcdr_up 1\n")
    assert _mode(prom) == 0o640 and prom.read_text() == "bcdr_up 1\n"
    write_metrics(prom, "bcdr_up 2\n")  # replaced, still private
    assert _mode(prom) == 0o640 and prom.read_text() == "bcdr_up 2\n"
    assert [p.name for p in prom.parent.iterdir()] == ["bcdr.prom"]
    history = History(tmp_path / "state")
    history.close()
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "history.db") == 0o600


def test_a_report_file_is_private(tmp_path: Path) -> None:
    plan = _real_plan_run(tmp_path, "")
    out = tmp_path / "audit" / "report.md"
    r = run_process("report", plan, "--out", out)
    assert r.code in (0, 4), r.out + r.err
    assert _mode(out) == 0o640


def test_a_password_file_others_can_read_gets_a_warning(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret-pw\n")
    repo = tmp_path / "repo"
    src = write_tree(tmp_path / "src", {"a": b"1"})
    for mode, warned in ((0o644, True), (0o600, False)):
        os.chmod(pw, mode)
        env = {"BCDR_PASSWORD_FILE": str(pw), "BCDR_PASSWORD": ""}
        if not repo.exists():
            assert run_process("init", "--repo", repo, "--encrypt", env=env).code == 0
        r = run_process("backup", "--repo", repo, src, env=env)
        assert r.code == 0, r.err
        assert ("can be read by its group or others (mode 0644)" in r.err) == warned, r.err
        assert "chmod 600" in r.err if warned else True
        assert "secret-pw" not in r.out + r.err
