"""Memory and speed of the master index at repository scale (default 10 million chunks).

``python bench/index_scale.py make DIR N`` creates an encrypted repository in DIR whose index
files list N synthetic blobs (64 packs per file, like a backup writes them) without writing the
packs. ``python bench/index_scale.py load DIR`` opens it, loads the whole index, performs
100,000 lookups (half hits, half misses) and prints one JSON line. ``python
bench/index_scale.py check DIR`` runs ``bcdr check``'s structure pass on it instead (every pack
is reported missing: only the index files exist) and prints its time and peak RSS.
``bench/run.py`` runs them and, as the baseline, the same on an empty repository in the same
run: the difference in peak RSS is what the index costs.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bcdr.repository.hashing import object_name
from bcdr.repository.index import INDEX_AAD, MAGIC, PACK_RECORD
from bcdr.repository.masterindex import ENTRY_DTYPE
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage

PASSWORD = b"bench-password"
PER_PACK = 2000  # a 16 MiB pack of 8 KiB chunks
PACKS_PER_FILE = 64


def write_index(
    repo: Repository, ids: np.ndarray, on_pack: Callable[[str], None] | None = None
) -> None:
    """Index files listing the synthetic blobs ``ids`` (rows of four u64), ``PER_PACK`` per
    pack and ``PACKS_PER_FILE`` packs per file; ``on_pack(name)`` for each pack named."""
    rng = np.random.default_rng(12)
    n, made = len(ids), 0
    while made < n:
        parts = []
        for _ in range(PACKS_PER_FILE):
            count = min(PER_PACK, n - made)
            if count <= 0:
                break
            rec = np.zeros(count, dtype=ENTRY_DTYPE)
            rec["id"] = ids[made : made + count]
            rec["offset"] = np.arange(count, dtype=np.uint64) * 8192
            rec["stored"] = 8000
            rec["raw"] = 8192
            rec["codec"] = 1
            name = rng.bytes(32)
            if on_pack is not None:
                on_pack(name.hex())
            parts.append(PACK_RECORD.pack(name, count) + rec.tobytes())
            made += count
        stored = MAGIC + repo.cipher.seal(b"".join(parts), INDEX_AAD)
        repo.storage.put(f"index/{object_name(stored)}", stored)


def make(root: Path, n: int) -> None:
    repo = Repository.init(LocalStorage(root), password=PASSWORD)
    rng = np.random.default_rng(7)
    write_index(repo, rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64))


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def load(root: Path) -> None:
    started = time.monotonic()
    repo = Repository.open(LocalStorage(root), password=lambda: PASSWORD)
    repo.load_index()
    loaded = time.monotonic() - started
    rss_loaded = _current_rss_mib()
    ids = list(repo.index.blobs()) if len(repo.index) <= 100_000 else []
    if not ids:
        it = repo.index.blobs()
        ids = [next(it) for _ in range(min(50_000, len(repo.index)))]
    probes = ids[:50_000] + [os.urandom(32) for _ in range(100_000 - len(ids[:50_000]))]
    started = time.monotonic()
    hits = sum(1 for p in probes if repo.index.lookup(p) is not None)
    lookup_s = time.monotonic() - started
    print(
        json.dumps(
            {
                "entries": len(repo.index),
                "load_s": loaded,
                "lookups_per_s": len(probes) / lookup_s,
                "hits": hits,
                "column_bytes": repo.index.memory_bytes(),
                "rss_after_load_mib": rss_loaded,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def check(root: Path) -> None:
    from bcdr.repository.check import Checker

    started = time.monotonic()
    repo = Repository.open(LocalStorage(root), password=lambda: PASSWORD)
    report = Checker(repo).run()
    print(
        json.dumps(
            {
                "entries": len(repo.index),
                "check_s": time.monotonic() - started,
                "packs_missing": sum(
                    "is listed in the index but missing" in e for e in report.errors
                ),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "check":
        check(Path(sys.argv[2]))
    else:
        load(Path(sys.argv[2]))
