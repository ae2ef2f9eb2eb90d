"""Prune memory at repository scale (default one million chunks).

``python bench/prune_scale.py make DIR N`` builds an unencrypted repository whose index lists N
synthetic chunks in packs of 2,000 (the pack files exist but hold no real data: prune's mark
and sweep read indexes, snapshots and trees, never the chunks, unless they repack; the bench
runs with ``--max-unused 100`` so nothing is repacked). Three snapshots of real trees (100
files of 1,000 chunks per directory) refer to chunks [0, 0.3N), [0.6N, N) and [0, N); the
third is forgotten, so 30% of the packs become unused. ``bench/run.py`` then runs ``bcdr prune
--grace 0`` as a child and reports its peak RSS and wall time against the same command on an
empty repository (the baseline) and against loading the index alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from index_scale import write_index  # beside this file

from bcdr.repository.pack import TREE, pack_key
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, Node, encode_tree
from bcdr.storage.local import LocalStorage

PER_PACK = 2000
PACKS_PER_FILE = 64
PER_FILE = 1000  # chunks per file node
FILES_PER_DIR = 100


def _ids(n: int) -> np.ndarray:
    return np.random.default_rng(11).integers(0, 2**63, size=(n, 4), dtype=np.uint64)


def _index(repo: Repository, ids: np.ndarray) -> None:
    def present(pack: str) -> None:  # the pack exists, holding no real data
        repo.storage.put(pack_key(pack), b"\0" * 64)

    write_index(repo, ids, present)


def _snapshot(repo: Repository, blob_ids: list[bytes], label: str) -> str:
    dirs = []
    for d, lo in enumerate(range(0, len(blob_ids), PER_FILE * FILES_PER_DIR)):
        files = []
        for f, start in enumerate(
            range(lo, min(lo + PER_FILE * FILES_PER_DIR, len(blob_ids)), PER_FILE)
        ):
            content = blob_ids[start : start + PER_FILE]
            files.append(
                Node(f"f{f:04d}".encode(), FILE, size=8192 * len(content), content=content)
            )
        subtree = repo.save_blob(TREE, encode_tree(files))
        dirs.append(Node(f"d{d:05d}".encode(), DIR, subtree=subtree))
    root = repo.save_blob(TREE, encode_tree(dirs))
    snap = Snapshot(
        **repo.new_snapshot_fields(),
        hostname="bench",
        username="bench",
        paths=(f"/{label}",),
        tree=root.hex(),
        job=label,
    )
    return repo.save_snapshot(snap).id


def make(root: Path, n: int) -> None:
    repo = Repository.init(LocalStorage(root), password=None)
    ids = _ids(n)
    _index(repo, ids)
    as_bytes = [bytes(row) for row in ids.astype(">u8").view("S32").ravel()] if n else []
    as_bytes = [b.ljust(32, b"\0") for b in as_bytes]
    repo.load_index()
    _snapshot(repo, as_bytes[: int(n * 0.3)], "a")
    _snapshot(repo, as_bytes[int(n * 0.6) :], "b")
    forgotten = _snapshot(repo, as_bytes, "c")
    repo.flush()
    repo.close()
    repo.storage.delete(f"snapshots/{forgotten}")


if __name__ == "__main__":
    make(Path(sys.argv[2]), int(sys.argv[3]))
