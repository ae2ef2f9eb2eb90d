"""A copy that stops itself mid-way: ``python -m tests.copy_pause_helper SRC DST SNAP MARKER``.

It copies snapshot SNAP of the local repository SRC into the local repository DST through a
storage that, on DST's first index write (the copied packs are uploaded, the snapshot not yet
written), writes MARKER and stops with SIGSTOP: the test then acts on either repository
(forget, prune, unlock) while the copy holds its locks, and continues it with SIGCONT. Prints
the copy's result as JSON. Both repositories are unencrypted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bcdr.actions.copy import CopyRequest, run_copy
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.pause_helper import PauseStorage

if __name__ == "__main__":
    src_path, dst_path, snap, marker = sys.argv[1:5]
    src = Repository.open(LocalStorage(src_path))
    dst = Repository.open(PauseStorage(LocalStorage(dst_path), Path(marker)))
    result = run_copy(src, dst, CopyRequest(snapshots=(snap,)))
    dst.close()
    print(json.dumps({"snapshots": [s.to_dict() for s in result.snapshots], "notes": result.notes}))
