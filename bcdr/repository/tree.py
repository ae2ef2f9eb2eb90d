"""Trees: one blob per directory, listing its entries sorted by name.

A tree blob is canonical JSON ``{"nodes": [...]}``; identical directories give identical bytes
and so the same content id, which is why an unchanged directory costs nothing in the next
snapshot. Names and link targets are bytes on POSIX: stored as ``name`` when they are valid
UTF-8, otherwise as ``name_b64``.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from itertools import pairwise
from json.encoder import encode_basestring_ascii as _json_str  # what json.dumps uses
from typing import Annotated, Any

import msgspec

from bcdr.errors import CorruptObject
from bcdr.repository.hashing import ID_LEN

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"


@dataclass(slots=True)
class Node:
    name: bytes
    type: str
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    inode: int = 0
    dev: int = 0
    nlink: int = 1
    size: int = 0
    content: list[bytes] = field(default_factory=list)
    digest: str | None = None
    subtree: bytes | None = None
    target: bytes | None = None
    # extended attributes (ACLs among them: system.posix_acl_*), sorted by name; stored only
    # when there are some, so trees without them are byte for byte what they were
    xattrs: tuple[tuple[bytes, bytes], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
        }
        _put_bytes(d, "name", self.name)
        if self.type == FILE:
            d.update(
                ctime_ns=self.ctime_ns,
                inode=self.inode,
                dev=self.dev,
                nlink=self.nlink,
                size=self.size,
                content=[c.hex() for c in self.content],
                digest=self.digest,
            )
        elif self.type == DIR:
            d["subtree"] = self.subtree.hex() if self.subtree else None
        elif self.type == SYMLINK:
            _put_bytes(d, "target", self.target or b"")
        if self.xattrs:
            d["xattrs"] = _xattr_wire(self.xattrs)
        return d


def _xattr_wire(xattrs: tuple[tuple[bytes, bytes], ...]) -> list[list[str]]:
    """``[[name, value], ...]``, both base64 (a name is bytes, a value anything)."""
    return [[base64.b64encode(n).decode(), base64.b64encode(v).decode()] for n, v in xattrs]


def _bytes_field(key: str, value: bytes) -> tuple[str, str]:
    """``(key, text)`` for UTF-8, else ``(key_b64, base64)``."""
    try:
        return key, value.decode("utf-8")
    except UnicodeDecodeError:
        return key + "_b64", base64.b64encode(value).decode()


def _put_bytes(d: dict[str, Any], key: str, value: bytes) -> None:
    field_name, text = _bytes_field(key, value)
    d[field_name] = text


def encode_tree(nodes: list[Node]) -> bytes:
    """The canonical bytes of a tree: ``json.dumps({"nodes": [n.to_dict() ...]},
    sort_keys=True, separators=(",", ":"))``, written out node by node with the keys in that
    order (3x faster: a backup encodes every new folder's tree in its critical thread).
    tests/test_tree.py holds the two equal."""
    nodes = sorted(nodes, key=lambda n: n.name)
    return ('{"nodes":[' + ",".join(map(_node_json, nodes)) + "]}").encode()


def _node_json(n: Node) -> str:
    if n.xattrs:  # rare: the generic form (its keys sorted as the fast forms sort theirs)
        return json.dumps(n.to_dict(), sort_keys=True, separators=(",", ":"))
    meta = f'"mode":{n.mode},"mtime_ns":{n.mtime_ns},{_json_bytes("name", n.name)}'
    if n.type == FILE:
        content = ",".join([f'"{c.hex()}"' for c in n.content])
        digest = "null" if n.digest is None else _json_str(n.digest)
        return (
            f'{{"content":[{content}],"ctime_ns":{n.ctime_ns},"dev":{n.dev},'
            f'"digest":{digest},"gid":{n.gid},"inode":{n.inode},{meta},'
            f'"nlink":{n.nlink},"size":{n.size},"type":"file","uid":{n.uid}}}'
        )
    if n.type == DIR:
        subtree = f'"{n.subtree.hex()}"' if n.subtree else "null"
        return f'{{"gid":{n.gid},{meta},"subtree":{subtree},"type":"dir","uid":{n.uid}}}'
    if n.type == SYMLINK:
        target = _json_bytes("target", n.target or b"")
        return f'{{"gid":{n.gid},{meta},{target},"type":"symlink","uid":{n.uid}}}'
    return json.dumps(n.to_dict(), sort_keys=True, separators=(",", ":"))


def _json_bytes(key: str, value: bytes) -> str:
    field_name, text = _bytes_field(key, value)
    return f'"{field_name}":{_json_str(text)}'


class _Wire(msgspec.Struct, tag_field="type", kw_only=True, gc=False):
    """A node as a tree blob stores it; msgspec checks every field's type while parsing (in
    C, with no dict per node: 2x faster than json.loads and a conversion, and decoding the
    parent's trees is most of a no-change backup; see docs/performance.md)."""

    name: str | None = None
    name_b64: str | None = None
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    xattrs: list[tuple[str, str]] | None = None


#: A blob id as a tree stores it: 64 hex digits (the length checked while parsing, in C;
#: the digits by fromhex). A shorter id once reached check's index search, which reads many
#: ids as one array of 32-byte ids, and failed there with a traceback.
HexId = Annotated[str, msgspec.Meta(min_length=2 * ID_LEN, max_length=2 * ID_LEN)]


class _FileWire(_Wire, tag=FILE, kw_only=True, gc=False):
    ctime_ns: int
    inode: int
    dev: int
    nlink: int
    size: int
    content: list[HexId]
    digest: str | None


class _DirWire(_Wire, tag=DIR, kw_only=True, gc=False):
    subtree: HexId | None


class _SymlinkWire(_Wire, tag=SYMLINK, kw_only=True, gc=False):
    target: str | None = None
    target_b64: str | None = None


class _TreeWire(msgspec.Struct, gc=False):
    nodes: list[_FileWire | _DirWire | _SymlinkWire]


_decoder = msgspec.json.Decoder(_TreeWire)


class _EntryShape(msgspec.Struct, gc=False):
    type: str
    subtree: HexId | None = None


class _TreeShape(msgspec.Struct, gc=False):
    nodes: list[_EntryShape]


_shape_decoder = msgspec.json.Decoder(_TreeShape)


def tree_shape(data: bytes, what: str) -> tuple[int, list[bytes]]:
    """A tree's entry count and subtree ids, read in C without making its nodes (the
    expansion bound of bcdr/repository/bounds.py reads every tree of a snapshot before a
    restore does). CorruptObject when it does not parse."""
    try:
        nodes = _shape_decoder.decode(data).nodes
        subtrees = [bytes.fromhex(n.subtree) for n in nodes if n.type == DIR and n.subtree]
    except ValueError as exc:  # msgspec's errors are ValueErrors, as fromhex's
        raise CorruptObject(f"{what}: tree does not parse ({exc})") from None
    return len(nodes), subtrees


def _text_or_b64(text: str | None, b64: str | None, what: str) -> bytes:
    if text is not None:
        return text.encode("utf-8")
    if b64 is not None:
        return base64.b64decode(b64, validate=True)
    raise ValueError(f"a node without a {what}")


#: Names no directory entry has: a tree naming a node so would have restore write elsewhere.
_NOT_NAMES = frozenset((b"", b".", b".."))


def _node(w: _FileWire | _DirWire | _SymlinkWire) -> Node:
    node = _plain_node(w)
    if w.xattrs:
        node.xattrs = tuple(
            (base64.b64decode(n, validate=True), base64.b64decode(v, validate=True))
            for n, v in w.xattrs
        )
    return node


def _plain_node(w: _FileWire | _DirWire | _SymlinkWire) -> Node:
    # One constructor call per node, positional: see _Wire.
    name = _text_or_b64(w.name, w.name_b64, "name")
    if name in _NOT_NAMES or b"/" in name or b"\0" in name:
        raise ValueError(f"a node named {name!r} (not a name a folder can hold)")
    if type(w) is _FileWire:
        return Node(
            name,
            FILE,
            w.mode,
            w.uid,
            w.gid,
            w.mtime_ns,
            w.ctime_ns,
            w.inode,
            w.dev,
            w.nlink,
            w.size,
            [bytes.fromhex(c) for c in w.content],
            w.digest,
        )
    if type(w) is _DirWire:
        subtree = bytes.fromhex(w.subtree) if w.subtree else None
        return Node(name, DIR, w.mode, w.uid, w.gid, w.mtime_ns, subtree=subtree)
    assert type(w) is _SymlinkWire
    target = _text_or_b64(w.target, w.target_b64, "target")
    return Node(name, SYMLINK, w.mode, w.uid, w.gid, w.mtime_ns, target=target)


def decode_tree(data: bytes, what: str) -> list[Node]:
    """The nodes of a tree blob, sorted by name. A tree that does not parse, names a node
    with something other than one path component (``..``, ``a/b``), or lists a name twice
    is corrupt: restore would otherwise write outside its target, or through a symlink it
    had just made, when a repository someone could write to was tampered with."""
    try:
        nodes = [_node(w) for w in _decoder.decode(data).nodes]
        for a, b in pairwise(nodes):
            if not a.name < b.name:
                raise ValueError(f"{b.name!r} after {a.name!r} (names sorted, once each)")
    except ValueError as exc:  # msgspec's errors are ValueErrors; so are fromhex's
        raise CorruptObject(f"{what}: tree does not parse ({exc})") from None
    return nodes
