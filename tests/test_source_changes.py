"""Files that vanish or change while a backup reads them are reported; the backup completes."""

from __future__ import annotations

import os
from pathlib import Path

from bcdr.actions.backup import BackupRequest, run_backup
from bcdr.archive.backup import BackupStats
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from tests.conftest import write_tree


def _repo(tmp_path: Path) -> Repository:
    params = ChunkerParams(min_size=4096, avg_size=4096, max_size=32768)
    return Repository.init(LocalStorage(tmp_path / "repo"), password=None, chunker=params)


def test_vanished_file_is_reported_and_backup_completes(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a-big": os.urandom(400_000), "b-gone": b"bye", "c": b"c"})
    repo = _repo(tmp_path)

    def delete_next_file(stats: BackupStats, path: bytes) -> None:
        if (src / "b-gone").exists():
            os.unlink(src / "b-gone")  # removed after the folder was listed

    result = run_backup(repo, BackupRequest(paths=(str(src),)), progress=delete_next_file)
    assert result.partial
    assert [(s.path, s.reason) for s in result.skipped] == [
        (str(src / "b-gone"), "vanished before it was read")
    ]
    assert result.stats.files_new == 2  # a-big and c were stored
    assert result.snapshot.skipped == tuple(result.skipped)


def test_file_changed_while_read_is_detected(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"growing": os.urandom(400_000)})
    repo = _repo(tmp_path)
    appended = []

    def append(stats: BackupStats, path: bytes) -> None:
        if not appended:
            with open(src / "growing", "ab") as f:
                f.write(b"more")
            appended.append(True)

    result = run_backup(repo, BackupRequest(paths=(str(src),)), progress=append)
    assert result.partial
    assert "changed while it was read" in result.skipped[0].reason
    # The next backup sees the new mtime and reads the file again.
    again = run_backup(repo, BackupRequest(paths=(str(src),)))
    assert again.stats.bytes_read == 400_004 and not again.partial
