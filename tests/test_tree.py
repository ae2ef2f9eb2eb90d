"""Tree encoding is canonical: the fast encoder writes exactly json.dumps's bytes."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcdr.errors import CorruptObject
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree, encode_tree

ints = st.integers(min_value=0, max_value=2**63)
names = st.one_of(
    st.text(min_size=1, max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=20),  # often not UTF-8: stored as name_b64
).filter(lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b".."))
ids = st.binary(min_size=32, max_size=32)
targets = st.binary(max_size=30)  # a symlink may point anywhere: ../x, /etc, ''


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    kind = draw(st.sampled_from([FILE, DIR, SYMLINK]))
    mode, uid, gid, mtime_ns = (draw(ints) for _ in range(4))
    base = Node(draw(names), kind, mode, uid, gid, mtime_ns)
    if kind == FILE:
        ctime_ns, inode, dev, nlink, size = (draw(ints) for _ in range(5))
        return dataclasses.replace(
            base,
            ctime_ns=ctime_ns,
            inode=inode,
            dev=dev,
            nlink=nlink,
            size=size,
            content=draw(st.lists(ids, max_size=4)),
            digest=draw(st.one_of(st.none(), st.text(max_size=40))),
        )
    if kind == DIR:
        return dataclasses.replace(base, subtree=draw(st.one_of(st.none(), ids)))
    return dataclasses.replace(base, target=draw(targets))


def reference(items: list[Node]) -> bytes:
    doc = {"nodes": [n.to_dict() for n in sorted(items, key=lambda n: n.name)]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@settings(max_examples=300, deadline=None)
@given(st.lists(nodes(), max_size=6, unique_by=lambda n: n.name))
def test_encoded_trees_are_the_canonical_json(items: list[Node]) -> None:
    encoded = encode_tree(items)
    assert encoded == reference(items)
    assert decode_tree(encoded, "t") == sorted(items, key=lambda n: n.name)


def test_names_that_need_escaping_encode_like_json() -> None:
    items = [
        Node(b'quote"back\\slash', FILE, digest="d"),
        Node("ctrl\x01\ttab é 雪 🙂".encode(), DIR),
        Node(b"\xff\xfe not utf-8", SYMLINK, target=b"\x80"),
        Node(os.fsencode("plain"), SYMLINK, target="→ there".encode()),
    ]
    assert encode_tree(items) == reference(items)


GOOD_FILE = {
    "content": ["ab" * 32],
    "ctime_ns": 1,
    "dev": 2,
    "digest": None,
    "gid": 0,
    "inode": 3,
    "mode": 420,
    "mtime_ns": 4,
    "name": "f",
    "nlink": 1,
    "size": 5,
    "type": "file",
    "uid": 0,
}


def test_a_well_formed_node_decodes() -> None:
    (node,) = decode_tree(json.dumps({"nodes": [GOOD_FILE]}).encode(), "t")
    assert node == Node(b"f", FILE, 420, 0, 0, 4, 1, 3, 2, 1, 5, [bytes.fromhex("ab" * 32)])


@pytest.mark.parametrize(
    "change",
    [
        {"size": None},  # a file's field missing
        {"mode": "420"},  # a number as text
        {"type": "fifo"},  # a type no tree holds
        {"name": None},  # neither name nor name_b64
        {"content": ["not hex"]},
        {"name": None, "name_b64": "***"},  # not base64
        {"content": ["ab" * 5]},  # an id of 5 bytes
        {"content": ["ab" * 32, "ab" * 33]},  # one of 33
        {"type": "dir", "subtree": "ab" * 31},
        {"type": "symlink", "target_b64": "***"},
    ],
)
def test_malformed_nodes_are_reported_as_a_corrupt_tree(change: dict[str, object]) -> None:
    node = {k: v for k, v in {**GOOD_FILE, **change}.items() if v is not None or k == "digest"}
    with pytest.raises(CorruptObject, match="^t: tree does not parse"):
        decode_tree(json.dumps({"nodes": [node]}).encode(), "t")


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"nodes": {}}', b'{"nodes": [1]}'])
def test_malformed_tree_documents_are_reported_as_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptObject, match="^t: tree does not parse"):
        decode_tree(data, "t")
