"""Per-blob compression. The codec is recorded per blob (one byte in pack headers and index).

Codecs:

- 0 ``raw``: stored as is (compression did not save at least 3%);
- 1 ``zstd``: one zstd frame of the chunk;
- 2 ``grouped-zstd``: for float tensors (safetensors BF16/F16/F32): one zstd frame of
  ``[elsize, lead] || chunk[:lead] || plane 0 || ... || plane elsize-1 || tail``, where the
  aligned body ``chunk[lead:lead+m]`` (``m`` a multiple of ``elsize``) is split into byte planes
  (all first bytes of the elements, then all second bytes...). Exponent bytes of trained
  weights are low-entropy and compress far better once grouped. The inverse is exact.
"""

from __future__ import annotations

import threading

import zstandard

from bcdr.errors import CorruptObject

RAW = 0
ZSTD = 1
GROUPED_ZSTD = 2
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd", GROUPED_ZSTD: "grouped-zstd"}

#: (element size, lead): how a float chunk aligns on its elements; see the module docstring.
Layout = tuple[int, int]


def _element_dtype(elsize: int) -> str:
    return "<u2" if elsize == 2 else "<u4"


def group_bytes(data: bytes | memoryview, elsize: int, lead: int) -> memoryview:
    import numpy as np  # after the key is derived (see masterindex); cached after the first

    body_len = (len(data) - lead) // elsize * elsize
    count = body_len // elsize
    src = np.frombuffer(data, np.uint8)
    out = np.empty(2 + len(data), np.uint8)
    out[:2] = (elsize, lead)
    out[2 : 2 + lead] = src[:lead]
    # Plane i holds byte i of every element: shifts on little-endian words run vectorised, 4x
    # faster than strided slices, and each plane is written once, straight into the output
    # (no temporary arrays, no final concatenation: per MiB, bf16 0.22-0.28 -> 0.16-0.18 ms,
    # fp32 1.0 -> 0.35 ms, measured 2026-11-29). zstd reads the view.
    words = np.frombuffer(data, _element_dtype(elsize), count, lead)
    planes = out[2 + lead : 2 + lead + body_len].reshape(elsize, count)
    for i in range(elsize):
        np.right_shift(words, 8 * i, out=planes[i], casting="unsafe")
    out[2 + lead + body_len :] = src[lead + body_len :]
    return out.data


def ungroup_bytes(payload: bytes, what: str) -> memoryview:
    import numpy as np

    if len(payload) < 2 or payload[0] not in (2, 4) or payload[1] >= payload[0]:
        raise CorruptObject(f"{what}: bad byte-group header")
    elsize, lead = payload[0], payload[1]
    if len(payload) - 2 < lead:
        raise CorruptObject(f"{what}: byte-grouped data shorter than its header says")
    body_len = (len(payload) - 2 - lead) // elsize * elsize
    count = body_len // elsize
    src = np.frombuffer(payload, np.uint8)
    planes = src[2 + lead : 2 + lead + body_len].reshape(elsize, count)
    out = np.empty(len(payload) - 2, np.uint8)
    out[:lead] = src[2 : 2 + lead]
    # The elements are assembled in place, in the output seen as little-endian words: the
    # highest plane first, then shift and or in the next (no temporary arrays).
    words = out[lead : lead + body_len].view(_element_dtype(elsize))
    words[...] = planes[elsize - 1]
    for i in range(elsize - 2, -1, -1):
        np.left_shift(words, 8, out=words)
        np.bitwise_or(words, planes[i], out=words)
    out[lead + body_len :] = src[2 + lead + body_len :]
    return out.data  # not copied into a bytes object (done with the GIL held)


#: Byte planes of float tensors are close to i.i.d. symbols: short matches cost more than they
#: save, so grouped chunks use long minimum matches and the fast strategy (measured on bf16
#: weights: exponent plane 0.385 of its size at 330 MB/s, against 0.42 at 220 MB/s for level 3).
#: The match finder's hash table is small (1 Ki entries, in L1 cache): on such planes nearly
#: every match it finds is spurious, and a larger table only finds more of them (2026-11-29,
#: grouped bf16 chunks of the bench corpus: hash_log 16 -> 10 took 4.4 -> 2.4 ms/MiB and the
#: ratio 0.692 -> 0.673; fp32 2.5 -> 1.4 ms/MiB, 0.845 -> 0.836; fp16 unchanged). Only the
#: compressor's search changes: the stored format and the decompressor are the same.
GROUPED_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=20,
    min_match=7,
    strategy=zstandard.STRATEGY_FAST,
    search_log=1,
    hash_log=10,
    chain_log=16,
)

#: Keep the compressed form only when it saves at least this fraction.
MIN_SAVING = 0.03


class Compressor:
    """Thread-safe: each thread gets its own zstd contexts."""

    def __init__(self, level: int = 3):
        self.level = level
        self._local = threading.local()

    def _contexts(
        self,
    ) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor, zstandard.ZstdCompressor]:
        ctx: (
            tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor, zstandard.ZstdCompressor]
            | None
        )
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (
                zstandard.ZstdCompressor(level=self.level),
                zstandard.ZstdDecompressor(),
                zstandard.ZstdCompressor(compression_params=GROUPED_PARAMS),
            )
            self._local.ctx = ctx
        return ctx

    def compress(
        self, data: bytes | memoryview, layout: Layout | None = None
    ) -> tuple[int, bytes | memoryview]:
        """Return (codec, stored bytes): byte-grouped zstd for float chunks (``layout``),
        plain zstd otherwise; raw (``data`` itself) when compression saves less than
        MIN_SAVING."""
        if layout is not None and len(data) >= 2 * layout[0]:
            codec, packed = GROUPED_ZSTD, self._contexts()[2].compress(group_bytes(data, *layout))
        else:
            codec, packed = ZSTD, self._contexts()[0].compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return codec, packed
        return RAW, data

    def decompress(self, codec: int, data: bytes, raw_len: int, what: str) -> bytes | memoryview:
        if codec == RAW:
            return data
        if codec not in (ZSTD, GROUPED_ZSTD):
            raise CorruptObject(f"{what}: unknown codec {codec}")
        expect = raw_len + (2 if codec == GROUPED_ZSTD else 0)
        try:
            out = self._contexts()[1].decompress(data, max_output_size=expect)
        except zstandard.ZstdError as exc:
            raise CorruptObject(f"{what}: zstd data is damaged ({exc})") from None
        if len(out) != expect:
            raise CorruptObject(f"{what}: decompressed to {len(out)} bytes, not {expect}")
        return ungroup_bytes(out, what) if codec == GROUPED_ZSTD else bytes(out)
