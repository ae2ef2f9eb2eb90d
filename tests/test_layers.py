"""The import-layer contract of ../shared/DESIGN.md ("Layers"), checked by import-linter
(pyproject.toml, [tool.importlinter]): imports point downward only. A module that imports a
layer above it fails this test and names the import chain."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_imports_point_downward_only() -> None:
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert tool, "import-linter is missing: `make install` installs the dev dependencies"
    r = subprocess.run([tool, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    # the contract is not vacuous: a leaf that imports a command-line module breaks it
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert tool
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "bcdr", copy / "bcdr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    units = copy / "bcdr" / "units.py"
    units.write_text(units.read_text() + "\nfrom bcdr.cli import render  # noqa\n")
    r = subprocess.run(
        [tool, "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode != 0 and "bcdr.units -> bcdr.cli.render" in r.stdout, r.stdout[-3000:]
