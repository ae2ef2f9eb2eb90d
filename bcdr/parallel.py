"""Ordered, bounded parallel map for I/O-bound work (downloads from a storage)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, with at most
    ``2 * workers`` results held at once (memory stays bounded for any number of items).
    An exception from ``fn`` is raised when its result is reached; the rest are cancelled."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="bcdr-io") as pool:
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for fut in window:
                fut.cancel()
