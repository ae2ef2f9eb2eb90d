"""Per-blob compression. The codec is recorded per blob (one byte in pack headers and index).

Codecs: 0 = stored raw (compression did not pay), 1 = zstd.
"""

from __future__ import annotations

import threading

import zstandard

from bcdr.errors import CorruptObject

RAW = 0
ZSTD = 1
CODEC_NAMES = {RAW: "raw", ZSTD: "zstd"}

#: Keep the compressed form only when it saves at least this fraction.
MIN_SAVING = 0.03


class Compressor:
    """Thread-safe: each thread gets its own zstd contexts."""

    def __init__(self, level: int = 3):
        self.level = level
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (zstandard.ZstdCompressor(level=self.level), zstandard.ZstdDecompressor())
            self._local.ctx = ctx
        return ctx

    def compress(self, data: bytes) -> tuple[int, bytes]:
        """Return (codec, stored bytes); raw when zstd saves less than MIN_SAVING."""
        packed = self._contexts()[0].compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return ZSTD, packed
        return RAW, data

    def decompress(self, codec: int, data: bytes, raw_len: int, what: str) -> bytes:
        if codec == RAW:
            return data
        if codec == ZSTD:
            try:
                out = self._contexts()[1].decompress(data, max_output_size=raw_len)
            except zstandard.ZstdError as exc:
                raise CorruptObject(f"{what}: zstd data is damaged ({exc})") from None
            if len(out) != raw_len:
                raise CorruptObject(f"{what}: decompressed to {len(out)} bytes, not {raw_len}")
            return bytes(out)
        raise CorruptObject(f"{what}: unknown codec {codec}")
