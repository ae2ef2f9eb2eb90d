"""Restored files read back from the disk (bcdr/archive/readback.py): ``bcdr restore --verify``
reads every file it wrote back and names one the disk gives back otherwise; with ``--shards``
each part reads back its own; a scaled drill counts the parts' read-back and reads everything
back itself only when a part failed. The disk that does not keep what was written is a real
FUSE filesystem that flips a byte of some files as they are read (tests/slowfs.py ``--rot``)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from bcdr.archive import readback
from bcdr.repository.hashing import fingerprint
from bcdr.repository.tree import FILE, Node
from tests.conftest import restored_root, run_process, snapshot_tree, write_tree
from tests.test_scale_out_plans import plan_text
from tests.test_statahead import slow_mount


def _source(tmp_path: Path) -> Path:
    files = {f"d{d}/f{i:02d}.bin": os.urandom(300 + 97 * i) for d in range(2) for i in range(12)}
    files["d1/rot-small.bin"] = os.urandom(5000)
    files["big.bin"] = os.urandom(3 << 20)
    files["empty"] = b""
    src = write_tree(tmp_path / "src", files)
    os.link(src / "d0" / "f03.bin", src / "d1" / "same-inode")
    os.symlink("d0/f00.bin", src / "link")
    return src


def _backup(tmp_path: Path) -> tuple[Path, Path]:
    src = _source(tmp_path)
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo).code == 0
    r = run_process("backup", "--repo", repo, "--job", "j", src)
    assert r.code == 0, r.err
    return src, repo


def _inodes(src: Path) -> list[Path]:
    """The source's regular files, one name per inode (what a restore writes)."""
    seen: dict[int, Path] = {}
    for f in sorted(src.rglob("*")):
        if f.is_file() and not f.is_symlink():
            seen.setdefault(f.stat().st_ino, f)
    return list(seen.values())


def test_restore_verify_reads_every_file_it_wrote_back(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path)
    out = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--target", out, "--verify", "--json")
    assert r.code == 0, r.err
    doc = r.json()
    files = _inodes(src)
    assert doc["files_read_back"] == len(files) and doc["read_back_wrong"] == 0
    assert doc["bytes_read_back"] == sum(f.stat().st_size for f in files)
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)
    # the text says so; --include reads back only what it restored
    r = run_process(
        "restore", "--repo", repo, "latest", "--target", tmp_path / "one", "--verify",
        "--include", f"{src}/d0/f01.bin",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "read back  1 files" in r.out
    # without --verify nothing is read back
    r = run_process("restore", "--repo", repo, "latest", "--target", tmp_path / "o2", "--json")
    assert r.code == 0 and r.json()["files_read_back"] == 0


def test_a_file_the_disk_gives_back_otherwise_fails_the_restore_by_name(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    with slow_mount(disk, tmp_path / "mnt", 0.0, writable=True, rot="rot-") as mnt:
        # every chunk was checked as written: without --verify the restore cannot know
        r = run_process("restore", "--repo", repo, "latest", "--target", mnt / "plain")
        assert r.code == 0, r.err
        r = run_process(
            "restore", "--repo", repo, "latest", "--target", mnt / "checked", "--verify",
            "--json",
        )  # fmt: skip
        assert r.code == 1, r.out + r.err
        doc = r.json()
        [error] = doc["errors"]
        assert error["path"] == f"{src}/d1/rot-small.bin"
        assert error["error"].startswith("read back from the disk: digest ")
        assert doc["read_back_wrong"] == 1
        assert doc["files_read_back"] == len(_inodes(src)) - 1
        r = run_process(
            "restore", "--repo", repo, "latest", "--target", mnt / "text", "--verify"
        )
        assert r.code == 1
        assert "rot-small.bin: read back from the disk" in r.err
        assert "did not keep what was written" in r.err and "nothing wrong" not in r.err
        # with --shards each part reads back its own files: the one that wrote it fails
        r = run_process(
            "restore", "--repo", repo, "latest", "--target", mnt / "parts", "--shards", 2,
            "--verify",
        )  # fmt: skip
        assert r.code == 1
        assert "1 of 2 part(s) failed" in r.err and "rot-small.bin" in r.err
        assert "--verify" in r.err.split("hint:")[1]  # the part is run again as it ran


def test_each_part_reads_back_its_own_files(tmp_path: Path) -> None:
    src, repo = _backup(tmp_path)
    out = tmp_path / "out"
    r = run_process(
        "restore", "--repo", repo, "latest", "--target", out, "--shards", 3, "--verify", "--json"
    )
    assert r.code == 0, r.out + r.err
    parts = r.json()["parts"]
    assert all(p["files_read_back"] == p["files"] for p in parts)
    assert sum(p["files_read_back"] for p in parts) == len(_inodes(src))
    assert snapshot_tree(restored_root(out, src)) == snapshot_tree(src)


def test_a_scaled_drill_counts_the_parts_read_back_and_reads_back_itself_when_one_fails(
    tmp_path: Path,
) -> None:
    src, _ = _backup(tmp_path)
    f = tmp_path / "plan.yaml"
    f.write_text(plan_text(src, backup="{shards: 2}", drill="{shards: 2}"))
    state = ["--state-dir", tmp_path / "state"]
    assert run_process("run", f, "--job", "ckpt", *state).code == 0
    r = run_process("drill", f, "--json")
    assert r.code == 0, r.out + r.err
    [report] = r.json()["drills"]
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    assert report["read_back"] == "parts" and report["verdict"] == "pass"
    assert report["files_verified"] == len(files)
    assert report["bytes_verified"] == sum(p.stat().st_size for p in files)
    r = run_process("drill", f)
    assert "read back by the 2 parts" in r.out
    # its scratch on a disk that does not keep one file: the part fails, the drill reads
    # everything back itself and names the file
    disk = tmp_path / "disk"
    disk.mkdir()
    with slow_mount(disk, tmp_path / "mnt", 0.0, writable=True, rot="rot-") as mnt:
        text = plan_text(src, backup="{shards: 2}", drill="{shards: 2}")
        f.write_text(text.replace("scratch: scratch", f"scratch: {mnt}"))
        r = run_process("drill", f, "--json")
        assert r.code == 4, r.out + r.err  # a drill that failed
        [report] = r.json()["drills"]
    assert report["read_back"] == "drill" and report["verdict"] == "fail"
    wrong = {x["path"]: x["error"] for x in report["failures"]}
    assert wrong[f"{src}/d1/rot-small.bin"].startswith("digest ")
    assert "rot-small.bin: read back from the disk" in wrong["(part 1)"]
    # the finish did not run: the hardlink's other name was never made
    assert wrong[f"{src}/d1/same-inode"] == "not restored: No such file or directory"
    assert len(wrong) == 3 and report["files_verified"] == len(files) - 2


def test_reading_back_a_fifo_in_a_files_place_does_not_wait(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    node = Node(name=b"f", type=FILE, size=3, digest=fingerprint(b"abc"))
    got: list[readback.ReadBack] = []
    reader = threading.Thread(target=lambda: got.append(readback.read_path((bytes(fifo), node))))
    reader.start()
    reader.join(10)
    assert got == ["not a regular file"]
    (tmp_path / "g").write_bytes(b"abd")
    result = readback.read_path((os.fsencode(tmp_path / "g"), node))
    assert readback.finding(node, result) == (
        f"digest {fingerprint(b'abd')}, the snapshot recorded {fingerprint(b'abc')}"
    )
    assert readback.finding(node, readback.read_path((os.fsencode(tmp_path / "x"), node))) == (
        "not restored: No such file or directory"
    )
    # a link in a file's place is not followed (here to a file with the right bytes)
    (tmp_path / "right").write_bytes(b"abc")
    os.symlink("right", tmp_path / "link")
    assert readback.read_path((os.fsencode(tmp_path / "link"), node)) == (
        "cannot be opened to read it back: Too many levels of symbolic links"
    )
