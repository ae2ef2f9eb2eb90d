"""Restore never creates, changes or follows anything outside its target, whatever the snapshot
holds (it comes from a repository someone else may write to) and whatever the target already
holds (links left by an earlier restore, or planted)."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcdr.actions.restore import restore
from bcdr.archive.beneath import BENEATH_SUPPORTED
from bcdr.archive.restore import Restorer
from bcdr.errors import BcdrError
from bcdr.repository.hashing import fingerprint
from bcdr.repository.pack import DATA, TREE
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, encode_tree
from bcdr.storage.local import LocalStorage
from tests.conftest import init_small, run_process, write_tree

ROOT = os.geteuid() == 0


def _state(folder: Path) -> dict[str, tuple[object, ...]]:
    """Everything restore must not change outside its target: each entry's type, mode,
    owner, size, times and link target or bytes."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [".", *dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            st_ = os.lstat(full)
            body: object = None
            if stat.S_ISLNK(st_.st_mode):
                body = os.readlink(full)
            elif stat.S_ISREG(st_.st_mode):
                body = Path(full).read_bytes()
            out[os.path.relpath(full, folder)] = (
                st_.st_mode,
                st_.st_uid,
                st_.st_gid,
                st_.st_size,
                st_.st_mtime_ns,
                body,
            )
    return out


def _snapshot(repo_path: Path, nodes_of: object) -> str:
    """A snapshot (of the path /src) whose root tree the test builds from nodes, in an
    unencrypted repository (made here if there is none yet)."""
    if not (repo_path / "config").exists():
        init_small(repo_path)
    repo = Repository.open(LocalStorage(str(repo_path)))
    repo.load_index()
    with repo.writing():
        root = nodes_of(repo)  # type: ignore[operator]
    snap = Snapshot(
        time="2026-12-01T00:00:00+00:00",
        hostname="h",
        username="u",
        paths=("/src",),
        tree=root.hex(),
    )
    name = repo.save_snapshot(snap).id
    repo.close()
    return name


def _file(repo: Repository, name: bytes, data: bytes, mode: int = 0o644, **kw: int) -> Node:
    chunk = repo.save_blob(DATA, data) if data else None
    return Node(
        name,
        FILE,
        mode,
        size=len(data),
        content=[chunk] if chunk else [],
        digest=fingerprint(data),
        **kw,  # type: ignore[arg-type]
    )


def _dir(repo: Repository, name: bytes, nodes: list[Node], mode: int = 0o755) -> Node:
    return Node(name, DIR, mode, subtree=repo.save_blob(TREE, encode_tree(nodes)))


def _tree(repo: Repository, nodes: list[Node]) -> bytes:
    return repo.save_blob(TREE, encode_tree([_dir(repo, b"src", nodes)]))


def test_a_symlink_in_the_target_is_never_followed_out_of_it(tmp_path: Path) -> None:
    """The reported escape: with --overwrite, a link already in the target was followed; a
    file landed outside, the outside folder was chmod-ed 0777 and a setuid file planted."""
    repo_path = tmp_path / "repo"
    snap = _snapshot(
        repo_path,
        lambda repo: _tree(
            repo,
            [_dir(repo, b"d", [_file(repo, b"evil", b"#!/bin/sh\n", 0o4777)], mode=0o777)],
        ),
    )
    outside = write_tree(tmp_path / "outside", {"keep": b"mine"})
    target = tmp_path / "target"
    (target / "src").mkdir(parents=True)
    (target / "src" / "d").symlink_to(outside)
    before = _state(outside)
    r = run_process("restore", "--repo", repo_path, snap, "--target", target, "--overwrite")
    assert "Traceback" not in r.err, r.err
    assert _state(outside) == before
    # the folder the snapshot has there is made, in place of the link
    assert (target / "src" / "d").is_dir() and not (target / "src" / "d").is_symlink()
    evil = target / "src" / "d" / "evil"
    assert evil.read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE(evil.stat().st_mode) == 0o777  # no setuid without --keep-setuid


@pytest.mark.skipif(not ROOT, reason="setting setuid on a file one does not own needs root")
def test_setuid_and_setgid_bits_are_restored_only_with_keep_setuid(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    init_small(repo_path)
    src = write_tree(tmp_path / "src", {"tool": b"x", "shared/f": b"y"})
    os.chmod(src / "tool", 0o4755)
    os.chmod(src / "shared", 0o2775)
    assert run_process("backup", "--repo", repo_path, src).code == 0
    for flag, tool, shared in (([], 0o755, 0o775), (["--keep-setuid"], 0o4755, 0o2775)):
        out = tmp_path / f"out{len(flag)}"
        r = run_process("restore", "--repo", repo_path, "latest", "--target", out, *flag)
        assert r.code == 0, r.err
        root = out / str(src).lstrip("/")
        assert stat.S_IMODE((root / "tool").stat().st_mode) == tool
        assert stat.S_IMODE((root / "shared").stat().st_mode) == shared


@pytest.mark.parametrize("target", ["", " "])
def test_an_empty_target_is_a_usage_error(tmp_path: Path, repo: str, target: str) -> None:
    src = write_tree(tmp_path / "src", {"a": b"1"})
    assert run_process("backup", "--repo", repo, src).code == 0
    r = run_process("restore", "--repo", repo, "latest", "--target", target, cwd=tmp_path)
    assert r.code == 2 and "the restore target is empty" in r.err, r.err
    assert sorted(os.listdir(tmp_path)) == ["repo", "src"]  # nothing restored into the cwd


def test_out_of_range_modes_and_owners_are_errors_not_tracebacks(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    snap = _snapshot(
        repo_path,
        lambda repo: _tree(
            repo,
            [
                _dir(repo, b"d", [_file(repo, b"f", b"x", 2**70)], mode=2**70),
                _file(repo, b"g", b"y", 0o644, uid=2**40, gid=2**40),
            ],
        ),
    )
    r = run_process("restore", "--repo", repo_path, snap, "--target", tmp_path / "out")
    assert "Traceback" not in r.err, r.err


# -- the property ---------------------------------------------------------------------------

NAMES = st.sampled_from([b"a", b"b", b"c", b"d\n\x1b[31m", b"\xff\xfe", b" sp", b"-x"])
LINK_TARGETS = st.sampled_from([b"/", b"..", b"../..", b"../../outside", b"a", b"/etc", b""])
MODES = st.sampled_from([0o644, 0o4755, 0o2755, 0o777, 0o000, 0o1777])


@st.composite
def hostile_nodes(draw: st.DrawFn, depth: int = 0) -> list[tuple[str, Any]]:
    """A random folder: (kind, args) per entry, turned into nodes once a repository is open."""
    names = draw(st.lists(NAMES, unique=True, max_size=4))
    out: list[tuple[str, Any]] = []
    for name in names:
        kinds = ["file", "link", "hardlink"] + (["dir"] if depth < 3 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "dir":
            out.append(("dir", (name, draw(MODES), draw(hostile_nodes(depth + 1)))))
        elif kind == "link":
            out.append(("link", (name, draw(LINK_TARGETS))))
        else:
            data = draw(st.binary(max_size=300))
            out.append((kind, (name, data, draw(MODES))))
    return out


def _build(repo: Repository, spec: list[tuple[str, Any]]) -> list[Node]:
    nodes = []
    for kind, args in spec:
        if kind == "dir":
            name, mode, sub = args
            nodes.append(_dir(repo, name, _build(repo, sub), mode))
        elif kind == "link":
            name, target = args
            nodes.append(Node(name, SYMLINK, 0o777, target=target))
        else:
            name, data, mode = args
            extra = {"inode": 7, "dev": 1, "nlink": 2} if kind == "hardlink" else {}
            nodes.append(_file(repo, name, data, mode, **extra))
    return nodes


PLANTS = st.lists(
    st.tuples(
        st.sampled_from(["src", "src/a", "src/b", "src/a/b", "src/c/a", "x"]),
        st.sampled_from(["outside", "outside/sub", "/", "inside"]),
    ),
    max_size=3,
)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("BCDR_PROP_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=hostile_nodes(), plants=PLANTS, overwrite=st.booleans())
def test_no_snapshot_and_no_target_makes_restore_touch_anything_outside(
    tmp_path_factory: pytest.TempPathFactory,
    spec: list[tuple[str, object]],
    plants: list[tuple[str, str]],
    overwrite: bool,
) -> None:
    base = tmp_path_factory.mktemp("hostile")
    repo_path = base / "repo"
    snap = _snapshot(repo_path, lambda repo: _tree(repo, _build(repo, spec)))
    outside = write_tree(base / "outside", {"keep": b"mine", "sub/deep": b"more"})
    target = base / "target"
    target.mkdir()
    (target / "inside").mkdir()
    places = {"outside": outside, "outside/sub": outside / "sub", "/": Path("/")}
    for where, to in plants:  # links an earlier restore (or someone) left in the target
        link = target / where
        try:
            link.parent.mkdir(parents=True, exist_ok=True)
            if not os.path.lexists(link):
                link.symlink_to(places.get(to, target / "inside"))
        except OSError:
            continue  # its folder is a link planted before: this one cannot be made
    before = _state(outside)
    try:
        restore(str(repo_path), snap, str(target), overwrite=overwrite)
    except BcdrError:
        pass  # refused (a non-empty target without --overwrite): a clear error, no traceback
    assert _state(outside) == before
    assert sorted(os.listdir(base)) == ["outside", "repo", "target"]
    for dirpath, _, filenames in os.walk(target):
        for name in filenames:
            st_ = os.lstat(os.path.join(dirpath, name))
            assert not st_.st_mode & 0o6000, (dirpath, name)  # no setuid without the flag


def _bomb(repo: Repository, depth: int) -> bytes:
    """Each folder lists the next one twice: 2**depth files from ``depth`` trees."""
    leaf = [_file(repo, b"f", b"x")]
    node = _dir(repo, b"d", leaf)
    for _ in range(depth):
        sub = repo.save_blob(
            TREE, encode_tree([replace(node, name=b"a"), replace(node, name=b"b")])
        )
        node = Node(b"d", DIR, 0o755, subtree=sub)
    return _tree(repo, [node])


def test_a_tree_bomb_is_refused_by_restore_ls_and_drills_and_reported_by_check(
    tmp_path: Path,
) -> None:
    repo_path = tmp_path / "repo"
    snap = _snapshot(repo_path, lambda repo: _bomb(repo, 40))  # 2**40 files in 41 trees
    assert sum(p.stat().st_size for p in repo_path.rglob("*") if p.is_file()) < 200_000
    for args in (["restore", snap, "--target", tmp_path / "out"], ["ls", snap]):
        r = run_process(*args[:1], "--repo", repo_path, *args[1:], timeout=60)
        assert r.code == 1 and "Traceback" not in r.err, r.err
        assert "expand to more than 100,000,000 entries" in r.err
    assert not (tmp_path / "out" / "src").exists()
    r = run_process("check", "--repo", repo_path, timeout=60)
    assert r.code == 1 and f"snapshot {snap[:8]}: its folders expand" in r.out, r.out
    # a genuine snapshot with a folder reused a few times is restored
    small = _snapshot(repo_path, lambda repo: _bomb(repo, 4))
    r = run_process("restore", "--repo", repo_path, small, "--target", tmp_path / "ok")
    assert r.code == 0, r.err
    assert len([p for p in (tmp_path / "ok").rglob("f")]) == 16
    r = run_process("ls", "--repo", repo_path, small, env={"BCDR_MAX_TREE_DEPTH": "3"})
    assert r.code == 1 and "nest deeper than 3 levels" in r.err, r.err


def test_a_hardlink_group_whose_members_disagree_is_an_error(tmp_path: Path) -> None:
    repo_path = tmp_path / "repo"
    link = {"inode": 9, "dev": 1, "nlink": 2}
    snap = _snapshot(
        repo_path,
        lambda repo: _tree(
            repo, [_file(repo, b"a", b"real", **link), _file(repo, b"b", b"other", **link)]
        ),
    )
    r = run_process("restore", "--repo", repo_path, snap, "--target", tmp_path / "out")
    assert r.code == 1 and "hardlinked to a file with other contents" in r.err, r.err
    assert (tmp_path / "out" / "src" / "a").read_bytes() == b"real"
    assert not (tmp_path / "out" / "src" / "b").exists()


@pytest.mark.skipif(not BENEATH_SUPPORTED, reason="the kernel has no openat2 (Linux < 5.6)")
def test_a_folder_swapped_for_a_link_while_the_restore_runs_is_not_followed(
    tmp_path: Path,
) -> None:
    """The race: a process that can write into the target swaps a folder the restore has just
    made for a link to an outside folder, before the restore writes its files. Every file is
    created, renamed and linked in a folder opened beneath the target by the kernel, so the
    swap is refused, not followed."""
    repo_path = tmp_path / "repo"
    snap = _snapshot(
        repo_path,
        lambda repo: _tree(
            repo,
            [
                _dir(
                    repo,
                    b"d",
                    [
                        _file(repo, b"small", b"s" * 100),
                        _file(repo, b"big", os.urandom(300_000)),
                        Node(b"link", SYMLINK, 0o777, target=b"x"),
                    ],
                )
            ],
        ),
    )
    outside = write_tree(tmp_path / "outside", {"keep": b"mine"})
    before = _state(outside)
    target = tmp_path / "target"
    repo = Repository.open(LocalStorage(str(repo_path)))
    repo.load_index()
    restorer = Restorer(repo, os.fsencode(target), walked=["/src"])
    made = restorer._makedirs

    def makedirs_then_swap(path: bytes) -> None:
        made(path)
        if path.endswith(b"/src/d") and not os.path.islink(path):
            os.rename(path, path + b".moved")  # the racer moves the folder away ...
            os.symlink(os.fsencode(outside), path)  # ... and puts a link in its place

    restorer._makedirs = makedirs_then_swap  # type: ignore[method-assign]
    stats = restorer.run(bytes.fromhex(repo.load_snapshot(snap).tree))
    assert _state(outside) == before
    assert stats.errors and all(
        "leads out of the restore target" in e["error"] for e in stats.errors
    )
