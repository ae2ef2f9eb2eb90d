"""Shared fixtures: run the CLI in-process or as a real process, make trees, make repos."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from bcdr.cli.main import main
from tests.azurite import Azurite

# CI replays the same examples every run (no flakes from a newly found edge case there);
# local runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Run history and job locks of `bcdr run`/`tick` go to a folder of this test session, never to
# the user's state folder (subprocesses inherit it).
# Removed when the session ends (each one left its folder in /tmp before).
os.environ["BCDR_STATE_DIR"] = tempfile.mkdtemp(prefix="bcdr-test-state-")
atexit.register(shutil.rmtree, os.environ["BCDR_STATE_DIR"], ignore_errors=True)

# Small chunks so that small test files span many chunks and packs.
SMALL_CHUNKS = "4096,4096,32768"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


#: The ``cli`` fixture: ``cli("backup", ...)`` runs bcdr in this process.
Cli = Callable[..., Result]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``bcdr ARGS`` in-process; returns Result(code, stdout, stderr)."""

    def run(*args: str) -> Result:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def run_process(
    *args: object,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
) -> Result:
    """Run ``bcdr ARGS`` as a real process (python -m bcdr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bcdr", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def repo(tmp_path: Path, cli: Cli) -> str:
    url = str(tmp_path / "repo")
    r = cli("init", "--repo", url, "--chunk-size", SMALL_CHUNKS)
    assert r.code == 0, r.err
    return url


def init_small(repo: Path, chunk_size: str = SMALL_CHUNKS, pack_size: int | None = None) -> None:
    """Init a repository with small chunks (and packs) so small test data spans many."""
    extra = ["--pack-size", str(pack_size)] if pack_size else []
    r = run_process("init", "--repo", repo, "--chunk-size", chunk_size, *extra)
    assert r.code == 0, r.err


@contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """Mount a small tmpfs at ``path`` (needs root; CI runs as root)."""
    path.mkdir(exist_ok=True)
    opts = ",".join([f"size={size}", *options])
    if os.system(f"mount -t tmpfs -o {opts} tmpfs {path} 2>/dev/null") != 0:
        pytest.fail("cannot mount a tmpfs here; this test needs root")
    try:
        yield path
    finally:
        os.system(f"umount {path}")


def temp_files(repo: str, fresh: str, idle: str, idle_for: timedelta) -> tuple[Path, Path]:
    """Two files in a local repository's tmp/ (where backup fills its packs): ``fresh``
    written now, ``idle`` last written ``idle_for`` ago."""
    tmp = Path(repo) / "tmp"
    tmp.mkdir(exist_ok=True)
    new, old = tmp / fresh, tmp / idle
    new.write_bytes(b"a pack being filled")
    old.write_bytes(b"half a pack")
    then = (datetime.now(UTC) - idle_for).timestamp()
    os.utime(old, (then, then))
    return new, old


def write_tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return base


def snapshot_tree(root: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything restore must reproduce, keyed by relative byte path."""
    out: dict[bytes, tuple[object, ...]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full), st.st_mtime_ns)
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_mtime_ns, f.read())
    return out


def restored_root(target: Path, source: Path) -> Path:
    return target / str(source.resolve()).lstrip("/")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """One in-memory Azurite for the session, on a free loopback port."""
    server = Azurite(tmp_path_factory.mktemp("azurite")).start()
    try:
        yield server
    finally:
        server.stop()
