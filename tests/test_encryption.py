"""Encrypted repositories: nothing readable at rest, round trip exact, tampering detected."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import restored_root, run_process, snapshot_tree, write_tree

ENV = {"BCDR_PASSWORD": "s3cret-pass"}


def test_encrypted_round_trip_and_nothing_in_clear(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    marker = b"PLAINTEXT-MARKER-" * 1000
    src = write_tree(tmp_path / "src", {"secret-name.txt": marker, "b": os.urandom(100_000)})
    assert run_process("init", "--repo", repo, "--encrypt", env=ENV).code == 0
    r = run_process("backup", "--repo", repo, src, env=ENV)
    assert r.code == 0, r.err
    for path in repo.rglob("*"):
        if path.is_file() and path.name != "config":
            blob = path.read_bytes()
            assert b"PLAINTEXT-MARKER" not in blob and b"secret-name" not in blob, path
    out = tmp_path / "out"
    assert run_process("restore", "--repo", repo, "latest", "--target", out, env=ENV).code == 0
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    assert run_process("check", "--repo", repo, "--read-data", env=ENV).code == 0


def test_tampered_ciphertext_is_detected(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    src = write_tree(tmp_path / "src", {"a": os.urandom(50_000)})
    assert run_process("init", "--repo", repo, "--encrypt", env=ENV).code == 0
    assert run_process("backup", "--repo", repo, src, env=ENV).code == 0
    pack = next(p for p in (repo / "data").rglob("*") if p.is_file())
    data = bytearray(pack.read_bytes())
    data[20] ^= 0xFF
    pack.write_bytes(bytes(data))
    r = run_process("check", "--repo", repo, "--read-data", env=ENV)
    assert r.code == 1 and "authentication failed" in r.out
