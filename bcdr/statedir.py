"""The host's state folder: run history, job locks and the evidence heads this host has seen.

One folder per host (or per user): ``$BCDR_STATE_DIR``, else ``$XDG_STATE_HOME/bcdr``, else
``/var/lib/bcdr`` for root, else ``~/.local/state/bcdr``. ``--state-dir`` on the scheduler's
commands sets ``$BCDR_STATE_DIR`` for the process, so every part of a run (and the jobs it
forks) writes to the same place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3

#: The environment variable naming the state folder.
STATE_ENV = "BCDR_STATE_DIR"


def default_state_dir() -> Path:
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    if os.environ.get("XDG_STATE_HOME"):
        return Path(os.environ["XDG_STATE_HOME"]) / "bcdr"
    if os.geteuid() == 0:
        return Path("/var/lib/bcdr")
    return Path.home() / ".local" / "state" / "bcdr"


def use_state_dir(path: str | os.PathLike[str] | None) -> Path:
    """The state folder a command asked for (``--state-dir``), or the default; made the
    process's own so evidence appends and forked jobs use it too."""
    if path:
        os.environ[STATE_ENV] = str(Path(path).resolve())
    return default_state_dir()


def open_state_db(folder: Path) -> sqlite3.Connection:
    """The state folder's ``history.db`` (run history and evidence heads), created private
    (0700 folder, 0600 file: it names hosts, paths and results), in WAL mode, autocommit.
    sqlite3 loads here, not with every command."""
    import sqlite3

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "history.db"
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        os.chmod(path, 0o600)
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    return db
