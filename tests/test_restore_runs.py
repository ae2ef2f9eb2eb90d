"""Restore reads a batch's small files in runs of neighbouring blobs, one request per run."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive.restore import Restorer
from bcdr.repository.pack import pack_key
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.conftest import write_tree


class CountingGets:
    def __init__(self, inner: Any):
        self.inner = inner
        self.gets = 0

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets += 1
        return self.inner.get(key, offset, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _backed_up(tmp_path: Path, files: dict[str, bytes]) -> tuple[Repository, bytes, Path]:
    src = write_tree(tmp_path / "src", files)
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    result = run_backup(repo, BackupRequest(paths=(str(src),)))
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    repo.load_index()
    return repo, bytes.fromhex(result.snapshot.tree), src


def test_small_files_are_read_in_runs_and_restored_whole(tmp_path: Path) -> None:
    rng = random.Random(11)
    files = {
        f"d{d}/f{i:03d}": rng.randbytes(rng.randint(1, 3000)) for d in range(3) for i in range(150)
    }
    repo, tree, src = _backed_up(tmp_path, files)
    counting = CountingGets(repo.storage)
    repo.storage = counting  # type: ignore[assignment]
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    assert stats.errors == [] and stats.files == len(files)
    out = tmp_path / "out" / str(src).lstrip("/")
    assert all((out / name).read_bytes() == data for name, data in files.items())
    # 450 one-chunk files, written side by side into one pack: a handful of reads (trees,
    # and one run per batch), not one per file
    assert counting.gets < 20, counting.gets


def test_a_damaged_blob_in_a_run_fails_only_its_own_file(tmp_path: Path) -> None:
    rng = random.Random(12)
    files = {f"f{i:03d}": rng.randbytes(500 + i) for i in range(60)}
    repo, tree, src = _backed_up(tmp_path, files)
    loc = repo.index.lookup(repo.content_id(files["f030"]))
    assert loc is not None
    pack = tmp_path / "repo" / pack_key(loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0x10
    pack.write_bytes(bytes(data))
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    assert [e["path"].rsplit("/", 1)[-1] for e in stats.errors] == ["f030"]
    out = tmp_path / "out" / str(src).lstrip("/")
    assert not (out / "f030").exists()
    assert all((out / n).read_bytes() == d for n, d in files.items() if n != "f030")
