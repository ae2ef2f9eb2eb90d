"""The benchmark corpus: deterministic bytes and mtimes for a given scale.

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
from pathlib import Path

import numpy as np

MTIME = 1_700_000_000


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


def _checkpoint_series(scale: float, steps: int, seed: int = 1) -> list[dict[str, bytes]]:
    rng = np.random.default_rng(seed)
    n_tensors = 24
    per_tensor = int(2_800_000 * scale)  # elements: bf16 -> 2 bytes each; ~128 MiB per ckpt
    series = []
    current = {f"layer.{i}.weight": _bf16_tensor(rng, per_tensor, 0.02) for i in range(n_tensors)}
    series.append(dict(current))
    pick = random.Random(seed)
    for _ in range(1, steps):
        changed = pick.sample(sorted(current), k=int(n_tensors * 0.4))
        for name in changed:
            current[name] = _bf16_tensor(rng, per_tensor, 0.02)
        series.append(dict(current))
    return series


def make_corpus(root: Path, scale: float = 1.0) -> None:
    shutil.rmtree(root, ignore_errors=True)
    ckpt = root / "checkpoints"
    ckpt.mkdir(parents=True)
    series = _checkpoint_series(scale, steps=3)
    for step, tensors in enumerate(series):
        shapes = {k: len(v) // 2 for k, v in tensors.items()}
        write_safetensors(ckpt / f"step-{(step + 1) * 1000}.safetensors", tensors, shapes)
    data = root / "datasets"
    data.mkdir()
    rng = random.Random(2)
    words = [f"w{i}" for i in range(5000)]
    for shard in range(max(1, int(8 * scale))):
        lines = [
            json.dumps({"id": shard * 100_000 + i, "text": " ".join(rng.choices(words, k=30))})
            for i in range(40_000)
        ]
        (data / f"shard-{shard:04}.jsonl").write_text("\n".join(lines) + "\n")
    small = root / "small"
    for i in range(int(20_000 * scale)):
        d = small / f"{i // 1000:03}" / f"{(i // 100) % 10}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}.txt").write_bytes(rng.randbytes(rng.randint(200, 6000)))
    _fix_mtimes(root)


def change_day1(root: Path) -> None:
    ckpts = sorted((root / "checkpoints").glob("*.safetensors"))
    scale = ckpts[0].stat().st_size / (24 * 2_800_000 * 2)
    series = _checkpoint_series(scale, steps=4)
    tensors = series[-1]
    write_safetensors(
        root / "checkpoints" / "step-4000.safetensors",
        tensors,
        {k: len(v) // 2 for k, v in tensors.items()},
    )
    rng = random.Random(3)
    for shard in sorted((root / "datasets").iterdir())[:2]:
        with open(shard, "a") as f:
            f.write(json.dumps({"id": -1, "text": "appended " * 1000}) + "\n")
    small = sorted((root / "small").rglob("*.txt"))
    for p in rng.sample(small, k=max(1, len(small) // 100)):
        p.write_bytes(rng.randbytes(rng.randint(200, 6000)))
    _fix_mtimes(root, MTIME + 86_400)


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
        make_corpus(Path(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1] == "change":
        change_day1(Path(sys.argv[2]))
    else:
        raise SystemExit("usage: corpus.py make DIR SCALE | change DIR")
