"""Extended attributes (and ACLs, which are xattrs) survive a backup and restore (issue 35)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    r = cli("restore", "--repo", repo, "latest", "--target", plain)
    assert r.code == 0
    assert "security.capability" not in os.listxattr(restored_root(plain, src) / "tool")
    assert "extended attributes not restored: security.capability on 1 path(s)" in r.err
    assert "restored only with --keep-setuid" in r.err
    r = cli("restore", "--repo", repo, "latest", "--target", kept, "--keep-setuid")
    assert r.code == 0 and "not restored" not in r.err
    assert os.getxattr(restored_root(kept, src) / "tool", "security.capability") == cap


def test_attributes_this_user_may_not_set_are_counted_and_said(
    cli: Cli, repo: str, tmp_path: Path
) -> None:
    """trusted.* needs CAP_SYS_ADMIN: restored without it, the data comes back, the attribute
    does not, and the restore says which and why (on files and folders, in JSON too)."""
    src = write_tree(tmp_path / "src", {"a/one": b"1" * 3000, "a/two": b"2", "b": b"3"})
    for p in ("a/one", "a/two", "a"):
        os.setxattr(src / p, "trusted.bcdr", b"x")
    os.setxattr(src / "b", "user.kept", b"y")
    assert cli("backup", "--repo", repo, src).code == 0
    out = tmp_path / "out"
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "bcdr", "restore", "--repo", repo, "latest"]
        + ["--target", str(out), "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["xattrs_skipped"] == {"trusted.bcdr": 3}
    root = restored_root(out, src)
    assert (root / "a" / "one").read_bytes() == b"1" * 3000
    assert os.getxattr(root / "b", "user.kept") == b"y"
    assert "trusted.bcdr" not in os.listxattr(root / "a")
    proc = subprocess.run(
        [*drop, sys.executable, "-m", "bcdr", "restore", "--repo", repo, "latest"]
        + ["--target", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
    )
    assert "warning: extended attributes not restored: trusted.bcdr on 3 path(s)" in proc.stderr


def test_a_sharded_restore_counts_every_parts_attributes_once(
    cli: Cli, repo: str, tmp_path: Path
) -> None:
    src = write_tree(
        tmp_path / "src", {f"d{i}/f{j}": b"x" * (1000 + j) for i in range(3) for j in range(4)}
    )
    for p in [f"d{i}/f{j}" for i in range(3) for j in range(4)] + ["d0", "d1", "d2"]:
        os.setxattr(src / p, "trusted.bcdr", b"x")
    assert cli("backup", "--repo", repo, src).code == 0
    drop = ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin"]
    base = [*drop, sys.executable, "-m", "bcdr", "restore", "--repo", repo, "latest"]
    proc = subprocess.run(
        [*base, "--target", str(tmp_path / "out"), "--shards", "2", "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["xattrs_skipped"] == {"trusted.bcdr": 15}
    proc = subprocess.run(
        [*base, "--target", str(tmp_path / "out2"), "--shards", "2"], capture_output=True, text=True
    )
    assert proc.stderr.count("extended attributes not restored") == 1, proc.stderr
    assert "trusted.bcdr on 15 path(s)" in proc.stderr
