"""Progress on a terminal (stderr), silent otherwise.

A backup's line has totals counted ahead, as restic counts them: a scanner thread walks the
paths (excludes applied, each hardlinked file once) while the backup runs, so the line shows
the share done, the rate and the time left once the scan is complete, and "of at least"
before. It is updated while a large file is read (every chunk asks), not only between files.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from bcdr.units import human_bytes

if TYPE_CHECKING:
    from bcdr.archive.backup import BackupStats
    from bcdr.archive.copy import CopyStats
    from bcdr.archive.restore import RestoreStats


class Scanner:
    """Counts the regular files and bytes under ``paths`` in a daemon thread."""

    def __init__(
        self, paths: list[str], excludes: tuple[str, ...] = (), one_file_system: bool = False
    ):
        self.files = 0
        self.bytes = 0
        self.complete = False
        self._paths = [os.fsencode(os.path.abspath(p)) for p in paths]
        self._excludes = excludes
        self._one_file_system = one_file_system
        threading.Thread(target=self._run, name="bcdr-scan", daemon=True).start()

    def _run(self) -> None:
        from bcdr.archive.patterns import PathMatcher
        from bcdr.archive.shards import walk_files

        try:
            matcher = PathMatcher(self._excludes)
            for _, st in walk_files(
                self._paths, matcher, None, one_file_system=self._one_file_system
            ):
                self.files += 1
                self.bytes += st.st_size
        except (OSError, ValueError):
            return  # the backup says what it could not read; the line stays without totals
        self.complete = True


def eta_text(done: int, total: int, elapsed: float) -> str:
    """``45.3%  1.2 GiB of 2.6 GiB, 110 MiB/s, ETA 0:14`` (ETA once a rate is known)."""
    pct = min(100.0, 100.0 * done / total) if total else 100.0
    rate = done / elapsed if elapsed > 0.5 else 0.0
    text = f"{pct:5.1f}%  {human_bytes(done)} of {human_bytes(total)}"
    if rate > 0:
        left = max(0.0, (total - done) / rate)
        text += f", {human_bytes(int(rate))}/s, ETA {_clock(left)}"
    return text


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._shown = False
        self.scanner: Scanner | None = None
        self._started = time.monotonic()
        self._phase, self._phase_started = "", self._started

    def count_ahead(
        self, paths: list[str], excludes: tuple[str, ...] = (), one_file_system: bool = False
    ) -> None:
        """Count what a backup of ``paths`` will see, in a thread (only when shown)."""
        if self.enabled:
            self.scanner = Scanner(paths, excludes, one_file_system)
            self._started = time.monotonic()

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
        scan = self.scanner
        if scan is None or not scan.files:
            self._line(
                f"{files} files, {human_bytes(stats.bytes_read)} read, "
                f"{human_bytes(stats.bytes_added)} added  {os.fsdecode(path)}"
            )
            return
        done = stats.bytes_read + stats.bytes_unchanged
        if scan.complete:
            head = f"{eta_text(done, scan.bytes, time.monotonic() - self._started)}, "
            head += f"{files} of {scan.files} files"
        else:
            head = f"{human_bytes(done)} of at least {human_bytes(scan.bytes)} (counting), "
            head += f"{files} of {scan.files}+ files"
        self._line(f"{head}, {human_bytes(stats.bytes_added)} added  {os.fsdecode(path)}")

    def restore(self, stats: RestoreStats, path: bytes) -> None:
        if stats.read_back_planned:  # --verify, once every file is written
            if self._phase != "read back":
                self._phase, self._phase_started = "read back", time.monotonic()
            head = eta_text(
                stats.bytes_read_back,
                stats.read_back_planned,
                time.monotonic() - self._phase_started,
            )
            self._line(f"reading back: {head}, {stats.files_read_back} files  {os.fsdecode(path)}")
            return
        if stats.bytes_planned:
            head = eta_text(
                stats.bytes_written, stats.bytes_planned, time.monotonic() - self._started
            )
            self._line(f"{head}, {stats.files} files restored  {os.fsdecode(path)}")
            return
        self._line(
            f"{stats.files} files, {human_bytes(stats.bytes_written)} restored  {os.fsdecode(path)}"
        )

    def copy(self, stats: CopyStats, path: str) -> None:
        if stats.bytes_planned:
            head = eta_text(stats.bytes_done, stats.bytes_planned, time.monotonic() - self._started)
            self._line(
                f"{head}, {human_bytes(stats.bytes_copied)} copied, "
                f"{human_bytes(stats.bytes_skipped)} already there  {path}"
            )
            return
        self._line(
            f"{stats.files} files, {human_bytes(stats.bytes_copied)} copied, "
            f"{human_bytes(stats.bytes_skipped)} already there  {path}"
        )

    def check(self, phase: str, done: int, total: int) -> None:
        if phase != self._phase:
            self._phase, self._phase_started = phase, time.monotonic()
        pct = 100.0 * done / total if total else 100.0
        elapsed = time.monotonic() - self._phase_started
        eta = f", ETA {_clock((total - done) * elapsed / done)}" if done and elapsed > 0.5 else ""
        self._line(f"{phase}: {done}/{total} packs ({pct:.1f}%){eta}")

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
