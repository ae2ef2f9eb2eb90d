"""The benchmark corpus: deterministic bytes and mtimes for a given shape and scale.

Two shapes (``SHAPES``): ``small`` (632 MiB: three 128 MiB checkpoints, 8 shards, 20,000 small
files; the quick run) and ``large`` (2.85 GiB: five 517 MiB checkpoints, 24 shards, 50,000
small files, the shape of issue 31; with the day-1 change six checkpoints, 3.35 GiB, which is
what the full restore writes). ``single`` writes
one checkpoint file of a given size (the single-file restore against ``cp``).

- checkpoints/: safetensors files of bf16 tensors that look like trained weights (normal
  values, so exponent bytes are low-entropy). Between consecutive checkpoints a random 60% of
  the tensors stay frozen (identical bytes).
- datasets/: JSON-lines shards (compressible text).
- small/: tens of thousands of small files in nested folders.

``change_day1`` applies the "day 1" change: a new checkpoint (60% of tensors shared with the
last), two shards appended to, and 1% of the small files rewritten.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MTIME = 1_700_000_000
#: shape -> (checkpoints before the day-1 change, bf16 elements per tensor, shards, small files)
SHAPES = {
    "small": (3, 2_800_000, 8, 20_000),
    "large": (5, 11_290_000, 24, 50_000),
    "azure": (1, 11_290_000, 4, 5_000),  # 648 MB: the Azure path against rclone
}
N_TENSORS = 24


def _bf16_tensor(rng: np.random.Generator, n: int, scale: float) -> bytes:
    values = rng.normal(0.0, scale, n).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()  # bf16 = top half of fp32


def write_safetensors(path: Path, tensors: dict[str, bytes], shapes: dict[str, int]) -> None:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, data in tensors.items():
        header[name] = {
            "dtype": "BF16",
            "shape": [shapes[name]],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for data in tensors.values():
            f.write(data)


def _per_tensor(ckpt_mib: float) -> int:
    """Elements per tensor (bf16: 2 bytes each) for checkpoints of about ``ckpt_mib``."""
    return int(ckpt_mib * 2**20 / N_TENSORS / 2)


def _checkpoint_series(per_tensor: int, steps: int, seed: int = 1) -> Iterator[dict[str, bytes]]:
    """The checkpoints of a training run, one at a time: between two, 40% of the tensors are
    new and the rest frozen (identical bytes)."""
    rng = np.random.default_rng(seed)
    current = {f"layer.{i}.weight": _bf16_tensor(rng, per_tensor, 0.02) for i in range(N_TENSORS)}
    yield current
    pick = random.Random(seed)
    for _ in range(1, steps):
        changed = pick.sample(sorted(current), k=int(N_TENSORS * 0.4))
        for name in changed:
            current[name] = _bf16_tensor(rng, per_tensor, 0.02)
        yield current


def _write_checkpoint(path: Path, tensors: dict[str, bytes]) -> None:
    write_safetensors(path, tensors, {k: len(v) // 2 for k, v in tensors.items()})


def make_corpus(root: Path, scale: float = 1.0, shape: str = "small") -> None:
    checkpoints, elements, shards, small_files = SHAPES[shape]
    shutil.rmtree(root, ignore_errors=True)
    ckpt = root / "checkpoints"
    ckpt.mkdir(parents=True)
    series = _checkpoint_series(int(elements * scale), steps=checkpoints)
    for step, tensors in enumerate(series):
        _write_checkpoint(ckpt / f"step-{(step + 1) * 1000}.safetensors", tensors)
    data = root / "datasets"
    data.mkdir()
    rng = random.Random(2)
    words = [f"w{i}" for i in range(5000)]
    for shard in range(max(1, int(shards * scale))):
        lines = [
            json.dumps({"id": shard * 100_000 + i, "text": " ".join(rng.choices(words, k=30))})
            for i in range(40_000)
        ]
        (data / f"shard-{shard:04}.jsonl").write_text("\n".join(lines) + "\n")
    small = root / "small"
    for i in range(int(small_files * scale)):
        d = small / f"{i // 1000:03}" / f"{(i // 100) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}.txt").write_bytes(rng.randbytes(rng.randint(200, 6000)))
    _fix_mtimes(root)


def change_day1(root: Path) -> None:
    ckpts = sorted((root / "checkpoints").glob("*.safetensors"))
    per_tensor = ckpts[0].stat().st_size // (N_TENSORS * 2)
    *_, tensors = _checkpoint_series(per_tensor, steps=len(ckpts) + 1)  # the run's next one
    name = f"step-{(len(ckpts) + 1) * 1000}.safetensors"
    _write_checkpoint(root / "checkpoints" / name, tensors)
    rng = random.Random(3)
    for shard in sorted((root / "datasets").iterdir())[:2]:
        with open(shard, "a") as f:
            f.write(json.dumps({"id": -1, "text": "appended " * 1000}) + "\n")
    small = sorted((root / "small").rglob("*.txt"))
    for p in rng.sample(small, k=max(1, len(small) // 100)):
        p.write_bytes(rng.randbytes(rng.randint(200, 6000)))
    _fix_mtimes(root, MTIME + 86_400)


def make_single(path: Path, mib: int) -> None:
    """One checkpoint file of about ``mib`` MiB (the first of a series)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_checkpoint(path, next(_checkpoint_series(_per_tensor(mib), steps=1, seed=7)))
    os.utime(path, (MTIME, MTIME))


def disk_write(path: Path, size: int) -> None:
    """The device's own speed for a restore's bytes: ``size`` bytes written to one new file
    with ``O_DIRECT`` in 8 MiB blocks (random, so nothing on the way can compress them), then
    ``fsync``. No tool that writes those bytes to this filesystem can take less time."""
    import mmap

    block = mmap.mmap(-1, 8 * 2**20)  # page-aligned, as O_DIRECT needs
    block.write(np.random.default_rng(1).bytes(len(block)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_DIRECT", 0), 0o600)
    try:
        pos = 0
        while pos < size:
            pos += os.pwrite(fd, block, pos)
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fix_mtimes(root: Path, when: int = MTIME) -> None:
    """Give every file written just now the fixed time ``when`` (others keep theirs)."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if when == MTIME or os.stat(p).st_mtime > MTIME + 86_400 * 2:
                os.utime(p, (when, when))


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "make":
        make_corpus(Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] if sys.argv[4:] else "small")
    elif sys.argv[1] == "change":
        change_day1(Path(sys.argv[2]))
    elif sys.argv[1] == "single":
        make_single(Path(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "disk":
        disk_write(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(
            "usage: corpus.py make DIR SCALE [small|large] | change DIR | single FILE MIB"
            " | disk FILE BYTES"
        )
