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

- backup (64 MiB kept): page faults 82-94k -> 50-54k, wall -6%, peak RSS unchanged;
- restore (64 MiB kept): page faults 186k -> 19k, wall 5.2-5.5 -> 4.3-5.0 s, RSS 83 -> 100 MiB;
- check --read-data (16 MiB kept; 64 kept 105 MiB): page faults 87k -> 25k, sys time halved,
  RSS 87 -> 91 MiB.

A MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ set by the user wins.
"""

from __future__ import annotations

import os
import sys

# mallopt parameters, from glibc's malloc.h: (parameter, value, environment override)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
ARENAS = ((M_ARENA_MAX, 2, "MALLOC_ARENA_MAX"),)
MMAP_ABOVE = 32 * 2**20 + 4096


def tune_malloc(keep: int = 0) -> list[str]:
    """Cap the arenas and, when ``keep`` > 0, serve buffers of up to 32 MiB from the heap and
    keep up to ``keep`` bytes freed for reuse (glibc on Linux only); the environment names of
    the settings applied."""
    settings = list(ARENAS)
    if keep:
        settings += (
            (M_MMAP_THRESHOLD, MMAP_ABOVE, "MALLOC_MMAP_THRESHOLD_"),
            (M_TRIM_THRESHOLD, keep, "MALLOC_TRIM_THRESHOLD_"),
        )
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
