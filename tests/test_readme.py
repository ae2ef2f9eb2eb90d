"""The README's local commands, run as pasted (issue 35, point 4): the lines of its shell
blocks that use the quickstart plan and its repository, in order, in a copy of the project
with the demo data `make run` makes. Lines that need a cloud account, a Slurm cluster or
folders such as /data are left out (their commands are tested elsewhere)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bcdr.demo import make_demo_data

ROOT = Path(__file__).resolve().parent.parent
LOCAL = ("plans/quickstart.yaml", ".bcdr/quickstart-repo", "plan init")
ELSEWHERE = (
    "azure://",
    "/data/",
    "/lustre/",
    "/scratch/",
    "/backups/",
    "schedule ",
    "plans/examples",
)


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [
        line
        for line in lines
        if line.startswith("bcdr ")
        and any(k in line for k in LOCAL)
        and not any(k in line for k in ELSEWHERE)
    ]


def test_the_readme_quickstart_commands_run_as_pasted(tmp_path: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 8, commands  # the README still shows them
    work = tmp_path / "project"
    shutil.copytree(ROOT / "plans", work / "plans")
    make_demo_data(work / "demo")
    env_bin = tmp_path / "bin"
    env_bin.mkdir()
    (env_bin / "bcdr").write_text(f'#!/bin/sh\nexec {sys.executable} -m bcdr "$@"\n')
    (env_bin / "bcdr").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{env_bin}:{os.environ['PATH']}",
        "BCDR_STATE_DIR": str(tmp_path / "st"),
    }
    for line in commands:
        proc = subprocess.run(
            ["sh", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode in (0, 4), f"{line}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, line
    assert (work / "my-plan.yaml").exists() and (work / "q4.json").exists()
