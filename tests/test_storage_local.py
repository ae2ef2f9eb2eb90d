from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcdr.errors import StorageFull, StoragePermission
from bcdr.repository.pack import DATA
from bcdr.repository.repo import Repository
from bcdr.storage.base import Forkable, LocalFolder, Tiers, Transfers
from bcdr.storage.faulty import FaultyStorage
from bcdr.storage.local import LocalStorage
from bcdr.storage.wrap import MeteredStorage, RetryingStorage
from tests.conftest import tmpfs
from tests.storage_contract import StorageContract


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "store")


# The contract holds through every wrapper (storage/wrap.py, storage/faulty.py), alone and
# stacked as bcdr stacks them.


class TestRetryingStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> RetryingStorage:
        return RetryingStorage(LocalStorage(tmp_path / "store"))


class TestMeteredStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> MeteredStorage:
        return MeteredStorage(LocalStorage(tmp_path / "store"))


class TestFaultyStorageWithoutFaults(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> FaultyStorage:
        return FaultyStorage(LocalStorage(tmp_path / "store"))


class TestStackedWrappers(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> MeteredStorage:
        return MeteredStorage(RetryingStorage(FaultyStorage(LocalStorage(tmp_path / "store"))))


def test_capabilities_are_found_through_every_wrapper(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "store")
    faulty = FaultyStorage(local)
    retrying = RetryingStorage(faulty)
    stacked = MeteredStorage(retrying)
    assert stacked.capability(LocalFolder) is local
    assert stacked.capability(Transfers) is stacked  # what the meter adds
    assert retrying.capability(Transfers) is None
    assert stacked.capability(Tiers) is None  # a local disk has no access tiers
    # a forkable chain is forked whole: each wrapper's after_fork runs, the backend's last
    assert stacked.capability(Forkable) is stacked
    ran: list[str] = []
    local.after_fork = lambda: ran.append("local")  # type: ignore[method-assign]
    retrying_after = retrying.after_fork

    def retrying_spy() -> None:
        ran.append("retrying")
        retrying_after()

    retrying.after_fork = retrying_spy  # type: ignore[method-assign]
    stacked.after_fork()
    assert ran == ["retrying", "local"]
    # no catch-all: what no layer offers is not reachable by accident
    assert not hasattr(stacked, "leftover_temp_files")


def test_temp_files_never_listed(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.put("index/a", b"x")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "tmp" / "half-written.tmp").write_bytes(b"partial")
    assert {o.key for o in s.list("")} == {"index/a"}
    assert s.leftover_temp_files() == ["half-written.tmp"]


def test_a_staged_object_is_written_to_disk_as_it_comes_and_never_left_behind(
    tmp_path: Path,
) -> None:
    """A pack being filled is in a temporary file, not in memory; committed or discarded,
    the temporary file is gone."""
    s = LocalStorage(tmp_path)
    staged = s.stage()
    staged.write(b"a" * 1000)  # small parts are gathered ...
    staged.write(b"b" * (3 << 20))  # ... and written before a large one
    (tmp,) = (tmp_path / "tmp").iterdir()
    assert tmp.stat().st_size == 1000 + (3 << 20)
    assert staged.commit("data/aa/p") is True
    assert s.leftover_temp_files() == []
    dropped = s.stage()
    dropped.write(b"c" * (2 << 20))
    assert len(s.leftover_temp_files()) == 1
    dropped.discard()
    assert s.leftover_temp_files() == []
    with pytest.raises(ValueError):  # ended: no temporary file is made anew
        dropped.write(b"e" * (2 << 20))
    assert s.leftover_temp_files() == []
    with pytest.raises(ValueError):  # a bad key: refused, and nothing left
        bad = s.stage()
        bad.write(b"d" * (2 << 20))
        bad.commit("../escape")
    assert s.leftover_temp_files() == []


def test_a_staged_object_that_fills_the_disk_is_discarded(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        s = LocalStorage(mnt)
        staged = s.stage()
        with pytest.raises(StorageFull):
            for _ in range(8):
                staged.write(os.urandom(300_000))
        assert s.leftover_temp_files() == []


def test_an_interrupted_backup_leaves_no_pack_being_filled(tmp_path: Path) -> None:
    """Backup writes its packs as it fills them (Storage.stage): an error midway discards
    the pack being filled and those not committed yet."""
    repo = Repository.init(LocalStorage(tmp_path / "repo"), password=None)
    store = LocalStorage(tmp_path / "repo")
    with pytest.raises(RuntimeError), repo.writing():
        for _ in range(40):  # 20 MiB that do not compress: one pack full, one being filled
            repo.save_blob(DATA, os.urandom(512 * 1024))
        assert len(store.leftover_temp_files()) >= 1  # on disk, not in memory
        raise RuntimeError("interrupted")
    assert store.leftover_temp_files() == []
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    with repo.writing():
        blob = repo.save_blob(DATA, b"x" * 100_000)
    assert store.leftover_temp_files() == []
    repo = Repository.open(LocalStorage(tmp_path / "repo"))
    repo.load_index()
    assert repo.load_blob(blob) == b"x" * 100_000


def test_read_only_filesystem_is_translated(tmp_path: Path) -> None:
    """EROFS from a read-only mount becomes StoragePermission."""
    with tmpfs(tmp_path / "ro", "1m", "ro") as mnt:
        with pytest.raises(StoragePermission) as exc:
            LocalStorage(mnt).put("index/a", b"x")
        assert "permission denied" in exc.value.message


def test_disk_full_is_translated_and_leaves_nothing(tmp_path: Path) -> None:
    """A real full filesystem: a 1 MiB tmpfs."""
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        s = LocalStorage(mnt)
        with pytest.raises(StorageFull) as exc:
            s.put("data/aa/big", os.urandom(2 * 1024 * 1024))
        assert "nothing half-written" in (exc.value.hint or "")
        assert not s.exists("data/aa/big")
        assert s.leftover_temp_files() == []
        # a pack written part by part: the disk fills at a later part, nothing stays
        with pytest.raises(StorageFull):
            s.put_parts("data/aa/parts", [os.urandom(300_000) for _ in range(8)])
        assert not s.exists("data/aa/parts")
        assert s.leftover_temp_files() == []
