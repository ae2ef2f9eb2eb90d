"""Restore reads neighbouring blobs in runs, one request per run: a batch's small files, and
the consecutive chunks of a larger file."""

from __future__ import annotations

import os
import random
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive import filerestore
from bcdr.archive.filerestore import PIECE_MAX
from bcdr.archive.filewrite import write_sparse
from bcdr.archive.restore import Restorer
from bcdr.repository.pack import TREE, pack_key
from bcdr.repository.repo import Repository
from bcdr.repository.tree import Node, decode_tree, encode_tree
from bcdr.storage.base import C, Forkable
from bcdr.storage.local import LocalStorage
from tests.conftest import write_tree


class CountingGets:
    # counts the reads of this process: restore with threads here, not forked workers

    def __init__(self, inner: Any):
        self.inner = inner
        self.gets = 0
        self.ranges: list[tuple[str, int, int | None]] = []

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets += 1
        self.ranges.append((key, offset, length))
        data: bytes = self.inner.get(key, offset, length)
        return data

    def capability(self, kind: type[C]) -> C | None:
        return None if kind is Forkable else self.inner.capability(kind)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _backed_up(tmp_path: Path, files: dict[str, bytes]) -> tuple[Repository, bytes, Path]:
    src = write_tree(tmp_path / "src", files)
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    result = run_backup(repo, BackupRequest(paths=(str(src),)))
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    repo.load_index()
    return repo, bytes.fromhex(result.snapshot.tree), src


def _damage(repo: Repository, root: Path, blob: bytes) -> None:
    """Flip a bit in the middle of ``blob``'s stored bytes."""
    loc = repo.index.lookup(repo.content_id(blob))
    assert loc is not None
    pack = root / pack_key(loc.pack)
    data = bytearray(pack.read_bytes())
    data[loc.offset + loc.stored_len // 2] ^= 0x10
    pack.write_bytes(bytes(data))


def test_small_files_are_read_in_runs_and_restored_whole(tmp_path: Path) -> None:
    rng = random.Random(11)
    files = {
        f"d{d}/f{i:03d}": rng.randbytes(rng.randint(1, 3000)) for d in range(3) for i in range(150)
    }
    repo, tree, src = _backed_up(tmp_path, files)
    counting = CountingGets(repo.storage)
    repo.storage = counting
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
    _damage(repo, tmp_path / "repo", files["f030"])
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    assert [e["path"].rsplit("/", 1)[-1] for e in stats.errors] == ["f030"]
    out = tmp_path / "out" / str(src).lstrip("/")
    assert not (out / "f030").exists()
    assert all((out / n).read_bytes() == d for n, d in files.items() if n != "f030")


def test_a_large_file_is_read_in_pieces_not_chunk_by_chunk(tmp_path: Path) -> None:
    rng = random.Random(13)
    big = rng.randbytes(20 * 2**20)  # ~18 chunks of about 1 MiB, stored side by side
    repo, tree, src = _backed_up(tmp_path, {"big.bin": big, "small": b"x"})
    locs = [repo.index.lookup(repo.content_id(c)) for c in repo.chunker.chunks_of(big)]
    assert len(locs) >= 10 and all(locs)
    counting = CountingGets(repo.storage)
    repo.storage = counting
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    assert stats.errors == []
    out = tmp_path / "out" / str(src).lstrip("/")
    assert (out / "big.bin").read_bytes() == big
    # reads that fetched the big file's chunks: 20 MiB in pieces of at most PIECE_MAX, and
    # one more where a pack ends (reading chunk by chunk took 29 here)
    big_reads = {
        (key, offset)
        for key, offset, length in counting.ranges
        for loc in locs
        if loc is not None
        and key == pack_key(loc.pack)
        and length is not None
        and offset <= loc.offset < offset + length
    }
    assert len(big_reads) <= 20 * 2**20 // PIECE_MAX + 2, (len(big_reads), len(locs))


def test_a_damaged_chunk_inside_a_piece_fails_its_file_and_leaves_nothing(tmp_path: Path) -> None:
    rng = random.Random(14)
    big = rng.randbytes(6 * 2**20)
    files = {"big.bin": big, "other.bin": rng.randbytes(3 * 2**20)}
    repo, tree, src = _backed_up(tmp_path, files)
    views = list(repo.chunker.chunks_of(big))
    assert len(views) >= 3
    _damage(repo, tmp_path / "repo", bytes(views[len(views) // 2]))
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    assert [e["path"].rsplit("/", 1)[-1] for e in stats.errors] == ["big.bin"]
    out = tmp_path / "out" / str(src).lstrip("/")
    assert (out / "other.bin").read_bytes() == files["other.bin"]
    assert sorted(p.name for p in out.iterdir()) == ["other.bin"]  # no partial, no temporary


def _leaf_nodes(repo: Repository, tree: bytes, src: Path) -> list[Node]:
    """The nodes of the backed-up folder ``src``, found from the snapshot's root tree."""
    nodes = decode_tree(repo.load_blob(tree), "root")
    for part in src.parts[1:]:
        (folder,) = (n for n in nodes if n.name == os.fsencode(part))
        assert folder.subtree is not None
        nodes = decode_tree(repo.load_blob(folder.subtree), part)
    return nodes


def test_a_larger_file_whose_chunks_do_not_make_its_digest_fails_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """Each chunk matches its id, but the tree lists them in another order than the file's
    (its digest): restore verifies the bytes it writes, in file order, against the digest."""
    rng = random.Random(15)
    files = {"big.bin": rng.randbytes(12 * 2**20), "other.bin": rng.randbytes(3 * 2**20)}
    repo, tree, src = _backed_up(tmp_path, files)
    nodes = {n.name: n for n in _leaf_nodes(repo, tree, src)}
    big = nodes[b"big.bin"]
    assert len(big.content) >= 6
    swapped = [*big.content[:2], big.content[3], big.content[2], *big.content[4:]]
    nodes[b"big.bin"] = replace(big, content=swapped)
    with repo.writing():
        flat = repo.save_blob(TREE, encode_tree(sorted(nodes.values(), key=lambda n: n.name)))
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(flat)
    assert [(e["path"], e["error"].split(":")[0]) for e in stats.errors] == [
        ("/big.bin", "verification failed")
    ]
    assert (tmp_path / "out" / "other.bin").read_bytes() == files["other.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["other.bin"]


def test_a_short_positioned_write_is_completed_not_left_as_a_gap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pwrite may write fewer bytes than it was given; restore writes the rest (its digest is
    of the bytes it handed over, so a gap would go unnoticed)."""
    rng = random.Random(16)
    files = {"big.bin": rng.randbytes(5 * 2**20), "small.bin": rng.randbytes(70_000)}
    repo, tree, src = _backed_up(tmp_path, files)
    repo.storage = CountingGets(repo.storage)  # threads only
    calls = []
    pwrite = os.pwrite

    def short(fd: int, data: Any, pos: int) -> int:
        calls.append(len(data))
        return pwrite(fd, memoryview(data)[:4096], pos)

    monkeypatch.setattr(os, "pwrite", short)
    stats = Restorer(repo, os.fsencode(tmp_path / "out")).run(tree)
    monkeypatch.undo()
    assert stats.errors == [] and stats.files == 2
    out = tmp_path / "out" / str(src).lstrip("/")
    assert all((out / name).read_bytes() == data for name, data in files.items())
    assert len(calls) > 5 * 2**20 // 4096


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "direct"])
def test_larger_files_pieces_are_handed_out_in_turn_across_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    """Buffered writes to one file are serialised by the kernel: restore spreads its workers
    over several larger files at once (one piece of each in turn), and writes each file's
    pieces one at a time, buffered or with O_DIRECT. Every file still comes back whole."""
    rng = random.Random(14)
    # a and b: more pieces each (40 MiB / PIECE_MAX) than restore has slots on a small machine,
    # so the walk has queued b long before a's last piece is handed out
    files = {name: rng.randbytes(40 * 2**20) for name in ("a.bin", "b.bin")}
    files["c.bin"] = rng.randbytes(12 * 2**20)
    files.update({f"small/f{i:02d}": rng.randbytes(100 + i) for i in range(40)})
    repo, tree, src = _backed_up(tmp_path, files)
    repo.storage = CountingGets(repo.storage)  # threads only
    restorer = Restorer(repo, os.fsencode(tmp_path / "out"), direct=direct)
    started: list[str] = []
    in_file: dict[int, int] = {}
    overlapped: list[int] = []
    counting = threading.Lock()
    piece, write = restorer._files._piece, write_sparse

    def recording(job: Any, order: Any, index: int, part: Any) -> None:
        started.append(os.fsdecode(job.dest).rsplit("/", 1)[-1])
        piece(job, order, index, part)

    def one_writer(fd: int, data: Any, pos: int) -> bool:
        with counting:
            in_file[fd] = in_file.get(fd, 0) + 1
            if in_file[fd] > 1:
                overlapped.append(fd)
        try:
            return write(fd, data, pos)
        finally:
            with counting:
                in_file[fd] -= 1

    monkeypatch.setattr(filerestore, "write_sparse", one_writer)
    monkeypatch.setattr(restorer._files, "_piece", recording)
    stats = restorer.run(tree)
    assert stats.errors == [] and stats.files == len(files)
    out = tmp_path / "out" / str(src).lstrip("/")
    assert all((out / name).read_bytes() == data for name, data in files.items())
    assert overlapped == []  # never two writes into one file at once
    assert stats.bytes_direct == (sum(len(files[n]) for n in ("a.bin", "b.bin", "c.bin")) * direct)
    # a and b are restored together: b's first piece starts before a's last (one file after
    # the other, all of a's pieces came first)
    last_a = len(started) - 1 - started[::-1].index("a.bin")
    assert started.index("b.bin") < last_a, started
