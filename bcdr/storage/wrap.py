"""Cross-cutting storage behaviour as wrappers: retries, metering (and fault injection in
``faulty.py``). Each wraps any Storage and keeps its contract (``base.py``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from bcdr.errors import TransientStorageError
from bcdr.retrybudget import cap, say_waiting
from bcdr.storage.base import C, Forkable, HeldParts, ObjectInfo, Staged, Storage, Transfers

T = TypeVar("T")


class StorageWrapper:
    """Delegates every method to ``inner``; subclasses override what they change. Optional
    capabilities (``storage/base.py``) are forwarded explicitly by ``capability``: those a
    wrapper adds itself are listed in ``OWN``; ``Forkable`` is this wrapper when what it wraps
    is, so that ``after_fork`` runs through every wrapper of the chain."""

    OWN: tuple[type, ...] = ()

    def __init__(self, inner: Storage):
        self.inner = inner

    def capability(self, kind: type[C]) -> C | None:
        if kind in self.OWN:
            return self  # type: ignore[return-value]
        if kind is Forkable:
            return self if self.inner.capability(Forkable) is not None else None  # type: ignore[return-value]
        return self.inner.capability(kind)

    @property
    def url(self) -> str:
        return self.inner.url

    @property
    def concurrency(self) -> int:
        return self.inner.concurrency

    def after_fork(self) -> None:
        """In a forked child: locks another thread may have held at the fork are made anew
        (see bcdr/forked.py; only ``Forkable`` storages are used there)."""
        inner = self.inner.capability(Forkable)
        if inner is not None:
            inner.after_fork()

    def put(self, key: str, data: bytes) -> bool:
        return self.inner.put(key, data)

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        return self.inner.put_parts(key, parts)

    def stage(self) -> Staged:
        """Held in memory and committed through this wrapper's ``put_parts``, so that what
        it does to a put (retry, inject a fault) applies; a wrapper that only looks on passes
        the inner storage's own staging on (:class:`MeteredStorage`)."""
        return HeldParts(self)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def list_offline(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list_offline(prefix)

    def delete(self, key: str) -> bool:
        return self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded in total time (and optionally in attempts).

    The n-th retry waits a random time in ``[cap / 2, cap]``, ``cap = min(max_delay,
    base_delay * 2**n)``, or the server's Retry-After when it sent one (capped at
    ``max_delay``). No retry starts once it would end more than ``max_elapsed`` seconds after
    the first attempt (the retry budget, ``bcdr/retrybudget.py``).
    """

    attempts: int | None = None
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_elapsed: float = 600.0

    def delay(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        if retry_after is not None:
            return min(self.max_delay, max(0.0, retry_after))
        cap = min(self.max_delay, self.base_delay * (2 ** min(retry, 32)))
        return rng.uniform(cap / 2, cap)


RetryFn = Callable[[str, int, float, TransientStorageError], None]


class RetryingStorage(StorageWrapper):
    """Retries :class:`TransientStorageError` per ``policy``; every other error (not found,
    permission, full, permanent) is raised at once. When the policy is exhausted the last
    transient error is raised with a hint saying how long bcdr tried.

    A ``put`` retried after a transient failure may find its own earlier attempt landed (the
    connection broke after the server committed it): it then compares the stored bytes and
    reports ``True`` when they are the bytes it was writing.
    """

    def __init__(
        self,
        inner: Storage,
        policy: RetryPolicy | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_retry: RetryFn | None = None,
    ):
        super().__init__(inner)
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._on_retry = on_retry
        self._lock = threading.Lock()
        self.retries = 0

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        super().after_fork()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        started = self._monotonic()
        retry = 0
        while True:
            try:
                return fn()
            except TransientStorageError as exc:
                elapsed = self._monotonic() - started
                with self._lock:
                    delay = self.policy.delay(retry, exc.retry_after, self._rng)
                attempts = self.policy.attempts
                if (attempts is not None and retry + 1 >= attempts) or (
                    elapsed + delay > cap(self.policy.max_elapsed)
                ):
                    exc.hint = (
                        f"gave up after {retry + 1} attempt(s) over {elapsed:.1f} s (the retry "
                        f"budget is {self.policy.max_elapsed:g} s: --retry-budget, the plan's "
                        "retry_budget or BCDR_RETRY_SECONDS); nothing half-written was "
                        "committed; run the command again when the storage is reachable"
                    )
                    raise
                if self._on_retry is not None:
                    self._on_retry(what, retry + 1, delay, exc)
                else:
                    say_waiting(self.url, what, exc.message, retry + 1, delay, elapsed)
                with self._lock:
                    self.retries += 1
                self._sleep(delay)
                retry += 1

    def put(self, key: str, data: bytes) -> bool:
        return self._put(key, lambda: self.inner.put(key, data), lambda: data)

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        return self._put(key, lambda: self.inner.put_parts(key, parts), lambda: b"".join(parts))

    def _put(self, key: str, put: Callable[[], bool], data: Callable[[], bytes]) -> bool:
        failed_before = False

        def attempt() -> bool:
            nonlocal failed_before
            try:
                created = put()
            except TransientStorageError:
                failed_before = True
                raise
            if not created and failed_before:
                return self.inner.get(key) == data()
            return created

        return self._call(f"put {key}", attempt)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._call(f"get {key}", lambda: self.inner.get(key, offset, length))

    def size(self, key: str) -> int:
        return self._call(f"size {key}", lambda: self.inner.size(key))

    def exists(self, key: str) -> bool:
        return self._call(f"exists {key}", lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A listing is retried as a whole (it is restarted, never resumed half-way), and
        # handed out only once complete, so a retry never yields a key twice.
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list(prefix))))

    def list_offline(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._call(f"list {prefix}", lambda: list(self.inner.list_offline(prefix))))

    def delete(self, key: str) -> bool:
        return self._call(f"delete {key}", lambda: self.inner.delete(key))


@dataclass(frozen=True)
class Transfer:
    """Bytes moved and the wall time from the first request's start to the last one's end."""

    bytes: int
    requests: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second (0 when nothing moved)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "bytes": self.bytes,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "bytes_per_second": round(self.rate),
        }


class _Meter:
    def __init__(self) -> None:
        self.bytes = 0
        self.requests = 0
        self.first: float | None = None
        self.last = 0.0

    def record(self, n: int, start: float, end: float) -> None:
        self.bytes += n
        self.requests += 1
        self.first = start if self.first is None else min(self.first, start)
        self.last = max(self.last, end)

    def snapshot(self) -> Transfer:
        span = self.last - self.first if self.first is not None else 0.0
        return Transfer(self.bytes, self.requests, span)

    def merge(self, other: _Meter) -> None:
        self.bytes += other.bytes
        self.requests += other.requests
        if other.first is not None:
            self.first = other.first if self.first is None else min(self.first, other.first)
        self.last = max(self.last, other.last)


class MeteredStorage(StorageWrapper):
    """Counts the bytes written by ``put`` and read by ``get``, for upload/download rates."""

    OWN = (Transfers,)

    def __init__(self, inner: Storage):
        super().__init__(inner)
        self._lock = threading.Lock()
        self._up = _Meter()
        self._down = _Meter()

    def after_fork(self) -> None:
        # A forked worker counts only its own transfers: the parent adds them up
        # (take_transfers in the child, add_transfers in the parent).
        self._lock = threading.Lock()
        self._up, self._down = _Meter(), _Meter()
        super().after_fork()

    def take_transfers(self) -> tuple[_Meter, _Meter]:
        """(uploaded, downloaded) since the last call, counting afresh from now."""
        with self._lock:
            taken = self._up, self._down
            self._up, self._down = _Meter(), _Meter()
        return taken

    def add_transfers(self, up: _Meter, down: _Meter) -> None:
        """Count a forked worker's transfers (:meth:`take_transfers`) as this storage's."""
        with self._lock:
            self._up.merge(up)
            self._down.merge(down)

    def put(self, key: str, data: bytes) -> bool:
        return self.put_parts(key, (data,))

    def put_parts(self, key: str, parts: Sequence[bytes]) -> bool:
        start = time.monotonic()
        created = self.inner.put_parts(key, parts)
        self._uploaded(sum(map(len, parts)) if created else 0, start)
        return created

    def _uploaded(self, size: int, start: float) -> None:
        with self._lock:
            self._up.record(size, start, time.monotonic())

    def stage(self) -> Staged:
        return _MeteredStaged(self, self.inner.stage())

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        start = time.monotonic()
        data = self.inner.get(key, offset, length)
        with self._lock:
            self._down.record(len(data), start, time.monotonic())
        return data

    @property
    def uploaded(self) -> Transfer:
        with self._lock:
            return self._up.snapshot()

    @property
    def downloaded(self) -> Transfer:
        with self._lock:
            return self._down.snapshot()


class _MeteredStaged:
    """The inner storage's staged object, its bytes counted as uploaded when committed, over
    the time from its first write (the local disk writes them as the pack is filled)."""

    def __init__(self, meter: MeteredStorage, inner: Staged):
        self._meter = meter
        self._inner = inner
        self._size = 0
        self._start: float | None = None

    def write(self, data: bytes) -> None:
        if self._start is None:
            self._start = time.monotonic()
        self._inner.write(data)
        self._size += len(data)

    def commit(self, key: str) -> bool:
        start = self._start if self._start is not None else time.monotonic()
        created = self._inner.commit(key)
        self._meter._uploaded(self._size if created else 0, start)
        return created

    def discard(self) -> None:
        self._inner.discard()
