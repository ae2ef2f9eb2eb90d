"""Process-wide malloc tuning for the ``bcdr`` command (not applied when bcdr is imported).

glibc gives each thread that allocates its own malloc arena (up to 8 per core). Backup and
restore move buffers of megabytes between reader, worker and upload threads, so a buffer
freed by one thread stays in another's arena and peak RSS wandered by 10-20 MiB from run to run
(measured on the 632 MiB bench corpus: 132-155 MiB). Two arenas keep it at the low end with no
measurable loss of speed.

glibc also serves every allocation above a moving threshold (at most 32 MiB) with a fresh
``mmap``, and returns it to the kernel when freed: every page of the next such buffer is
faulted in again (6 us a page on this VM). Backup reads tensors of up to 32 MiB whole, restore
and check handle chunks and sections of megabytes, one after another. With the threshold
fixed above 32 MiB and freed memory kept for reuse (measured 2026-11-29, bench corpus):

- backup (64 MiB kept): page faults 82-94k -> 50-54k, wall -6%, peak RSS unchanged; once
  its workers read only files up to 1 MiB (2026-11-29, night), keeping 32 MiB instead of 64
  lowered its peak, workers counted, from 135-143 to 123-136 MiB with no loss of speed;
- restore (64 MiB kept): page faults 186k -> 19k, wall 5.2-5.5 -> 4.3-5.0 s, RSS 83 -> 100 MiB;
- restore with worker processes for its small files (bcdr/forked.py), which then hold the
  small buffers: the parent keeps 16 MiB (KEEP_WITH_WORKERS): the same wall time as 64 MiB
  (3.39-3.76 against 3.47-3.72 s), peak memory, workers counted, 111-113 -> 91-95 MiB;
  keeping 8 MiB was slower (3.70-4.09 s);
- check --read-data (16 MiB kept): page faults 87k -> 27k, sys time halved, wall within the
  noise, RSS 87 -> 92-96 MiB: level with restic's, so check does not ask for it.

The heap settings take effect once the index is loaded (:func:`big_buffers_ahead`): set at
start, the index's temporary arrays were kept too and a no-change backup grew 66 -> 79 MiB.

A MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ set by the user wins.
"""

from __future__ import annotations

import os
import sys

# mallopt parameters, from glibc's malloc.h: (parameter, value, environment override)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ARENAS = ((M_ARENA_MAX, 2, "MALLOC_ARENA_MAX"),)
MMAP_ABOVE = 32 * 2**20 + 4096
#: Freed memory a restore keeps when worker processes restore its small files.
KEEP_WITH_WORKERS = 16 * 2**20
_keep = 0  # what the command asked big_buffers_ahead() to keep


def tune_malloc(keep: int = 0) -> list[str]:
    """Cap the arenas now and remember ``keep`` for :func:`big_buffers_ahead` (glibc on Linux
    only); the environment names of the settings applied."""
    global _keep
    _keep = keep
    return _mallopt(ARENAS)


def big_buffers_ahead(at_most: int | None = None) -> list[str]:
    """Called where backup and restore start moving big buffers (after the index is
    loaded: its temporary arrays go back to the kernel as usual; kept, they cost a no-change
    backup 13 MiB). If the command asked for it, serve buffers up to 32 MiB from the heap and
    keep up to ``keep`` bytes freed for reuse (``at_most`` of them: a restore whose small
    files go to worker processes keeps 16 MiB, see :data:`KEEP_WITH_WORKERS`)."""
    if not _keep:
        return []
    return _mallopt(
        (
            (M_MMAP_THRESHOLD, MMAP_ABOVE, "MALLOC_MMAP_THRESHOLD_"),
            (M_TRIM_THRESHOLD, min(_keep, at_most or _keep), "MALLOC_TRIM_THRESHOLD_"),
        )
    )


def _mallopt(settings: tuple[tuple[int, int, str], ...]) -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return []
    return [
        env
        for param, value, env in settings
        if env not in os.environ and mallopt(param, value) == 1
    ]


def lean_heap() -> list[str]:
    """Return freed buffers of 1 MiB and more to the kernel at once (a forked worker, whose
    parent may have asked :func:`big_buffers_ahead` to keep them)."""
    return _mallopt(
        (
            (M_MMAP_THRESHOLD, 2**20, "MALLOC_MMAP_THRESHOLD_"),
            (M_TRIM_THRESHOLD, 2 * 2**20, "MALLOC_TRIM_THRESHOLD_"),
        )
    )


def give_back() -> bool:
    """Return the heap's free pages to the kernel now (glibc's ``malloc_trim``), after a
    load whose temporaries are gone: loading 10 million index entries left 16-27 MiB of
    freed decoding buffers and sort temporaries resident (52 B per entry against the
    columns' 49), which no later allocation of that size reused. Whether it ran."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    trim(0)
    return True
