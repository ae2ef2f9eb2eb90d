"""Content-defined chunking re-synchronises after an insert; dedup across files and snapshots."""

from __future__ import annotations

import os
import random
from pathlib import Path

from bcdr.actions.backup import BackupRequest, backup
from bcdr.repository.chunker import Chunker, ChunkerParams

PARAMS = ChunkerParams(min_size=4096, avg_size=4096, max_size=65536)


def _boundaries(data: bytes) -> list[int]:
    out, pos = [], 0
    for chunk in Chunker(PARAMS).chunks_of(data):
        pos += len(chunk)
        out.append(pos)
    return out


def test_boundaries_resync_after_insertion() -> None:
    data = random.Random(1).randbytes(2_000_000)
    insert_at, inserted = 700_000, b"INSERTED-BYTES" * 3
    edited = data[:insert_at] + inserted + data[insert_at:]
    before = _boundaries(data)
    after = _boundaries(edited)
    shifted = {b + len(inserted) for b in before if b > insert_at}
    unchanged_before = [b for b in before if b < insert_at]
    # Everything before the edit is cut at the same places ...
    assert [b for b in after if b < insert_at] == unchanged_before
    # ... and after the edit the boundaries re-synchronise within a few chunks.
    later = [b for b in after if b > insert_at + 200_000]
    assert later and set(later) <= shifted
    assert len(set(after) & shifted) >= len(shifted) - 5


def test_stream_and_buffer_cut_identically(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(1_500_000)
    p = tmp_path / "f"
    p.write_bytes(data)
    chunker = Chunker(PARAMS)
    with open(p, "rb", buffering=0) as f:
        streamed = [bytes(c) for c in chunker.chunks(f)]
    assert streamed == [bytes(c) for c in chunker.chunks_of(data)]
    assert b"".join(streamed) == data


def test_chunks_of_a_stream_read_whole_stay_valid_without_a_copy(tmp_path: Path) -> None:
    """Backup hands such chunks to workers as views (no copy); they must outlive the loop."""
    chunker = Chunker(PARAMS)
    data = random.Random(3).randbytes(chunker.whole_max - 1000)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert chunker.read_whole(len(data)) and not chunker.read_whole(chunker.whole_max + 1)
    with open(p, "rb", buffering=0) as f:
        kept = list(chunker.chunks(f, len(data)))  # views, kept past the next chunk
    assert len(kept) > 2 and b"".join(kept) == data


def test_dedup_across_files_and_snapshots(tmp_path: Path, repo: str) -> None:
    rng = random.Random(3)
    shared = rng.randbytes(1_000_000)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(shared)
    (src / "b.bin").write_bytes(shared)  # identical content, another file
    first = backup(repo, BackupRequest(paths=(str(src),), job="j"))
    assert first.stats.bytes_read == 2_000_000
    # The second copy costs nothing: stored bytes are about one copy (random data: raw).
    assert first.stats.bytes_added < 1_100_000

    # An insertion in the middle of a third file: only chunks around it are new.
    (src / "c.bin").write_bytes(shared[:500_000] + b"new bytes" + shared[500_000:])
    second = backup(repo, BackupRequest(paths=(str(src),), job="j"))
    assert second.stats.files_new == 1 and second.stats.files_unchanged == 2
    assert second.stats.bytes_read == 1_000_009
    assert second.stats.bytes_added < 200_000, second.stats.bytes_added


def test_compression_pays_on_text_and_not_on_noise(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "text.jsonl").write_text("".join(f'{{"id": {i}, "v": "x"}}\n' for i in range(50_000)))
    r = backup(repo, BackupRequest(paths=(str(src),)))
    size = os.path.getsize(src / "text.jsonl")
    assert r.stats.bytes_added < size / 5
