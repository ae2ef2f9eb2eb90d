"""Region cuts (chunker ``region``): a file is cut at every multiple of the region size, each
region chunked on its own and fingerprinted on its own, so that a part of a large file can be
backed up apart from the rest (``backup --shards``) with the very chunks of a whole pass.
Older repositories (no ``region`` in their config) keep cutting files whole."""

from __future__ import annotations

import json
import os
import random
import struct
from itertools import accumulate
from pathlib import Path

import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from bcdr.actions.common import open_repo
from bcdr.archive.filerestore import file_digest
from bcdr.archive.safetensors import Segment, split_at_regions
from bcdr.repository.hashing import RegionFingerprint, fingerprint_for, region_of
from bcdr.repository.tree import decode_tree
from tests.conftest import run_process, snapshot_tree, write_tree

REGION = 64 * 1024
CHUNKS = "4096,4096,32768"


@given(st.binary(max_size=5000), st.integers(1, 2000), st.lists(st.integers(0, 700)))
@settings(max_examples=200, deadline=None)
def test_region_fingerprint_is_the_digest_of_region_digests(
    data: bytes, region: int, cuts: list[int]
) -> None:
    h = RegionFingerprint(region)
    pos = 0
    for n in cuts:  # fed in arbitrary pieces
        h.update(data[pos : pos + n])
        pos += n
    h.update(data[pos:])
    blocks = [data[i : i + region] for i in range(0, len(data), region)] or [b""]
    if len(blocks) == 1:
        want = xxhash.xxh3_128_hexdigest(data)
    else:
        joined = b"".join(xxhash.xxh3_128_digest(b) for b in blocks)
        want = f"x{region}:{xxhash.xxh3_128_hexdigest(joined)}"
    assert h.hexdigest() == want
    assert region_of(want) == (region if len(blocks) > 1 else 0)
    again = fingerprint_for(want)
    again.update(data)
    assert again.hexdigest() == want


def test_split_at_regions() -> None:
    segs = [Segment(0, 10, 0), Segment(10, 250, 2), Segment(250, 260, 0)]
    out = split_at_regions(segs, 100)
    assert [(s.start, s.end, s.elsize) for s in out] == [
        (0, 10, 0),
        (10, 100, 2),
        (100, 200, 2),
        (200, 250, 2),
        (250, 260, 0),
    ]
    assert split_at_regions(segs, 0) == segs


def _safetensors(path: Path, tensors: int, elements: int) -> None:
    rng = random.Random(4)
    header: dict[str, object] = {}
    body = b""
    for i in range(tensors):
        data = rng.randbytes(elements * 2)
        header[f"t{i}"] = {
            "dtype": "BF16",
            "shape": [elements],
            "data_offsets": [len(body), len(body) + len(data)],
        }
        body += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def _file_nodes(repo_path: Path, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """Every file node of the newest snapshot, by name, with its chunks' lengths."""
    repo = open_repo(str(repo_path), env=env)
    try:
        repo.load_index()
        snap = repo.resolve_snapshot("latest")
        out = {}
        todo = [bytes.fromhex(snap.tree)]
        while todo:
            for node in decode_tree(repo.load_blob(todo.pop()), "tree"):
                if node.subtree:
                    todo.append(node.subtree)
                elif node.type == "file":
                    lengths = [repo.index.lookup(c).raw_len for c in node.content]  # type: ignore[union-attr]
                    out[node.name.decode()] = (node, lengths)
        return out
    finally:
        repo.close()


def test_files_are_cut_at_region_boundaries_and_restore_verified(tmp_path: Path) -> None:
    rng = random.Random(8)
    tree = write_tree(
        tmp_path / "tree",
        {
            "plain.bin": rng.randbytes(5 * REGION + 1234),
            "exact.bin": rng.randbytes(2 * REGION),
            "small.bin": rng.randbytes(REGION - 10),
        },
    )
    _safetensors(tree / "model.safetensors", 3, 70_000)  # tensors of 140 kB, across regions
    repo = tmp_path / "repo"
    r = run_process("init", "--repo", repo, "--chunk-size", CHUNKS, "--region-size", REGION)
    assert r.code == 0, r.err
    assert json.loads((repo / "config").read_text())["chunker"]["region"] == REGION
    assert run_process("backup", "--repo", repo, tree).code == 0
    nodes = _file_nodes(repo, {})
    for name in ("plain.bin", "exact.bin", "model.safetensors"):
        node, lengths = nodes[name]
        ends = set(accumulate(lengths))
        # every region boundary inside the file is a chunk boundary
        assert set(range(REGION, node.size, REGION)) <= ends, name
        assert node.digest.startswith(f"x{REGION}:"), name
        data = (tree / name).read_bytes()
        h = RegionFingerprint(REGION)
        h.update(data)
        assert node.digest == h.hexdigest()
    assert region_of(nodes["small.bin"][0].digest) == 0  # one region: the plain digest
    target = tmp_path / "out"
    r = run_process("restore", "--repo", repo, "latest", "--target", target)
    assert r.code == 0, r.err
    assert snapshot_tree(target / tree.relative_to("/")) == snapshot_tree(tree)
    # with every restore path: threads, and through the page cache
    for extra, env in ((["--buffered"], {}), ([], {"BCDR_WORKER_PROCESSES": "0"})):
        out = tmp_path / f"out-{len(extra)}-{len(env)}"
        r = run_process("restore", "--repo", repo, "latest", "--target", out, *extra, env=env)
        assert r.code == 0, r.err
        assert snapshot_tree(out / tree.relative_to("/")) == snapshot_tree(tree)
    # the read-back a drill makes: region digests of a file on disk, a flipped byte caught
    victim = target / tree.relative_to("/") / "plain.bin"
    want = nodes["plain.bin"][0].digest
    assert _read_back(victim, want) == want
    damaged = bytearray(victim.read_bytes())
    damaged[REGION + 5] ^= 1
    victim.write_bytes(bytes(damaged))
    assert _read_back(victim, want) != want


def _read_back(path: Path, like: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return file_digest(fd, os.fstat(fd).st_size, like)
    finally:
        os.close(fd)


def test_a_drill_verifies_region_digests(tmp_path: Path) -> None:
    rng = random.Random(9)
    tree = write_tree(tmp_path / "tree", {"big.bin": rng.randbytes(3 * REGION + 7)})
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "version: 1\nname: r\nrepositories:\n  local: {url: repo}\n"
        f"backups:\n  b: {{paths: [{tree}], repository: local, schedule: daily}}\n"
        "drills:\n  d: {backup: b, schedule: weekly, rto: 1h}\n"
    )
    r = run_process("init", "--repo", tmp_path / "repo", "--region-size", REGION)
    assert r.code == 0, r.err
    assert run_process("run", plan, "--job", "b").code == 0
    r = run_process("drill", plan, "--json")
    assert r.code == 0, r.out + r.err
    doc = r.json()
    [drill] = doc if isinstance(doc, list) else doc.get("drills", [doc])
    assert drill["verdict"] == "pass" and drill["files_verified"] == 1, drill


def test_a_repository_without_regions_cuts_files_whole(tmp_path: Path) -> None:
    """A config written before regions existed has no ``region``: files are cut and
    fingerprinted whole, as that bcdr did."""
    repo = tmp_path / "repo"
    assert run_process("init", "--repo", repo, "--chunk-size", CHUNKS).code == 0
    config = json.loads((repo / "config").read_text())
    del config["chunker"]["region"]
    (repo / "config").write_text(json.dumps(config))
    big = os.urandom(3 * 1024**2)
    tree = write_tree(tmp_path / "tree", {"big.bin": big})
    assert run_process("backup", "--repo", repo, tree).code == 0
    node, _ = _file_nodes(repo, {})["big.bin"]
    assert node.digest == xxhash.xxh3_128_hexdigest(big)


def test_region_size_is_checked(tmp_path: Path) -> None:
    for bad in ("1000", "65537", str(2 * 1024**4)):
        r = run_process("init", "--repo", tmp_path / f"r{bad}", "--region-size", bad)
        assert r.code == 2 and "region" in r.err, r.err
        assert not (tmp_path / f"r{bad}").exists()
    r = run_process("init", "--repo", tmp_path / "none", "--region-size", "0")
    assert r.code == 0, r.err
