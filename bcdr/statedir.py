"""The host's state folder: run history, job locks and the evidence heads this host has seen.

One folder per host (or per user): ``$BCDR_STATE_DIR``, else ``$XDG_STATE_HOME/bcdr``, else
``/var/lib/bcdr`` for root, else ``~/.local/state/bcdr``. ``--state-dir`` on the scheduler's
commands sets ``$BCDR_STATE_DIR`` for the process, so every part of a run (and the jobs it
forks) writes to the same place.
"""

from __future__ import annotations

import os
from pathlib import Path

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
