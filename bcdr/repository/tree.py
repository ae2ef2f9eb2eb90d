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
from typing import Any

from bcdr.errors import CorruptObject

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
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        # One constructor call per node, positional: decoding the parent's trees is most of
        # the no-change path (see docs/performance.md).
        t = d["type"]
        name = _get_bytes(d, "name")
        meta = (int(d["mode"]), int(d["uid"]), int(d["gid"]), int(d["mtime_ns"]))
        if t == FILE:
            return cls(
                name,
                t,
                *meta,
                int(d["ctime_ns"]),
                int(d["inode"]),
                int(d["dev"]),
                int(d["nlink"]),
                int(d["size"]),
                [bytes.fromhex(c) for c in d["content"]],
                d["digest"],
            )
        if t == DIR:
            subtree = d["subtree"]
            return cls(name, t, *meta, subtree=bytes.fromhex(subtree) if subtree else None)
        if t == SYMLINK:
            return cls(name, t, *meta, target=_get_bytes(d, "target"))
        raise ValueError(f"unknown node type {t!r}")


def _put_bytes(d: dict[str, Any], key: str, value: bytes) -> None:
    try:
        d[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        d[key + "_b64"] = base64.b64encode(value).decode()


def _get_bytes(d: dict[str, Any], key: str) -> bytes:
    if key in d:
        return str(d[key]).encode("utf-8")
    return base64.b64decode(d[key + "_b64"])


def encode_tree(nodes: list[Node]) -> bytes:
    nodes = sorted(nodes, key=lambda n: n.name)
    doc = {"nodes": [n.to_dict() for n in nodes]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_tree(data: bytes, what: str) -> list[Node]:
    try:
        doc = json.loads(data)
        return [Node.from_dict(n) for n in doc["nodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObject(f"{what}: tree does not parse ({exc})") from None
