"""Checkpoint-aware storage: tensor-boundary chunks dedup frozen tensors exactly, and float
tensors are byte-grouped before zstd (bit-exact on restore)."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcdr.actions.backup import BackupRequest, backup
from bcdr.actions.restore import restore
from bcdr.errors import CorruptObject
from bcdr.repository.compression import Compressor, group_bytes, ungroup_bytes
from tests.conftest import restored_root

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from corpus import write_safetensors  # noqa: E402


def _bf16(rng: np.random.Generator, n: int) -> bytes:
    v = rng.normal(0.0, 0.02, n).astype(np.float32)
    return (v.view(np.uint32) >> 16).astype(np.uint16).tobytes()


@given(data=st.binary(max_size=3000), elsize=st.sampled_from([2, 4]), lead=st.integers(0, 3))
def test_byte_grouping_is_exactly_invertible(data: bytes, elsize: int, lead: int) -> None:
    lead = min(lead % elsize, len(data))
    assert ungroup_bytes(bytes(group_bytes(data, elsize, lead)), "t") == data


def test_byte_grouped_payload_shorter_than_its_header_is_corrupt() -> None:
    # elsize 4, 3 leading bytes announced, 1 present: damage, reported as such
    with pytest.raises(CorruptObject, match="shorter than its header"):
        ungroup_bytes(bytes([4, 3, 1]), "blob x")
    with pytest.raises(CorruptObject, match="bad byte-group header"):
        ungroup_bytes(bytes([3, 0, 1, 2]), "blob x")


def test_grouped_zstd_beats_plain_zstd_on_trained_weights() -> None:
    rng = np.random.default_rng(0)
    c = Compressor()

    def fp16(r: np.random.Generator, n: int) -> bytes:
        return r.normal(0, 0.02, n).astype(np.float16).tobytes()

    def fp32(r: np.random.Generator, n: int) -> bytes:
        return r.normal(0, 0.02, n).astype(np.float32).tobytes()

    # Measured gains over plain zstd: bf16 ~11%, fp16 ~8%, fp32 ~8.6% (docs/performance.md).
    for make, elsize, ratio in ((_bf16, 2, 0.91), (fp16, 2, 0.94), (fp32, 4, 0.94)):
        data = make(rng, 500_000)
        plain_codec, plain = c.compress(data)
        codec, grouped = c.compress(data, (elsize, 0))
        assert codec == 2
        assert len(grouped) < ratio * len(plain), (len(grouped), len(plain))
        assert c.decompress(codec, bytes(grouped), len(data), "t") == data
        # Misaligned chunks (lead > 0) are still exact.
        codec, shifted = c.compress(data[1:], (elsize, 1))
        assert c.decompress(codec, bytes(shifted), len(data) - 1, "t") == data[1:]


def _checkpoint(path: Path, tensors: dict[str, bytes]) -> None:
    write_safetensors(path, tensors, {k: len(v) // 2 for k, v in tensors.items()})


def test_frozen_tensors_dedup_exactly_and_restore_bit_exact(tmp_path: Path, repo: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {f"layer.{i}.weight": _bf16(rng, 60_000 + 17 * i) for i in range(10)}
    tensors["layer.bias"] = _bf16(rng, 13)  # tiny, odd-sized tensor
    src = tmp_path / "ckpt"
    src.mkdir()
    _checkpoint(src / "step-1.safetensors", tensors)
    first = backup(repo, BackupRequest(paths=(str(src),), job="ckpt"))

    changed = ["layer.2.weight", "layer.5.weight", "layer.7.weight", "layer.9.weight"]
    for name in changed:
        tensors[name] = _bf16(rng, len(tensors[name]) // 2)
    _checkpoint(src / "step-2.safetensors", tensors)
    second = backup(repo, BackupRequest(paths=(str(src),), job="ckpt"))
    changed_bytes = sum(len(tensors[n]) for n in changed)
    # Only the changed tensors (compressed), the new header and trees are stored.
    assert second.stats.bytes_added < 0.9 * changed_bytes + 20_000, second.stats
    assert first.stats.bytes_added < 0.85 * (src / "step-1.safetensors").stat().st_size

    out = tmp_path / "out"
    assert restore(repo, "latest", str(out)).ok
    for name in ("step-1.safetensors", "step-2.safetensors"):
        assert (restored_root(out, src) / name).read_bytes() == (src / name).read_bytes()


def test_malformed_safetensors_is_backed_up_as_plain_bytes(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    header = json.dumps({"t": {"dtype": "BF16", "shape": [10], "data_offsets": [0, 999]}}).encode()
    (src / "lies.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"x" * 20)
    (src / "huge-header.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    (src / "short.safetensors").write_bytes(b"abc")
    backup(repo, BackupRequest(paths=(str(src),)))
    out = tmp_path / "out"
    assert restore(repo, "latest", str(out)).ok
    for p in src.iterdir():
        assert (restored_root(out, src) / p.name).read_bytes() == p.read_bytes()
    assert os.listdir(restored_root(out, src))


def test_byte_grouping_layout_is_the_documented_one() -> None:
    """The stored form is part of the repository format (docs/repository-format.md): header
    [elsize, lead], the lead bytes, plane 0 (byte 0 of every element), plane 1..., the tail."""
    data = bytes(range(1, 12))  # lead 01, then the 2-byte elements 02 03, 04 05, ... 0a 0b
    assert group_bytes(data, 2, 1) == bytes([2, 1, 1, 2, 4, 6, 8, 10, 3, 5, 7, 9, 11])
    assert group_bytes(data[:9], 4, 0) == bytes([4, 0, 1, 5, 2, 6, 3, 7, 4, 8, 9])


def test_a_float_chunk_is_read_back_as_the_view_it_was_ungrouped_into(tmp_path: Path) -> None:
    """Restore takes a checkpoint chunk as the array it was ungrouped into (no copy into a
    bytes object, which holds the GIL); what parses blobs still gets bytes."""
    from bcdr.actions.backup import BackupRequest, run_backup
    from bcdr.repository.compression import GROUPED_ZSTD
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    rng = np.random.default_rng(3)
    tensor = rng.normal(0, 0.02, 3_000_000).astype(np.float32)
    raw = (tensor.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    src = tmp_path / "src"
    src.mkdir()
    write_safetensors(src / "m.safetensors", {"w": raw}, {"w": len(raw) // 2})
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    run_backup(repo, BackupRequest(paths=(str(src),)))
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    repo.load_index()
    whole = (src / "m.safetensors").read_bytes()
    grouped = [
        (blob, loc)
        for blob in repo.index.blobs()
        if (loc := repo.index.lookup(blob)) is not None and loc.codec == GROUPED_ZSTD
    ]
    assert grouped
    for blob, loc in grouped:
        view = repo.read_blob(blob, loc)
        assert isinstance(view, memoryview) and bytes(view) in whole
        as_bytes = repo.load_blob(blob, loc)
        assert isinstance(as_bytes, bytes) and as_bytes == bytes(view)
