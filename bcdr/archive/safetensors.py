"""Parse safetensors headers (never guess) to cut chunks at tensor boundaries.

A safetensors file is ``u64 LE header length N | N bytes of JSON | tensor data``; the JSON maps
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data
start. :func:`segments` turns that into byte ranges of the file, each with the element size of
its float dtype (2 for BF16/F16, 4 for F32, 0 otherwise), so that

- chunks never straddle two tensors: when a random part of the tensors stays frozen between
  checkpoints, every frozen tensor's chunks deduplicate exactly;
- float chunks can be byte-grouped before zstd (see ``repository/compression.py``).

Small neighbouring tensors of one element size are merged into one segment (at least
``min_segment`` bytes) so that biases and norms do not become tiny chunks. A file whose header
does not parse, or whose offsets do not tile the data exactly, is chunked as plain bytes.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

FLOAT_SIZES = {"BF16": 2, "F16": 2, "F32": 4}
SAFETENSORS = b".safetensors"
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    elsize: int  # 0: not a float tensor, no byte grouping


#: ``read_at(length, offset)``: bytes of a file (fewer at its end).
ReadAt = Callable[[int, int], bytes]


def read_header(read_at: ReadAt, file_size: int) -> tuple[int, dict[str, object]] | None:
    """(data start, header dict) or None if this is not a well-formed safetensors file."""
    head = read_at(8, 0)
    if len(head) != 8:
        return None
    (n,) = struct.unpack("<Q", head)
    if n < 2 or n > MAX_HEADER or 8 + n > file_size:
        return None
    raw = read_at(n, 8)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return (8 + n, header) if isinstance(header, dict) else None


def file_segments(
    name: bytes, read_at: ReadAt, size: int, min_segment: int, region: int
) -> list[Segment]:
    """How a backup cuts a file of ``size`` bytes before chunking: the tensors of a
    safetensors file (by its name and header), else the whole file, then at every multiple
    of ``region``. Each segment is chunked on its own. The one place this is decided: a
    backup reading a file and a copy cutting one again must agree."""
    segs = segments(read_at, size, min_segment) if name.endswith(SAFETENSORS) else None
    return split_at_regions(segs or [Segment(0, size, 0)], region)


def segments(read_at: ReadAt, file_size: int, min_segment: int) -> list[Segment] | None:
    parsed = read_header(read_at, file_size)
    if parsed is None:
        return None
    data_start, header = parsed
    tensors = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])  # type: ignore[index]
            dtype = str(info["dtype"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None
        tensors.append((begin, end, FLOAT_SIZES.get(dtype, 0)))
    tensors.sort()
    pos = 0
    for begin, end, _ in tensors:
        if begin != pos or end < begin:
            return None  # gaps or overlaps: do not trust it
        pos = end
    if data_start + pos != file_size:
        return None
    out = [Segment(0, data_start, 0)]
    for begin, end, elsize in tensors:
        start, stop = data_start + begin, data_start + end
        last = out[-1]
        if last.elsize == elsize and (last.end - last.start) < min_segment and last.start != 0:
            out[-1] = Segment(last.start, stop, elsize)
        elif stop > start:
            out.append(Segment(start, stop, elsize))
    return out


def split_at_regions(segs: list[Segment], region: int) -> list[Segment]:
    """``segs`` (in file order) cut again at every multiple of ``region`` (0: as they are)."""
    if not region:
        return segs
    out = []
    for seg in segs:
        start = seg.start
        while start < seg.end:
            end = min(seg.end, (start // region + 1) * region)
            out.append(Segment(start, end, seg.elsize))
            start = end
    return out
