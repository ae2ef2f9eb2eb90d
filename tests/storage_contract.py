"""The storage contract suite (bcdr/storage/base.py). Every Storage implementation runs it:
subclass ``StorageContract`` and provide a ``storage`` fixture."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from bcdr.errors import ObjectNotFound
from bcdr.storage.base import Storage


class StorageContract:
    def test_put_then_get(self, storage: Storage) -> None:
        assert storage.put("data/ab/obj", b"hello world") is True
        assert storage.get("data/ab/obj") == b"hello world"
        assert storage.size("data/ab/obj") == 11
        assert storage.exists("data/ab/obj")

    def test_put_if_absent_keeps_first(self, storage: Storage) -> None:
        assert storage.put("snapshots/x", b"first") is True
        assert storage.put("snapshots/x", b"second") is False
        assert storage.get("snapshots/x") == b"first"

    def test_empty_object(self, storage: Storage) -> None:
        assert storage.put("locks/empty", b"") is True
        assert storage.get("locks/empty") == b""
        assert storage.size("locks/empty") == 0

    def test_ranged_reads(self, storage: Storage) -> None:
        data = bytes(range(256)) * 64
        storage.put("data/00/r", data)
        assert storage.get("data/00/r", 10, 5) == data[10:15]
        assert storage.get("data/00/r", 100) == data[100:]
        assert storage.get("data/00/r", len(data) - 3, 100) == data[-3:]
        assert storage.get("data/00/r", len(data) + 10, 4) == b""

    def test_missing_object(self, storage: Storage) -> None:
        with pytest.raises(ObjectNotFound):
            storage.get("index/nope")
        with pytest.raises(ObjectNotFound):
            storage.size("index/nope")
        assert not storage.exists("index/nope")

    def test_list_by_prefix(self, storage: Storage) -> None:
        keys = {f"data/{i:02x}/{i:064x}" for i in range(40)} | {"index/a", "index/b", "config"}
        for k in keys:
            storage.put(k, k.encode())
        for info in storage.list(""):  # when it was written, by the storage's clock
            assert info.modified is not None and info.modified.tzinfo is not None
            assert abs((info.modified - datetime.now(UTC)).total_seconds()) < 300
        listed = {(o.key, o.size) for o in storage.list("data/")}
        assert listed == {(k, len(k)) for k in keys if k.startswith("data/")}
        assert {o.key for o in storage.list("index/")} == {"index/a", "index/b"}
        assert {o.key for o in storage.list("")} == keys
        assert list(storage.list("snapshots/")) == []

    def test_delete(self, storage: Storage) -> None:
        storage.put("locks/l1", b"x")
        assert storage.delete("locks/l1") is True
        assert not storage.exists("locks/l1")
        assert storage.delete("locks/l1") is False
        assert storage.put("locks/l1", b"again") is True

    def test_concurrent_put_if_absent_has_one_winner(self, storage: Storage) -> None:
        wins: list[bytes] = []
        barrier = threading.Barrier(8)

        def writer(i: int) -> None:
            payload = f"writer-{i}".encode() * 1000
            barrier.wait()
            if storage.put("snapshots/race", payload):
                wins.append(payload)

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(wins) == 1
        assert storage.get("snapshots/race") == wins[0]

    def test_large_object(self, storage: Storage) -> None:
        data = bytes(range(251)) * (64 * 1024)  # ~16 MiB, a full pack
        storage.put("data/ff/big", data)
        assert storage.size("data/ff/big") == len(data)
        assert storage.get("data/ff/big", 8 * 1024 * 1024, 1024) == data[8 * 1024 * 1024 :][:1024]

    def test_put_parts_stores_them_joined(self, storage: Storage) -> None:
        parts = [bytes([i]) * (100_000 + 7 * i) for i in range(40)] + [b"", b"tail"]  # ~4 MiB
        assert storage.put_parts("data/cd/parts", parts) is True
        whole = b"".join(parts)
        assert storage.size("data/cd/parts") == len(whole)
        assert storage.get("data/cd/parts") == whole
        assert storage.get("data/cd/parts", 1_000_003, 200_000) == whole[1_000_003:1_200_003]
        # put-if-absent, as put
        assert storage.put_parts("data/cd/parts", [b"other"]) is False
        assert storage.get("data/cd/parts") == whole
        assert storage.put_parts("locks/none", []) is True
        assert storage.get("locks/none") == b""

    def test_staged_object_is_committed_under_its_key_or_discarded(self, storage: Storage) -> None:
        parts = [b"\x01" * 3_000_000, b"small", b"", b"\x02" * 700_000, b"tail"]
        staged = storage.stage()
        for part in parts:
            staged.write(part)
        assert staged.commit("data/ef/staged") is True
        assert storage.get("data/ef/staged") == b"".join(parts)
        again = storage.stage()
        again.write(b"another")
        assert again.commit("data/ef/staged") is False  # put-if-absent
        assert storage.get("data/ef/staged") == b"".join(parts)
        dropped = storage.stage()
        dropped.write(b"\x03" * 2_000_000)
        dropped.discard()
        empty = storage.stage()
        assert empty.commit("locks/staged-empty") is True
        assert storage.get("locks/staged-empty") == b""
        assert {o.key for o in storage.list("data/ef/")} == {"data/ef/staged"}

    def test_invalid_keys_refused(self, storage: Storage) -> None:
        for bad in ("../escape", "/abs", "a//b", ""):
            with pytest.raises(ValueError):
                storage.put(bad, b"x")
