"""Progress on a terminal (stderr), silent otherwise."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, TextIO

from bcdr.units import human_bytes

if TYPE_CHECKING:
    from bcdr.archive.backup import BackupStats
    from bcdr.archive.copy import CopyStats
    from bcdr.archive.restore import RestoreStats


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._shown = False

    def _line(self, text: str) -> None:
        if not self.enabled:
            return
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except OSError:
            columns = 0
        width = (columns or 80) - 1
        self.stream.write("\r" + text[:width].ljust(width))
        self.stream.flush()
        self._shown = True

    def backup(self, stats: BackupStats, path: bytes) -> None:
        files = stats.files_new + stats.files_changed + stats.files_unchanged
        self._line(
            f"{files} files, {human_bytes(stats.bytes_read)} read, "
            f"{human_bytes(stats.bytes_added)} added  {os.fsdecode(path)}"
        )

    def restore(self, stats: RestoreStats, path: bytes) -> None:
        self._line(
            f"{stats.files} files, {human_bytes(stats.bytes_written)} restored  {os.fsdecode(path)}"
        )

    def copy(self, stats: CopyStats, path: str) -> None:
        self._line(
            f"{stats.files} files, {human_bytes(stats.bytes_copied)} copied, "
            f"{human_bytes(stats.bytes_skipped)} already there  {path}"
        )

    def check(self, phase: str, done: int, total: int) -> None:
        self._line(f"{phase}: {done}/{total} packs")

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
