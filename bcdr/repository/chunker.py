"""Content-defined chunking, looked up by the name recorded in ``config``.

``fastcdc2020`` is pyfastcdc's FastCDC (native, releases the GIL). Its ``avg_size`` is the
*mask* parameter: the mean chunk length is about ``min_size + avg_size``, so the default
(min 512 KiB, avg 512 KiB, max 8 MiB) gives chunks of about 1 MiB, as DESIGN.md asks.
Boundaries depend only on the bytes since the previous boundary, so an insertion shifts only
the chunks around it.

``region``: a file is also cut at every multiple of this many bytes, each region chunked on
its own (0: no such cuts, repositories made before regions existed). A region's chunks then
depend only on its own bytes, so separate processes, on separate machines, can each back up
a part of one large file and get the very chunks one process would (``backup --shards``);
the file's fingerprint is made by regions too (bcdr/repository/hashing.py). One cut per
region (1 GiB by default) costs nothing measurable in deduplication.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Protocol

import pyfastcdc

from bcdr.errors import UnsupportedFormat

FASTCDC = "fastcdc2020"


#: The sizes FastCDC takes, in bytes (pyfastcdc's bounds, from the reference implementation).
SIZE_BOUNDS = {"min": (64, 1024**2), "avg": (256, 4 * 1024**2), "max": (1024, 16 * 1024**2)}
#: New repositories cut files at every GiB; a region is a multiple of 4 KiB in these bounds.
DEFAULT_REGION = 1024**3
REGION_BOUNDS = (64 * 1024, 1024**4)


@dataclass(frozen=True)
class ChunkerParams:
    name: str = FASTCDC
    min_size: int = 512 * 1024
    avg_size: int = 512 * 1024
    max_size: int = 8 * 1024 * 1024
    seed: int = 0
    region: int = DEFAULT_REGION

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, object]) -> ChunkerParams:
        doc = {"region": 0, **doc}  # configs written before regions: no region cuts
        params = cls(**doc)  # type: ignore[arg-type]
        if params.name != FASTCDC:
            raise UnsupportedFormat(f"unknown chunker {params.name!r}")
        problem = params.problem()
        if problem is not None:
            raise ValueError(f"chunker: {problem}")
        return params

    def problem(self) -> str | None:
        """What FastCDC refuses in these sizes, or None. Checked before a repository is
        created with them (pyfastcdc's own errors name the wrong parameter)."""
        for what, value, (lo, hi) in (
            ("MIN", self.min_size, SIZE_BOUNDS["min"]),
            ("AVG", self.avg_size, SIZE_BOUNDS["avg"]),
            ("MAX", self.max_size, SIZE_BOUNDS["max"]),
        ):
            if type(value) is not int or not lo <= value <= hi:
                return f"{what} {value!r} is not a size from {lo} to {hi} bytes"
        lo, hi = REGION_BOUNDS
        if type(self.region) is not int or (
            self.region != 0 and not (lo <= self.region <= hi and self.region % 4096 == 0)
        ):
            return f"region {self.region!r} is not 0 or a multiple of 4 KiB from {lo} to {hi} bytes"
        if not self.min_size <= self.avg_size <= self.max_size:
            return (
                f"MIN <= AVG <= MAX does not hold ({self.min_size}, {self.avg_size}, "
                f"{self.max_size})"
            )
        return None


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class Chunker:
    def __init__(self, params: ChunkerParams):
        self.params = params
        self._cdc = pyfastcdc.FastCDC(
            avg_size=params.avg_size,
            min_size=params.min_size,
            max_size=params.max_size,
            seed=params.seed,
        )

    @property
    def whole_max(self) -> int:
        """Streams up to this size are read whole and cut in memory (see :meth:`chunks`)."""
        return 4 * self.params.max_size

    def read_whole(self, size_hint: int) -> bool:
        """Does :meth:`chunks` read a stream of ``size_hint`` bytes whole? Then its chunks
        are views of one buffer that stay valid (no copy needed to keep them)."""
        return 0 <= size_hint <= self.whole_max

    def chunks(self, stream: Readable, size_hint: int = -1) -> Iterator[memoryview]:
        """Yield the chunks of ``stream``. Each view is valid only until the next is yielded,
        unless the stream was read whole (:meth:`read_whole`).

        Streams known to be small (``size_hint`` up to 4x max chunk size) are read whole and cut
        in memory: pyfastcdc's stream reader sets up a max-size buffer per call, which
        dominates the cost of small files.
        """
        if self.read_whole(size_hint):
            data = stream.read()
            for chunk in self._cdc.cut_buf(data):
                yield chunk.data
            return
        for chunk in self._cdc.cut_stream(stream):
            yield chunk.data

    def chunks_of(self, data: bytes) -> Iterator[memoryview]:
        for chunk in self._cdc.cut_buf(data):
            yield chunk.data
