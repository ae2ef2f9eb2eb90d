"""The compact master index: columns in sorted runs, no Python object per blob."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from bcdr.errors import CorruptObject, RepositoryError
from bcdr.repository import masterindex as index_mod
from bcdr.repository.crypto import AesGcmCipher
from bcdr.repository.index import encode_index
from bcdr.repository.masterindex import BYTES_PER_ENTRY, MasterIndex, decode_index_records
from bcdr.repository.pack import DATA, ENTRY, TREE, PackEntry


def _entries(rng: random.Random, n: int) -> list[PackEntry]:
    return [
        PackEntry(
            rng.randbytes(32),
            rng.choice((DATA, TREE)),
            rng.randrange(3),
            rng.randrange(1 << 30),
            rng.randrange(1, 1 << 23),
            rng.randrange(1, 1 << 23),
        )
        for _ in range(n)
    ]


def _pack(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def _assert_found(index: MasterIndex, pack: str, e: PackEntry) -> None:
    loc = index.lookup(e.blob_id)
    assert loc is not None, e.blob_id.hex()
    assert (loc.pack, loc.type, loc.codec, loc.offset, loc.stored_len, loc.raw_len) == (
        pack,
        e.type,
        e.codec,
        e.offset,
        e.stored_len,
        e.raw_len,
    )


def test_session_adds_are_frozen_into_merged_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "RUN_SIZE", 500)
    rng = random.Random(1)
    index = MasterIndex()
    written: list[tuple[str, PackEntry]] = []
    for _ in range(40):
        pack, entries = _pack(rng), _entries(rng, 97)
        index.add_pack(pack, entries)
        written += [(pack, e) for e in entries]
    assert len(index) == len(written)
    # Most entries now live in columns, in a logarithmic number of runs.
    assert index.memory_bytes() >= BYTES_PER_ENTRY * (len(written) - 500)
    assert len(index._runs) <= 4
    for pack, e in written:
        assert e.blob_id in index
        _assert_found(index, pack, e)
    assert set(index.blobs()) == {e.blob_id for _, e in written}
    assert rng.randbytes(32) not in index
    assert index.lookup(rng.randbytes(32)) is None


def test_first_location_of_a_blob_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod, "RUN_SIZE", 10)
    rng = random.Random(2)
    first, second = _pack(rng), _pack(rng)
    entries = _entries(rng, 25)
    index = MasterIndex()
    index.add_pack(first, entries)
    index.add_pack(second, entries)  # the same blobs packed again (e.g. two racing backups)
    assert len(index) == 50  # every copy is kept: a reader falls back on the other
    for e in entries:
        _assert_found(index, first, e)
        assert [loc.pack for loc in index.lookup_all(e.blob_id)] == [first, second]


def test_copies_in_a_demoted_pack_are_found_last() -> None:
    """A blob whose first copy is in a pack that is gone or marked is found in its other copy,
    whichever was indexed first."""
    rng = random.Random(4)
    gone, kept = _pack(rng), _pack(rng)
    entries = _entries(rng, 30)
    cipher = AesGcmCipher(os.urandom(32))
    data = encode_index({gone: entries, kept: entries}, cipher)[1]
    index = MasterIndex()
    index.demote(gone)
    index.load([decode_index_records(data, cipher, "file")], 60)
    for e in entries:
        _assert_found(index, kept, e)
    assert not len(index.only_in({gone}))
    assert len(index.only_in({gone, kept})) == 30


@pytest.mark.parametrize("bound", ["exact", "too small"])
def test_bulk_load_from_index_files_keeps_every_copy_in_order(bound: str) -> None:
    rng = random.Random(3)
    cipher = AesGcmCipher(os.urandom(32))
    files = []
    expected: dict[bytes, tuple[str, PackEntry]] = {}
    total = 0
    shared = _entries(rng, 50)
    for f in range(6):
        packs = {}
        for _ in range(5):
            pack = _pack(rng)
            entries = _entries(rng, 40) + (shared if f in (1, 4) else [])
            packs[pack] = entries
            total += len(entries)
            for e in entries:
                expected.setdefault(e.blob_id, (pack, e))
        files.append(encode_index(packs, cipher)[1])
    index = MasterIndex()
    capacity = sum(len(d) for d in files) // ENTRY.size if bound == "exact" else 7
    index.load(
        (decode_index_records(data, cipher, f"file {i}") for i, data in enumerate(files)), capacity
    )
    assert len(index) == total == len(expected) + 9 * 50  # the shared blobs in 10 packs
    assert index.memory_bytes() == BYTES_PER_ENTRY * total
    for pack, e in expected.values():  # the first copy is found first
        _assert_found(index, pack, e)
    assert len(index.packs()) == 30


def test_index_with_an_unknown_blob_type_is_refused() -> None:
    cipher = AesGcmCipher(os.urandom(32))
    rng = random.Random(4)
    bad = [PackEntry(rng.randbytes(32), 7, 0, 0, 10, 10)]
    _, data = encode_index({_pack(rng): bad}, cipher)
    with pytest.raises(CorruptObject, match="unknown blob type"):
        decode_index_records(data, cipher, "index x")


def test_lookup_many_agrees_with_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Restore looks up a folder's chunks together: the same answers as one by one, for ids
    in frozen runs, in the session's recent dict, missing, repeated, and sharing the first
    8 bytes of another id (the key column)."""
    monkeypatch.setattr(index_mod, "RUN_SIZE", 300)
    rng = random.Random(7)
    index = MasterIndex()
    written: list[PackEntry] = []
    for _ in range(7):
        entries = _entries(rng, 97)
        index.add_pack(_pack(rng), entries)
        written += entries
    twin = PackEntry(written[5].blob_id[:8] + rng.randbytes(24), DATA, 1, 10, 20, 30)
    index.add_pack(_pack(rng), [twin])
    assert index._runs and index._recent  # both kinds of storage are searched
    missing = [rng.randbytes(32), written[9].blob_id[:8] + rng.randbytes(24)]
    ids = [e.blob_id for e in written] + [twin.blob_id, written[3].blob_id] + missing
    rng.shuffle(ids)
    assert index.lookup_many(ids) == [index.lookup(i) for i in ids]
    assert sum(loc is None for loc in index.lookup_many(ids)) == len(missing)
    assert index.lookup_many([]) == []


def test_rows_of_numbers_each_indexed_id_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """check marks chunks by row: every indexed id (twins sharing the key column included)
    has its own row in range(rows()), the same one each time; a missing id has -1; rows_in
    marks exactly the rows of the packs asked for."""
    monkeypatch.setattr(index_mod, "RUN_SIZE", 300)
    rng = random.Random(8)
    index = MasterIndex()
    packs: dict[str, list[PackEntry]] = {}
    for _ in range(7):
        packs[_pack(rng)] = _entries(rng, 97)
    first = next(iter(packs.values()))
    packs[_pack(rng)] = [PackEntry(first[5].blob_id[:8] + rng.randbytes(24), DATA, 1, 10, 20, 30)]
    for pack, entries in packs.items():
        index.add_pack(pack, entries)
    ids = [e.blob_id for entries in packs.values() for e in entries]
    missing = [rng.randbytes(32), first[9].blob_id[:8] + rng.randbytes(24)]
    rows = index.rows_of(ids + missing)
    assert list(rows[len(ids) :]) == [-1, -1]
    assert sorted(rows[: len(ids)]) == list(range(index.rows()))  # one row each, all used
    assert list(index.rows_of(list(reversed(ids)))) == list(reversed(rows[: len(ids)]))
    chosen = set(list(packs)[2:4])
    marked = index.rows_in(chosen)
    expect = {e.blob_id for p in chosen for e in packs[p]}
    assert {ids[n] for n in range(len(ids)) if marked[rows[n]]} == expect


@pytest.mark.parametrize("seed", range(6))
def test_only_in_agrees_with_every_copy_counted_by_hand(seed: int) -> None:
    """``only_in`` (the blobs lost when some packs are gone) against a plain count over every
    copy: loaded runs and a session's adds, blobs stored again in other packs, demoted copies,
    and ids that share their first 8 bytes (one search hit, several candidates)."""
    rng = random.Random(seed)
    packs = [_pack(rng) for _ in range(8)]
    pool = [rng.randbytes(32) for _ in range(300)]
    pool += [pool[i][:8] + rng.randbytes(24) for i in range(0, 60, 3)]  # same first word
    where: dict[bytes, set[str]] = {}
    cipher = AesGcmCipher(os.urandom(32))

    def pick(n: int) -> list[PackEntry]:
        return [PackEntry(b, DATA, 1, i * 100, 100, 200) for i, b in enumerate(rng.sample(pool, n))]

    index = MasterIndex()
    index.demote(packs[1])
    loaded = {p: pick(rng.randint(20, 80)) for p in packs[:4]}
    index.load([decode_index_records(encode_index(loaded, cipher)[1], cipher, "f")], 0)
    for p, entries in loaded.items():
        for e in entries:
            where.setdefault(e.blob_id, set()).add(p)
    session: dict[bytes, str] = {}  # a session keeps its newest copy of a blob
    for p in packs[4:]:
        entries = pick(rng.randint(1, 60))
        index.add_pack(p, entries)
        session.update((e.blob_id, p) for e in entries)
    for b, p in session.items():
        where.setdefault(b, set()).add(p)
    for gone in ({packs[0]}, {packs[1], packs[5]}, set(packs[:6]), set(packs), {"absent"}):
        expected = sorted(b for b, at in where.items() if at <= gone)
        assert [bytes(x).ljust(32, b"\0") for x in index.only_in(gone)] == expected, gone


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ids_asked_for_before_they_were_stored_are_found_after(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The index remembers ids it did not hold (a backup asks for each new chunk several
    times): an id asked for, then stored, is found, before and after the session's adds are
    frozen into runs and runs are merged, and with the memory of absent ids full."""
    monkeypatch.setattr(index_mod, "RUN_SIZE", 64)
    monkeypatch.setattr(index_mod, "ABSENT_MAX", 50)
    rng = random.Random(seed)
    index = MasterIndex()
    stored: dict[bytes, str] = {}
    for _ in range(60):
        pack, entries = _pack(rng), _entries(rng, rng.randrange(1, 30))
        for e in entries:  # asked for first: absent
            assert e.blob_id not in index and index.lookup(e.blob_id) is None
        index.add_pack(pack, entries)
        for e in entries:
            stored[e.blob_id] = pack
        for blob_id, where in rng.sample(sorted(stored.items()), min(40, len(stored))):
            assert blob_id in index
            loc = index.lookup(blob_id)
            assert loc is not None and loc.pack == where
        assert rng.randbytes(32) not in index
    index.rows()  # freeze what is left
    assert all(blob_id in index for blob_id in stored)


def test_readers_never_miss_a_stored_id_while_runs_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads asking for ids (absent ones too, so the memory of absent ids fills) while
    another stores packs and the runs are frozen and merged under them: an id stored before
    a question is always found."""
    import sys
    import threading

    monkeypatch.setattr(index_mod, "RUN_SIZE", 32)
    rng = random.Random(7)
    index = MasterIndex()
    stored: list[bytes] = []
    pending = [(_pack(rng), _entries(rng, rng.randrange(1, 20))) for _ in range(300)]
    for _, entries in pending:  # asked for before they exist: remembered as absent
        for e in entries:
            assert e.blob_id not in index
    done = threading.Event()
    misses: list[bytes] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        while not done.is_set():
            if stored:
                blob_id = stored[r.randrange(len(stored))]
                if blob_id not in index:
                    misses.append(blob_id)
            index.lookup(r.randbytes(32))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    try:
        for t in threads:
            t.start()
        for pack, entries in pending:
            index.add_pack(pack, entries)
            stored.extend(e.blob_id for e in entries)
    finally:
        done.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old)
    assert misses == []
    assert all(blob_id in index for blob_id in stored)


def test_loading_the_index_again_starts_afresh(tmp_path: Path) -> None:
    """A process that loads the index twice (a sharded run's plan compares with the parent,
    then its commit loads what the shards added) holds each entry once, with what the
    storage holds now: not every entry twice, nor a pack that went missing still trusted."""
    from bcdr.actions.common import open_repo
    from tests.conftest import run_process, write_tree

    src = write_tree(tmp_path / "src", {f"f{i}": bytes([i]) * 70_000 for i in range(6)})
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo, "--chunk-size", "4096,4096,32768").code == 0
    assert run_process("backup", "--repo", repo, src).code == 0
    opened = open_repo(str(repo))
    try:
        opened.load_index(verify_packs=True)
        once = len(opened.index)
        assert once > 6 and not opened.missing_packs
        packs = sorted(p for p in (repo / "data").rglob("*") if p.is_file())
        packs[0].unlink()
        opened.load_index(verify_packs=True)
        assert len(opened.index) == once
        assert opened.missing_packs == {packs[0].name}
    finally:
        opened.close()


def test_a_recent_entry_reads_back_the_same_before_and_after_it_is_frozen() -> None:
    """Entries added this session are kept packed into one int each until frozen into
    columns: every field, at its widest, reads back the same from either."""
    rng = random.Random(5)
    entries = [
        PackEntry(rng.randbytes(32), rng.choice([DATA, TREE]), codec, offset, stored, raw)
        for codec in range(16)
        for offset, stored, raw in ((0, 0, 0), (2**32 - 1, 2**32 - 1, 2**32 - 1), (17, 1, 2**31))
    ]
    index = MasterIndex()
    index.add_pack("p" * 64, entries)
    before = [index.lookup(e.blob_id) for e in entries]
    index._freeze_recent()
    assert not index._recent and len(index._runs) == 1
    after = [index.lookup(e.blob_id) for e in entries]
    for e, b, a in zip(entries, before, after, strict=True):
        want = ("p" * 64, e.type, e.codec, e.offset, e.stored_len, e.raw_len)
        assert b is not None and a is not None
        assert (b.pack, b.type, b.codec, b.offset, b.stored_len, b.raw_len) == want
        assert (a.pack, a.type, a.codec, a.offset, a.stored_len, a.raw_len) == want


class _Numbered:
    """Pack names by number, without a list of 134 million of them."""

    def __getitem__(self, no: int) -> str:
        return f"{no:064x}"


def test_the_widest_pack_number_type_and_codec_share_one_column_without_bleeding() -> None:
    """The pack number, the blob type and the codec share one u32 per blob: each reads back
    as it went in at its widest, from index files (columns) and from this session (packed)."""
    widest = index_mod.PACK_MASK
    cipher = AesGcmCipher(os.urandom(32))
    rng = random.Random(3)
    entries = [
        PackEntry(rng.randbytes(32), t, codec, 2**32 - 1, 2**32 - 1, 2**32 - 1)
        for t in (DATA, TREE)
        for codec in (0, 15)
    ]
    ((_, records),) = decode_index_records(
        encode_index({"a" * 64: entries}, cipher)[1], cipher, "index"
    )
    for no in (0, 1, widest):
        cols = {name: np.empty(len(records), dtype) for name, dtype in index_mod.COLUMNS.items()}
        index_mod._fill(cols, 0, records, no)
        run = index_mod._sorted_run(cols)
        assert sorted(run.pack_numbers().tolist()) == [no] * len(entries)
        got = {
            (loc.pack, loc.type, loc.codec, loc.offset, loc.stored_len, loc.raw_len)
            for loc in (run.location(i, _Numbered()) for i in range(len(run)))  # type: ignore[arg-type]
        }
        packed = {
            index_mod._location(
                index_mod._packed(no, e.type, e.codec, e.offset, e.stored_len, e.raw_len),
                _Numbered(),  # type: ignore[arg-type]
            )
            for e in entries
        }
        want = {(f"{no:064x}", e.type, e.codec, 2**32 - 1, 2**32 - 1, 2**32 - 1) for e in entries}
        assert got == want
        fields = {(p.pack, p.type, p.codec, p.offset, p.stored_len, p.raw_len) for p in packed}
        assert fields == want


def test_more_packs_than_the_column_numbers_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pack numbers past PACK_BITS would run into the blob's type and codec: an index with
    that many packs refuses to load, and names what to do."""
    index = MasterIndex()
    monkeypatch.setattr(index_mod, "PACKS_MAX", 3)
    index.add_pack("a" * 64, _entries(random.Random(1), 3))
    index.add_pack("b" * 64, _entries(random.Random(2), 3))
    index.add_pack("c" * 64, _entries(random.Random(3), 3))
    with pytest.raises(RepositoryError, match="more than 3 packs.*larger pack size"):
        index.add_pack("d" * 64, _entries(random.Random(4), 3))


def test_a_local_repositorys_index_files_are_read_in_the_loading_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that reads index files keeps freed ones in its malloc arena (bench: 1-2 B per
    chunk more, one load in three): a folder on this machine is read by the loading thread;
    a remote storage still fetches in parallel."""
    from bcdr.repository.repo import Repository
    from bcdr.storage.local import LocalStorage

    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    for i in range(3):  # three index files
        repo.save_blob(DATA, os.urandom(1000 + i))
        repo.flush()
    readers: set[str] = set()
    real = Repository._read_index_bytes

    def reading(self: Repository, name: str) -> bytes:
        readers.add(threading.current_thread().name)
        return real(self, name)

    monkeypatch.setattr(Repository, "_read_index_bytes", reading)
    again = Repository.open(LocalStorage(tmp_path / "repo"))
    assert len(again.index_files()[0]) == 3
    again.load_index()
    assert len(again.index) == 3 and readers == {threading.current_thread().name}
    monkeypatch.setattr(LocalStorage, "capability", lambda self, kind: None)
    assert again.index_readers() == again.storage.concurrency > 1
