from __future__ import annotations

import os
from pathlib import Path

import pytest

from bcdr.errors import StorageFull, StoragePermission
from bcdr.storage.local import LocalStorage
from tests.conftest import tmpfs
from tests.storage_contract import StorageContract


class TestLocalStorage(StorageContract):
    @pytest.fixture
    def storage(self, tmp_path: Path) -> LocalStorage:
        return LocalStorage(tmp_path / "store")


def test_temp_files_never_listed(tmp_path: Path) -> None:
    s = LocalStorage(tmp_path)
    s.put("index/a", b"x")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    (tmp_path / "tmp" / "half-written.tmp").write_bytes(b"partial")
    assert {o.key for o in s.list("")} == {"index/a"}
    assert s.leftover_temp_files() == ["half-written.tmp"]


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
