"""Writing a file bcdr produces (a report, a metrics textfile) atomically and privately.

Such files hold operational detail (host names, paths, job results, repository URLs): they
are created ``0640`` (owner reads and writes, its group reads: put the monitoring or audit
user in that group), whatever the umask, and replace the old file in one rename, so a reader
never sees half of one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

#: The mode of reports and metrics files (docs/security.md).
PRIVATE_FILE_MODE = 0o640


def write_atomic(path: Path, data: bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` (raises OSError): a temporary file beside it, created
    with ``mode`` exactly, written, synced, then renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not decide
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
