"""Extended attributes (and ACLs, which are xattrs) survive a backup and restore (issue 35)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bcdr.repository.tree import DIR, FILE, Node, decode_tree, encode_tree
from tests.conftest import Cli, restored_root, write_tree


def _xattrs(path: Path) -> dict[str, bytes]:
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
    }


def test_xattrs_and_acls_round_trip(cli: Cli, repo: str, tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"ckpt/model.bin": b"m" * 5000, "plain.txt": b"p"})
    try:
        os.setxattr(src / "ckpt" / "model.bin", "user.bcdr.origin", b"run-42\x00\xff")
    except OSError as exc:
        pytest.fail(f"this filesystem has no user xattrs ({exc}); the test needs them")
    os.setxattr(src / "ckpt", "user.purpose", b"checkpoints")
    acl = shutil.which("setfacl")
    if acl:
        subprocess.run([acl, "-m", "u:nobody:r", str(src / "plain.txt")], check=True)
    before = {p: _xattrs(src / p) for p in ("ckpt/model.bin", "ckpt", "plain.txt")}
    assert cli("backup", "--repo", repo, src).code == 0
    # unchanged: the next backup keeps the same trees (xattrs read the same way)
    second = cli("backup", "--repo", repo, src, "--json").json()
    assert second["stats"]["files_unchanged"] == 2
    out = tmp_path / "out"
    assert cli("restore", "--repo", repo, "latest", "--target", out).code == 0
    root = restored_root(out, src)
    for p, attrs in before.items():
        assert _xattrs(root / p) == attrs, p
    if acl:
        assert "system.posix_acl_access" in _xattrs(root / "plain.txt")
    # a changed attribute is a changed file (its ctime moved): backed up again
    os.setxattr(src / "ckpt" / "model.bin", "user.bcdr.origin", b"run-43")
    third = cli("backup", "--repo", repo, src, "--json").json()
    assert third["stats"]["files_changed"] == 1


def test_trees_without_xattrs_are_unchanged_and_with_them_canonical() -> None:
    plain = Node(b"a", FILE, 0o644, content=[b"\x01" * 32], digest="d", size=1)
    assert b"xattrs" not in encode_tree([plain])
    tagged = Node(b"b", DIR, 0o755, subtree=b"\x02" * 32, xattrs=((b"user.k", b"\x00v"),))
    data = encode_tree([plain, tagged])
    assert b'"xattrs":[["dXNlci5r","AHY="]]' in data
    assert decode_tree(data, "t")[1].xattrs == ((b"user.k", b"\x00v"),)
    assert encode_tree(decode_tree(data, "t")) == data


def test_file_capabilities_are_restored_only_with_keep_setuid(
    cli: Cli, repo: str, tmp_path: Path
) -> None:
    """A capability is a privilege, as a setuid bit is: a repository someone could write to
    must not hand a restored program one unless asked (--keep-setuid)."""
    import struct

    src = write_tree(tmp_path / "src", {"tool": b"#!/bin/sh\n"})
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # cap_net_bind_service, +e
    try:
        os.setxattr(src / "tool", "security.capability", cap)
    except OSError as exc:
        pytest.fail(f"cannot set a file capability here ({exc}); the test runs as root")
    assert cli("backup", "--repo", repo, src).code == 0
    plain, kept = tmp_path / "plain", tmp_path / "kept"
    assert cli("restore", "--repo", repo, "latest", "--target", plain).code == 0
    assert "security.capability" not in os.listxattr(restored_root(plain, src) / "tool")
    assert cli("restore", "--repo", repo, "latest", "--target", kept, "--keep-setuid").code == 0
    assert os.getxattr(restored_root(kept, src) / "tool", "security.capability") == cap
