"""The master index in memory: which pack holds a blob, with no Python object per blob.

Entries live in sorted runs of numpy columns, 48 bytes per blob (the 32-byte id as four u64;
the pack's number, the blob's type and codec in one u32; offset, stored and raw length as
u32); pack names are interned once. Index files decode straight into preallocated columns.
Blobs added in this session go to a small dict that is frozen into a run every ``RUN_SIZE``
entries; runs of similar size are merged (a binary counter), so a lookup searches O(log n)
runs. docs/performance.md gives the measured memory per indexed chunk.

This module is imported when a repository is opened, after the key is derived, so numpy's
import does not add to scrypt's peak memory.
"""

from __future__ import annotations

import bisect
import struct
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from bcdr.errors import CorruptObject, RepositoryError
from bcdr.repository.crypto import Cipher
from bcdr.repository.index import BlobLocation, iter_index_packs
from bcdr.repository.pack import BLOB_TYPES, ENTRY, PackEntry

ID_WORDS = struct.Struct(">QQQQ")
RUN_SIZE = 1 << 16
U32_MAX = (1 << 32) - 1
#: The ``pack`` column: the pack's number in its low PACK_BITS bits, the codec in the next
#: four and the blob type in the top one (a byte of its own cost 1 B per blob: 10 MiB at 10
#: million chunks). 134 million packs: 2 PiB of 16 MiB packs, where the pack names alone,
#: interned, would hold some 25 GiB.
PACK_BITS = 27
PACK_MASK = (1 << PACK_BITS) - 1
PACKS_MAX = PACK_MASK + 1
assert max(BLOB_TYPES) < 2

# ENTRY ("<BB32sQII") as a numpy record, so an index file decodes without a loop per blob.
ENTRY_DTYPE = np.dtype(
    [
        ("type", "u1"),
        ("codec", "u1"),
        ("id", ">u8", (4,)),
        ("offset", "<u8"),
        ("stored", "<u4"),
        ("raw", "<u4"),
    ]
)
assert ENTRY_DTYPE.itemsize == ENTRY.size
COLUMNS = {
    "key": np.uint64,
    "t1": np.uint64,
    "t2": np.uint64,
    "t3": np.uint64,
    "pack": np.uint32,  # see PACK_BITS
    "offset": np.uint32,
    "stored": np.uint32,
    "raw": np.uint32,
}
BYTES_PER_ENTRY = sum(np.dtype(t).itemsize for t in COLUMNS.values())

Columns = dict[str, np.ndarray]


def decode_index_records(stored: bytes, cipher: Cipher, what: str) -> list[tuple[str, np.ndarray]]:
    """Per pack, its entries as one numpy record array (for loading the master index)."""
    out = []
    for name, raw, count in iter_index_packs(stored, cipher, what):
        records = np.frombuffer(raw, dtype=ENTRY_DTYPE, count=count)
        if count and not np.isin(records["type"], list(BLOB_TYPES)).all():
            raise CorruptObject(f"{what}: unknown blob type in pack {name[:12]}")
        if count and (int(records["offset"].max()) > U32_MAX or int(records["codec"].max()) > 15):
            raise CorruptObject(f"{what}: entry out of range in pack {name[:12]}")
        out.append((name, records))
    return out


def contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids``, whether it is in ``sorted_ids`` (both ``S32``, the first sorted)."""
    if not len(sorted_ids) or not len(ids):
        return np.zeros(len(ids), dtype=bool)
    i = np.minimum(sorted_ids.searchsorted(ids), len(sorted_ids) - 1)
    found: np.ndarray = sorted_ids[i] == ids
    return found


def id_array(blob_ids: Iterable[bytes]) -> np.ndarray:
    """32-byte ids as one sorted, unique ``S32`` array."""
    return np.unique(np.frombuffer(b"".join(blob_ids), dtype="S32"))


def _unique_ids(runs: list[_Run], inside: list[np.ndarray]) -> np.ndarray:
    """The ids (``S32``, sorted, unique) of the rows ``inside`` marks in each run, sorted in
    one buffer in place."""
    total = sum(int(m.sum()) for m in inside)
    words = np.empty((total, 4), dtype=">u8")  # big-endian: bytes order as the numbers do
    at = 0
    for run, m in zip(runs, inside, strict=True):
        n = int(m.sum())
        if n:
            for col, name in enumerate(("key", "t1", "t2", "t3")):
                words[at : at + n, col] = getattr(run, name)[m]
            at += n
    ids = words.view("S32").ravel()
    ids.sort()
    # drop repeats in place, a block at a time (rows only move towards the front)
    kept, block = 0, 1 << 20
    for start in range(0, len(ids), block):
        part = ids[start : start + block]
        first = np.empty(len(part), dtype=bool)
        first[0] = kept == 0 or part[0] != ids[kept - 1]
        np.not_equal(part[1:], part[:-1], out=first[1:])
        chosen = part[first]
        ids[kept : kept + len(chosen)] = chosen
        kept += len(chosen)
    unique: np.ndarray = ids[:kept]
    return unique


def _mark_copies_outside(
    run: _Run, inside: np.ndarray, key: np.ndarray, words: np.ndarray, found: np.ndarray
) -> None:
    """Set ``found`` for each id (``key``: its first word, native; ``words``: all four) that
    ``run`` holds in a row ``inside`` does not mark."""
    left = run.key.searchsorted(key, "left")
    right = run.key.searchsorted(key, "right")
    span = right - left
    j = np.minimum(left, len(run) - 1)
    one = (span == 1) & ~inside[j]
    one &= (run.t1[j] == words[:, 1]) & (run.t2[j] == words[:, 2]) & (run.t3[j] == words[:, 3])
    found |= one
    for r in np.flatnonzero(span > 1):  # equal first words: a blob stored again, or a collision
        t1, t2, t3 = (int(w) for w in words[r, 1:])
        for i in range(int(left[r]), int(right[r])):
            if not inside[i] and (int(run.t1[i]), int(run.t2[i]), int(run.t3[i])) == (t1, t2, t3):
                found[r] = True
                break


def _fill(cols: Columns, at: int, records: np.ndarray, pack_no: int) -> None:
    """Write one pack's ENTRY records into the columns from row ``at``."""
    end = at + len(records)
    ids = records["id"]
    for word, name in enumerate(("key", "t1", "t2", "t3")):
        cols[name][at:end] = ids[:, word]
    meta = records["type"].astype(np.uint32) << 4 | records["codec"]
    cols["pack"][at:end] = meta << PACK_BITS | pack_no
    cols["offset"][at:end] = records["offset"]
    cols["stored"][at:end] = records["stored"]
    cols["raw"][at:end] = records["raw"]


def _build_run(parts: list[Columns], demoted: np.ndarray | None = None) -> _Run:
    """Concatenate column parts (oldest first) into one sorted run. Each input column is freed
    as soon as it is copied."""
    cols: Columns = {}
    for name, dtype in COLUMNS.items():
        cols[name] = (
            np.concatenate([p.pop(name) for p in parts]) if parts else np.empty(0, dtype=dtype)
        )
    return _sorted_run(cols, demoted)


def _sorted_run(cols: Columns, demoted: np.ndarray | None = None) -> _Run:
    """Sort columns by key, keeping insertion order among equal keys, except that copies in
    ``demoted`` packs (numbers) come after the others. Every copy of a blob is kept: a blob
    stored again (its first copy lost, marked or damaged) has several, and a reader finds
    the first and can fall back on the rest. Columns are permuted one at a time: the peak is
    the columns plus 16 bytes per entry (the permutation and one column being rewritten)."""
    if demoted is not None and len(demoted):
        order = np.lexsort((np.isin(cols["pack"] & PACK_MASK, demoted), cols["key"]))
    else:
        order = np.argsort(cols["key"], kind="stable")
    for name in COLUMNS:
        cols[name] = cols[name][order]
    del order
    return _Run(cols)


def _packed(no: int, blob_type: int, codec: int, offset: int, stored: int, raw: int) -> int:
    """A recent entry as one int: the ``pack`` column's u32 (see PACK_BITS), offset, stored
    and raw length (32 bits each). One 44-byte object per blob instead of a 6-tuple and its
    ints (about 200 bytes): 50,000 small files added 15-20 MiB to a backup's peak."""
    return (blob_type << 4 | codec) << PACK_BITS | no | offset << 32 | stored << 64 | raw << 96


def _place(packed: int, offset: int, stored: int, raw: int, packs: list[str]) -> BlobLocation:
    """A location from the ``pack`` column's u32 and the other fields."""
    return BlobLocation(
        packs[packed & PACK_MASK],
        packed >> (PACK_BITS + 4),
        packed >> PACK_BITS & 15,
        offset,
        stored,
        raw,
    )


def _location(value: int, packs: list[str]) -> BlobLocation:
    return _place(value & U32_MAX, value >> 32 & U32_MAX, value >> 64 & U32_MAX, value >> 96, packs)


#: Ids remembered as in no run (32 bytes and a dict slot each: about 6 MiB at most).
ABSENT_MAX = 65536


class _Run:
    """An immutable run of entries in columns, sorted by the id's first 8 bytes."""

    __slots__ = (*COLUMNS, "_keys")
    key: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    t3: np.ndarray
    pack: np.ndarray
    offset: np.ndarray
    stored: np.ndarray
    raw: np.ndarray

    def __init__(self, cols: Columns) -> None:
        for name in COLUMNS:
            setattr(self, name, cols[name])
        # the keys as a sequence of Python ints for bisect: a lookup of one id costs a third
        # of numpy's scalar searchsorted (the backup asks for every chunk it stores)
        self._keys: memoryview = np.ascontiguousarray(self.key, dtype=np.uint64).data

    def __len__(self) -> int:
        return len(self.key)

    def columns(self) -> Columns:
        return {name: getattr(self, name) for name in COLUMNS}

    def find(self, words: tuple[int, int, int, int]) -> int:
        k, t1, t2, t3 = words
        keys = self._keys
        i = bisect.bisect_left(keys, k)
        n = len(keys)
        while i < n and keys[i] == k:
            if int(self.t1[i]) == t1 and int(self.t2[i]) == t2 and int(self.t3[i]) == t3:
                return i
            i += 1
        return -1

    def location(self, i: int, packs: list[str]) -> BlobLocation:
        return _place(
            int(self.pack[i]), int(self.offset[i]), int(self.stored[i]), int(self.raw[i]), packs
        )

    def pack_numbers(self) -> np.ndarray:
        """Each row's pack number (a new array: the column holds type and codec too)."""
        numbers: np.ndarray = self.pack & PACK_MASK
        return numbers

    def ids(self) -> Iterator[bytes]:
        step = 1 << 14
        for lo in range(0, len(self.key), step):
            words = zip(
                self.key[lo : lo + step].tolist(),
                self.t1[lo : lo + step].tolist(),
                self.t2[lo : lo + step].tolist(),
                self.t3[lo : lo + step].tolist(),
                strict=True,
            )
            for w in words:
                yield ID_WORDS.pack(*w)


def _search(
    runs: list[_Run], ids: np.ndarray
) -> Iterator[tuple[int, _Run, np.ndarray, np.ndarray]]:
    """Find ``ids`` (rows of four big-endian u64 words) in ``runs``, one vectorised search per
    run: for each run, (its number, the run, the positions in ``ids`` of the ids it holds that
    no earlier run held, their rows in the run)."""
    pending = np.arange(len(ids))
    for r, run in enumerate(runs):
        if not len(run) or not len(pending):
            continue
        want = ids[pending]
        i = np.minimum(run.key.searchsorted(want[:, 0]), len(run) - 1)
        key_hit = run.key[i] == want[:, 0]
        full = key_hit & (run.t1[i] == want[:, 1]) & (run.t2[i] == want[:, 2])
        full &= run.t3[i] == want[:, 3]
        rows = np.where(full, i, -1)
        for j in np.flatnonzero(key_hit & ~full):  # several ids share the key: rare
            rows[j] = run.find(tuple(int(w) for w in want[j]))  # type: ignore[arg-type]
        hit = rows >= 0
        yield r, run, pending[hit], rows[hit]
        pending = pending[~hit]


class MasterIndex:
    """All known blobs: those of loaded index files plus those written in this session.

    Thread-safe: writers hold a lock; readers see either the old or the new list of runs.
    """

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_no: dict[str, int] = {}
        self._runs: list[_Run] = []
        self._recent: dict[bytes, int] = {}  # see _packed
        self._demoted: set[int] = set()  # pack numbers whose copies are found last
        self._lock = threading.Lock()
        # ids found in no run, since the runs last changed: a backup asks for each new chunk
        # several times (to store it, to seal it, to count it). Replaced, never emptied in
        # place, when the runs change, so a reader that searched the old runs only ever adds
        # to a dict that is already gone (see _in_runs).
        self._absent: dict[bytes, None] = {}

    def __len__(self) -> int:
        return sum(len(r) for r in self._runs) + len(self._recent)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._recent or self._in_runs(blob_id) is not None

    def _in_runs(self, blob_id: bytes) -> tuple[_Run, int] | None:
        """The run and row holding ``blob_id``, the first in run order."""
        absent = self._absent  # read before the runs: _push writes them in the other order
        if blob_id in absent:
            return None
        words = ID_WORDS.unpack(blob_id)
        for run in self._runs:
            i = run.find(words)
            if i >= 0:
                return run, i
        if len(absent) >= ABSENT_MAX:
            absent.clear()
        absent[blob_id] = None
        return None

    def memory_bytes(self) -> int:
        """Bytes held by the columns (the dict of recent blobs not included)."""
        return sum(len(r) for r in self._runs) * BYTES_PER_ENTRY

    def demote(self, pack: str) -> None:
        """Copies in ``pack`` (marked by a prune, or gone) are found after every other copy
        of the same blob, in the runs built from now on."""
        self._demoted.add(self._intern(pack))

    def _demoted_numbers(self) -> np.ndarray | None:
        return np.fromiter(self._demoted, dtype=np.uint32) if self._demoted else None

    def _intern(self, pack: str) -> int:
        no = self._pack_no.get(pack)
        if no is None:
            no = len(self._packs)
            if no >= PACKS_MAX:
                raise RepositoryError(
                    f"the repository has more than {PACKS_MAX:,} packs, more than bcdr's "
                    "index holds in memory: copy it (bcdr copy) into a repository with a "
                    "larger pack size"
                )
            self._packs.append(pack)
            self._pack_no[pack] = no
        return no

    def add_pack(self, pack: str, entries: list[PackEntry]) -> None:
        """Add a pack written in this session. A blob the loaded index already holds gets
        this copy too (a backup stores a blob again when its old copy is lost or marked):
        lookups find it first, and :meth:`only_in` counts it."""
        with self._lock:
            no = self._intern(pack)
            for e in entries:
                # the newest copy of this session wins: its pack was just written
                self._recent[e.blob_id] = _packed(
                    no, e.type, e.codec, e.offset, e.stored_len, e.raw_len
                )
            if len(self._recent) >= RUN_SIZE:
                self._freeze_recent()

    def load(self, index_files: Iterable[list[tuple[str, np.ndarray]]], capacity: int) -> None:
        """Add decoded index files in bulk (see :func:`decode_index_records`).

        ``capacity`` is an upper bound of the entries they hold (the files' total size divided
        by the entry size): the columns are allocated once and filled in place, so loading
        needs no more than the final columns plus 16 bytes per entry for sorting.
        """
        with self._lock:
            cols = {name: np.empty(capacity, dtype=dtype) for name, dtype in COLUMNS.items()}
            n = 0
            for packs in index_files:
                for pack, records in packs:
                    count = len(records)
                    if n + count > len(cols["key"]):  # the bound was wrong: grow
                        grown = max(2 * len(cols["key"]), n + count)
                        cols = {name: np.resize(col, grown) for name, col in cols.items()}
                    _fill(cols, n, records, self._intern(pack))
                    n += count
            if n == 0:
                return
            self._freeze_recent()
            filled = {name: col[:n] for name, col in cols.items()}
            del cols  # the views alone keep the buffers, so sorting frees each as it goes
            self._push(_sorted_run(filled, self._demoted_numbers()))
            del filled

    def _freeze_recent(self) -> None:
        if not self._recent:
            return
        items = list(self._recent.items())
        n = len(items)
        ids = np.frombuffer(b"".join(k for k, _ in items), dtype=">u8").reshape(n, 4)
        values = [v for _, v in items]
        del items

        def field(shift: int, mask: int, dtype: type) -> np.ndarray:
            return np.fromiter((v >> shift & mask for v in values), dtype=dtype, count=n)

        part: Columns = {
            "key": ids[:, 0].astype(np.uint64),
            "t1": ids[:, 1].astype(np.uint64),
            "t2": ids[:, 2].astype(np.uint64),
            "t3": ids[:, 3].astype(np.uint64),
            "pack": field(0, U32_MAX, np.uint32),
            "offset": field(32, U32_MAX, np.uint32),
            "stored": field(64, U32_MAX, np.uint32),
            "raw": field(96, U32_MAX, np.uint32),
        }
        self._push(_build_run([part], self._demoted_numbers()))
        self._recent = {}

    def _push(self, run: _Run) -> None:
        runs = [*self._runs, run]
        # Binary counter: merge while the newest run is at least half the one before it.
        while len(runs) > 1 and len(runs[-1]) * 2 >= len(runs[-2]):
            newer = runs.pop().columns()
            older = runs.pop().columns()
            runs.append(_build_run([older, newer], self._demoted_numbers()))
        self._runs = runs
        self._absent = {}  # after the runs (see _in_runs)

    def missing_ids(self, records: list[np.ndarray]) -> np.ndarray:
        """The ids of ENTRY ``records`` that this index does not hold, sorted and unique, as
        32-byte strings (``S32``). Vectorised: no Python object per record."""
        if not records:
            return np.empty(0, dtype="S32")
        ids = np.concatenate([r["id"] for r in records]).astype(">u8")
        found = np.zeros(len(ids), dtype=bool)
        unsure = np.zeros(len(ids), dtype=bool)  # first 8 bytes seen, the rest not (rare)
        for run in self._runs:
            if not len(run):
                continue
            i = np.minimum(run.key.searchsorted(ids[:, 0]), len(run) - 1)
            key_hit = run.key[i] == ids[:, 0]
            full = key_hit & (run.t1[i] == ids[:, 1]) & (run.t2[i] == ids[:, 2])
            full &= run.t3[i] == ids[:, 3]
            found |= full
            unsure |= key_hit & ~full
        for row in np.flatnonzero(unsure & ~found):  # equal keys: a run may hold several
            found[row] = ID_WORDS.pack(*(int(w) for w in ids[row])) in self
        return np.unique(ids[~found].view("S32").ravel())

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        value = self._recent.get(blob_id)
        if value is not None:
            return _location(value, self._packs)
        found = self._in_runs(blob_id)
        return found[0].location(found[1], self._packs) if found is not None else None

    def lookup_all(self, blob_id: bytes) -> list[BlobLocation]:
        """Every indexed copy of a blob (a blob stored again has two or more), in the order
        :meth:`lookup` prefers them."""
        out = []
        value = self._recent.get(blob_id)
        if value is not None:
            out.append(_location(value, self._packs))
        k, t1, t2, t3 = ID_WORDS.unpack(blob_id)
        for run in list(self._runs):
            i = int(run.key.searchsorted(np.uint64(k)))
            while i < len(run) and int(run.key[i]) == k:
                if (int(run.t1[i]), int(run.t2[i]), int(run.t3[i])) == (t1, t2, t3):
                    out.append(run.location(i, self._packs))
                i += 1
        return out

    def lookup_many(self, blob_ids: list[bytes]) -> list[BlobLocation | None]:
        """:meth:`lookup` for many ids at once: one vectorised search per run instead of a
        numpy call per id (restore looks up every chunk of a folder's files together)."""
        out: list[BlobLocation | None] = [None] * len(blob_ids)
        rest = []
        for n, blob_id in enumerate(blob_ids):
            if blob_id in self._recent:
                out[n] = self.lookup(blob_id)
            else:
                rest.append(n)
        if not rest:
            return out
        ids = np.frombuffer(b"".join(blob_ids[n] for n in rest), dtype=">u8").reshape(-1, 4)
        for _, run, found, hits in _search(list(self._runs), ids):
            pack, offset, stored, raw = (
                c[hits].tolist() for c in (run.pack, run.offset, run.stored, run.raw)
            )
            for j, n in enumerate(found.tolist()):
                out[rest[n]] = _place(pack[j], offset[j], stored[j], raw[j], self._packs)
        return out

    def rows(self) -> int:
        """How many entries the columns hold (see :meth:`rows_of`)."""
        with self._lock:
            self._freeze_recent()
            return sum(len(run) for run in self._runs)

    def rows_of(self, blob_ids: list[bytes]) -> np.ndarray:
        """Each id's row among the columns' entries, in ``range(rows())``, or -1 where it is
        not indexed. Rows stay valid while nothing is added: a caller can mark entries in an
        array of one byte per entry instead of keeping a set of ids (check)."""
        out = np.full(len(blob_ids), -1, dtype=np.int64)
        if not blob_ids:
            return out
        with self._lock:
            self._freeze_recent()
            runs = list(self._runs)
        first_row = np.cumsum([0] + [len(run) for run in runs])
        ids = np.frombuffer(b"".join(blob_ids), dtype=">u8").reshape(-1, 4)
        for r, _, found, hits in _search(runs, ids):
            out[found] = first_row[r] + hits
        return out

    def rows_in(self, packs: set[str]) -> np.ndarray:
        """One bool per row (see :meth:`rows_of`): whether its entry lies in one of ``packs``."""
        with self._lock:
            self._freeze_recent()
            nos = [self._pack_no[p] for p in packs if p in self._pack_no]
            runs = list(self._runs)
        if not runs:
            return np.zeros(0, dtype=bool)
        return np.concatenate([np.isin(run.pack_numbers(), nos) for run in runs])

    def holds(self, ids: np.ndarray) -> np.ndarray:
        """For each id of ``ids`` (``S32``), whether the index holds it (vectorised)."""
        out = np.zeros(len(ids), dtype=bool)
        if not len(ids):
            return out
        with self._lock:
            self._freeze_recent()
            runs = list(self._runs)
        words = np.frombuffer(ids.astype("S32").tobytes(), dtype=">u8").reshape(-1, 4)
        for _, _, found, _ in _search(runs, words):
            out[found] = True
        return out

    def only_in(self, packs: set[str]) -> np.ndarray:
        """The ids (sorted, unique, ``S32``) whose every indexed copy lies in one of ``packs``:
        the blobs lost if those packs are gone. Vectorised over the columns, and frugal: the
        ids of the copies inside ``packs`` are gathered and sorted in place (32 bytes per such
        copy), and each run is searched for other copies of them (``check`` of a repository
        whose packs are all gone holds little more than the index)."""
        with self._lock:
            self._freeze_recent()
            nos = [self._pack_no[p] for p in packs if p in self._pack_no]
            runs = list(self._runs)
        if not nos or not runs:
            return np.empty(0, dtype="S32")
        wanted = np.array(nos, dtype=np.uint32)
        inside = [np.isin(run.pack_numbers(), wanted) for run in runs]
        there = _unique_ids(runs, inside)
        if not len(there):
            return there
        words = there.view(">u8").reshape(-1, 4)
        key = words[:, 0].astype(np.uint64)
        elsewhere = np.zeros(len(there), dtype=bool)
        for run, m in zip(runs, inside, strict=True):
            if len(run) and not m.all():
                _mark_copies_outside(run, m, key, words, elsewhere)
        lost: np.ndarray = there[~elsewhere]
        return lost

    def packs(self) -> set[str]:
        return set(self._packs)

    def blobs(self) -> Iterator[bytes]:
        runs, recent = list(self._runs), list(self._recent)
        for run in runs:
            yield from run.ids()
        yield from recent
