"""A command loads only what it uses: the modules of other commands cost every command's
start-up (docs/performance.md). Checked in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib.util, json, sys
from bcdr.cli.main import main
code = main(sys.argv[1:])
lazy = importlib.util._LazyModule
print(json.dumps({"code": code, "loaded": sorted(
    name for name, mod in list(sys.modules.items()) if not isinstance(mod, lazy)
)}))
"""

#: Modules of plan, schedule, report and retention commands, and what only they need.
NOT_FOR_REPO_COMMANDS = [
    "bcdr.plan.model",
    "bcdr.plan.types",
    "bcdr.retention",
    "bcdr.scheduler.history",
    "bcdr.scheduler.install",
    "bcdr.geo.verify",
]


def _loaded(*args: str, env: dict[str, str]) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=True,
    )
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc["code"], set(doc["loaded"])


def test_repository_commands_do_not_load_other_commands_modules(tmp_path: Path) -> None:
    env = {"BCDR_PASSWORD": "pw"}
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    code, _ = _loaded("init", "--repo", str(repo), "--encrypt", "-q", env=env)
    assert code == 0
    code, loaded = _loaded("backup", "-q", "--repo", str(repo), str(src), env=env)
    assert code == 0 and "bcdr.archive.backup" in loaded  # what ran is seen
    assert sorted(loaded.intersection(NOT_FOR_REPO_COMMANDS)) == []
    # sqlite3 is loaded once the snapshot is recorded (the host keeps the evidence head), not
    # at start-up: a command that records nothing never loads it
    assert "sqlite3" in loaded
    code, loaded = _loaded("snapshots", "--repo", str(repo), env=env)
    assert code == 0 and sorted(loaded.intersection([*NOT_FOR_REPO_COMMANDS, "sqlite3"])) == []
