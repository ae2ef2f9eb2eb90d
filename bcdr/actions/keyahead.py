"""Start deriving the password's key of a repository before a command has loaded its code.

scrypt takes 0.15 s and releases the GIL: started in a thread right after the arguments are
parsed, it runs while the command's modules load, and opening the repository takes the result
(bcdr/repository/kdf.py). Light on purpose: this module loads before any of the command's.
"""

from __future__ import annotations

import os
import stat
from urllib.parse import urlparse

from bcdr.errors import BcdrError
from bcdr.password import PASSWORD_ENV, PASSWORD_FILE_ENV, read_password
from bcdr.repository.kdf import derive_ahead
from bcdr.storage.url import StorageSpec, open_storage


def derive_key_ahead(spec: StorageSpec) -> bool:
    """For a local repository with the password in the environment (or in a regular file it
    names): read its key file and start deriving the key now. True when started.

    Azure repositories are left to the command: reading their key file here would cost
    requests, and retries on an unreachable endpoint, before the command even starts. Never
    fails: opening the repository reports whatever is wrong."""
    try:
        if urlparse(spec.url).scheme == "azure":
            return False
        if not os.environ.get(PASSWORD_ENV):
            # Read ahead only from a regular file: a pipe (BCDR_PASSWORD_FILE=<(...)) or FIFO
            # gives its content once, and opening the repository must read it then.
            path = os.environ.get(PASSWORD_FILE_ENV)
            if not path or not stat.S_ISREG(os.stat(path).st_mode):
                return False
        password = read_password()
        if password is None:
            return False
        storage = open_storage(spec)
        try:
            keys = sorted(info.key for info in storage.list("keys/"))
            return bool(keys) and derive_ahead(storage.get(keys[0]), password)
        finally:
            storage.close()
    except (BcdrError, OSError, ValueError):
        return False
