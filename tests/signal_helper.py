"""``python -m tests.signal_helper SIGNAL PREFIX bcdr ARGS...``: run the bcdr CLI with its
storage wrapped so that SIGNAL is sent to this process right after the first put of a key
starting with PREFIX (``snapshots/``: just after the commit point; ``data/``: mid-backup)."""

from __future__ import annotations

import os
import signal
import sys

import bcdr.actions.common as common
from bcdr.cli.main import main
from bcdr.storage.url import open_storage
from bcdr.storage.wrap import StorageWrapper


class SignalAfter(StorageWrapper):
    def __init__(self, inner: object, signum: int, prefix: str):
        super().__init__(inner)  # type: ignore[arg-type]
        self.signum, self.prefix, self.sent = signum, prefix, False

    def put(self, key: str, data: bytes) -> bool:
        result = self.inner.put(key, data)
        if key.startswith(self.prefix) and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)
        return result

    def put_parts(self, key: str, parts: object) -> bool:
        return self.put(key, b"".join(parts))  # type: ignore[arg-type]


if __name__ == "__main__":
    signum, prefix, argv = getattr(signal, sys.argv[1]), sys.argv[2], sys.argv[4:]
    # actions.common binds open_storage when it is imported: patch that binding
    common.__dict__["open_storage"] = lambda *a, **k: SignalAfter(
        open_storage(*a, **k), signum, prefix
    )
    raise SystemExit(main(argv))
