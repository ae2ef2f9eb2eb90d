"""A backup spread over several processes or machines, committed as one snapshot.

``plan``: the source is walked once and its regular files cut into N shards of about equal
bytes, in path order. Files the parent snapshot holds as they are are left out, so the shards
share what changed, not what is there (the commit keeps the parent's nodes for them). A file
larger than the repository's region (bcdr/repository/chunker.py) is cut at region
boundaries, so its parts may go to different shards and still give the very chunks one
process would. The *manifest* (every shard's parts) is stored in the repository.

``run`` (one shard, anywhere the source and the repository are reachable): reads its parts
(no walk, no stat: the plan's sizes say which files are whole and small), stores their chunks
like a backup, and stores a *receipt*: per part, the file's size, mtime, ctime and inode as
read, its chunk ids, and its fingerprint or region fingerprints.

``commit``: a backup of the same paths whose walk takes each file's chunks from the receipts
when the file is still the version a shard read (bcdr/archive/backup.py ``prepared``), so the
snapshot is built by the same code as an unsharded backup's, from the same metadata: for any
number of shards the tree is the one an unsharded backup makes. A file that changed since its
shard read it, or that no shard read, is read by the commit itself.

Objects: ``shards/<run>/manifest`` and ``shards/<run>/receipt-<index>``, sealed with the
repository's key (``aad=b"shard"``), zstd-compressed msgpack.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterator

import msgspec
import zstandard

from bcdr.archive.layout import walk_roots
from bcdr.archive.patterns import PathMatcher
from bcdr.archive.statahead import Stat, StatAhead
from bcdr.errors import CorruptObject, ObjectNotFound
from bcdr.repository.hashing import object_name, region_digest
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, Node, decode_tree
from bcdr.storage.base import ObjectInfo

PREFIX = "shards/"
AAD = b"shard"


# The per-file records are left out of the garbage collector (``gc=False``: they hold bytes,
# ints and lists of bytes, never a cycle): a run of a million files made every collection in
# the plan, the shards and the commit walk each of them.
class Part(msgspec.Struct, array_like=True, frozen=True, gc=False):
    path: bytes
    start: int
    end: int
    size: int = -1  # the file's size when planned (-1: a manifest of an older bcdr)


class Manifest(msgspec.Struct, kw_only=True, frozen=True):
    run: str  # stored: the nonce; once stored or read: the run's id (save/load_manifest)
    created: str
    paths: list[str]
    excludes: list[str] = []
    job: str | None = None
    parent: str | None = None  # the snapshot every shard and the commit compare against
    region: int = 0
    # Each shard's parts (a list[Part]), kept encoded: a shard decodes its own (:meth:`parts`),
    # not the whole run's (a run of ten million files is a gigabyte of parts decoded).
    shards: list[msgspec.Raw] = []
    shard_bytes: list[int] = []  # each shard's bytes to read (empty: a manifest before them)
    files: int = 0
    bytes: int = 0
    tags: list[str] = []
    force_read: bool = False  # every file read, none taken from the parent as unchanged
    one_file_system: bool = False  # folders on other filesystems kept empty (``-x``)
    unchanged: int = 0  # files the parent holds as they were when planned: in no shard
    unchanged_bytes: int = 0

    @property
    def count(self) -> int:
        return len(self.shards)

    def parts(self, index: int) -> list[Part]:
        """Shard ``index``'s parts."""
        try:
            return msgspec.msgpack.decode(self.shards[index], type=list[Part])
        except msgspec.DecodeError as exc:
            raise CorruptObject(
                f"run {self.run}: shard {index}'s parts do not decode ({exc})"
            ) from None

    def sizes(self) -> list[int]:
        """Each shard's bytes to read."""
        if len(self.shard_bytes) == self.count:
            return list(self.shard_bytes)
        return [sum(p.end - p.start for p in self.parts(i)) for i in range(self.count)]


def encode_shards(shards: list[list[Part]]) -> tuple[list[msgspec.Raw], list[int]]:
    """The ``shards`` and ``shard_bytes`` of a manifest of these shards."""
    encoded = [msgspec.Raw(msgspec.msgpack.encode(parts)) for parts in shards]
    return encoded, [sum(p.end - p.start for p in parts) for parts in shards]


class PartReceipt(msgspec.Struct, array_like=True, frozen=True, gc=False):
    path: bytes
    start: int
    end: int
    meta: tuple[int, int, int, int]  # size, mtime_ns, ctime_ns, inode when read
    content: list[bytes]
    digest: str | None = None  # a whole file's fingerprint
    regions: list[bytes] = []  # or, cut in regions, the digests of those it read


class Receipt(msgspec.Struct, kw_only=True, frozen=True):
    run: str
    index: int
    host: str
    parts: list[PartReceipt] = []
    skipped: int = 0  # parts of files unchanged since the parent: nothing to read
    failed: list[tuple[str, str]] = []  # path, why (the commit reads those itself)
    bytes_read: int = 0
    bytes_added: int = 0
    seconds: float = 0.0
    slurm_job: str | None = None  # run as a Slurm array task: its id (``ARRAY_TASK``)


def new_run_nonce() -> str:
    """The first half of a run's id (the second is its manifest's hash)."""
    return secrets.token_hex(8)


# -- plan ---------------------------------------------------------------------------------------


def walk_files(
    paths: list[bytes],
    excludes: PathMatcher,
    skip_folder: tuple[int, int] | None,
    *,
    one_file_system: bool = False,
) -> Iterator[tuple[bytes, os.stat_result]]:
    """The regular files under ``paths`` as a backup walks them (in its order, excludes
    applied, links not followed, the repository's own folder left out, a path inside another
    given path walked once), each hardlinked file once, by the name the backup meets first.
    ``one_file_system``: nothing under a folder on another filesystem than the paths given
    (the backup keeps such a mount point as an empty folder). A folder's entries are stat'ed
    ahead where its filesystem is slow to answer (bcdr/archive/statahead.py)."""
    seen: set[tuple[int, int]] = set()
    devices: set[int] = set()
    for path in paths if one_file_system else ():
        with contextlib.suppress(OSError):  # the commit's walk says why
            devices.add(os.lstat(path).st_dev)
    stats = StatAhead()
    roots = walk_roots(paths)  # in the backup's order: each hardlinked file by its first name
    # depth first, each folder's entries in name order: one iterator per folder being walked
    top = stats.lstats(roots, False)
    levels: list[Iterator[tuple[bytes, Stat]]] = [zip(roots, top, strict=True)]
    try:
        while levels:
            try:
                path, st = next(levels[-1])
            except StopIteration:
                levels.pop()
                continue
            if isinstance(st, OSError):
                continue  # the commit's walk says why
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                yield path, st
            elif (
                stat.S_ISDIR(st.st_mode)
                and (st.st_dev, st.st_ino) != skip_folder
                and not (devices and st.st_dev not in devices)
            ):
                try:
                    names = sorted([e.name for e in os.scandir(path)])
                except OSError:
                    continue
                prefix = path if path.endswith(b"/") else path + b"/"
                if excludes:
                    fulls = [full for n in names if not excludes.matches(full := prefix + n)]
                else:
                    fulls = [prefix + n for n in names]
                ahead = stats.slow(path, st.st_dev)
                levels.append(zip(fulls, stats.lstats(fulls, ahead), strict=True))
    finally:
        stats.close()


def cut(files: list[tuple[bytes, int]], n: int, region: int) -> list[list[Part]]:
    """Files (path, size) in order, cut into ``n`` shards of about equal bytes; a file larger
    than ``region`` (when not 0) in parts of whole regions, which may go to different
    shards. Deterministic: the same files give the same shards."""
    parts: list[Part] = []
    for path, size in files:
        if region and size > region:
            parts += [Part(path, a, min(a + region, size), size) for a in range(0, size, region)]
        else:
            parts.append(Part(path, 0, size, size))
    total = sum(p.end - p.start for p in parts) or 1
    shards: list[list[Part]] = [[] for _ in range(n)]
    done = 0
    for p in parts:
        # the shard whose share of the bytes this part's middle falls in
        middle = done + (p.end - p.start) / 2
        shards[min(n - 1, int(middle * n / total))].append(p)
        done += p.end - p.start
    return shards


# -- storage ----------------------------------------------------------------------------------


def _key(run: str, name: str) -> str:
    return f"{PREFIX}{run}/{name}"


def _seal(repo: Repository, obj: object) -> bytes:
    return repo.cipher.seal(zstandard.compress(msgspec.msgpack.encode(obj), 3), AAD)


def _open(repo: Repository, data: bytes, what: str, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        raw = zstandard.decompress(repo.cipher.open(data, AAD, what), max_output_size=1 << 34)
        return msgspec.msgpack.decode(raw, type=kind)
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise CorruptObject(f"{what} does not decode ({exc})") from None


def save_manifest(repo: Repository, manifest: Manifest) -> Manifest:
    """Store a new run's manifest; returned with its run id: the nonce it was made with and
    the hash of its stored bytes. A shard given that id reads only that manifest: whoever
    can write to the repository cannot swap in one naming other files for the nodes to
    read."""
    sealed = _seal(repo, manifest)
    run = manifest.run + object_name(sealed)[:16]
    repo.storage.put(_key(run, "manifest"), sealed)
    return msgspec.structs.replace(manifest, run=run)


def load_manifest(repo: Repository, run: str) -> Manifest:
    try:
        data = repo.storage.get(_key(run, "manifest"))
    except ObjectNotFound:
        raise ObjectNotFound(
            f"no sharded run {run!r} in this repository",
            where=repo.storage.url,
            hint="`bcdr shard plan` prints the id of the run it made",
        ) from None
    found = _open(repo, data, f"the manifest of run {run}", Manifest)
    assert isinstance(found, Manifest)
    if len(run) != 32 or object_name(data)[:16] != run[16:] or found.run != run[:16]:
        raise CorruptObject(
            f"the manifest of run {run} is not the one planned under that id (replaced?)",
            where=repo.storage.url,
            hint="plan the run again; nothing was read",
        )
    return msgspec.structs.replace(found, run=run)


def save_receipt(repo: Repository, receipt: Receipt) -> bool:
    """Store a shard's receipt; False when one is stored already (the shard ran before)."""
    return repo.storage.put(_key(receipt.run, f"receipt-{receipt.index}"), _seal(repo, receipt))


def load_receipt(repo: Repository, manifest: Manifest, index: int) -> Receipt | None:
    """Shard ``index``'s receipt, or None when it has none yet."""
    key = _key(manifest.run, f"receipt-{index}")
    try:
        data = repo.storage.get(key)
    except ObjectNotFound:
        return None
    found = _open(repo, data, f"receipt {key}", Receipt)
    assert isinstance(found, Receipt)
    return found


def load_receipts(repo: Repository, manifest: Manifest) -> dict[int, Receipt]:
    """The receipts stored for the run, by shard index."""
    out: dict[int, Receipt] = {}
    for info in repo.storage.list(_key(manifest.run, "receipt-")):
        index = info.key.rsplit("-", 1)[-1]
        if not index.isdigit() or int(index) >= manifest.count:
            continue
        found = _open(repo, repo.storage.get(info.key), f"receipt {info.key}", Receipt)
        assert isinstance(found, Receipt)
        out[int(index)] = found
    return out


def list_runs(repo: Repository) -> dict[str, list[ObjectInfo]]:
    """Every run stored in the repository: its objects (manifest, receipts)."""
    runs: dict[str, list[ObjectInfo]] = {}
    for info in repo.storage.list(PREFIX):
        run, _, name = info.key.removeprefix(PREFIX).partition("/")
        if name:
            runs.setdefault(run, []).append(info)
    return runs


# -- what the commit takes from the receipts --------------------------------------------------


class PreparedFiles:
    """``Archiver(prepared=...)`` from a run's receipts: a file's chunks and fingerprint when
    its parts cover it whole and each was read from the version the commit sees."""

    def __init__(self, receipts: list[Receipt], region: int):
        self.region = region
        self._receipts = receipts
        # the common case, looked up at once: a whole file read in one part, its fingerprint
        self._whole: dict[bytes, PartReceipt] = {}
        self._parts: dict[bytes, list[PartReceipt]] = {}  # every other file's parts
        self._by_inode: dict[tuple[int, int, int, int], bytes] | None = None  # made if needed
        whole, pieces = self._whole, self._parts
        for receipt in receipts:
            for part in receipt.parts:
                path = part.path
                more = pieces.get(path)
                if more is not None:
                    more.append(part)
                elif path in whole:  # read in several parts after all
                    pieces[path] = [whole.pop(path), part]
                elif not part.start and part.end == part.meta[0] and part.digest is not None:
                    whole[path] = part
                else:
                    pieces[path] = [part]
        self.used = 0

    def __call__(self, path: bytes, st: os.stat_result) -> tuple[list[bytes], str] | None:
        """The chunk ids (a list of the caller's own) and fingerprint of ``path`` as it is
        now, or None when no shard read this version of it whole."""
        meta = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        whole = self._whole.get(path)
        if whole is not None and whole.meta == meta and whole.digest is not None:
            self.used += 1
            return list(whole.content), whole.digest
        parts = self._parts.get(path) or ([whole] if whole is not None else None)
        if parts is None and st.st_nlink > 1:  # a hardlink a shard read by another name
            other = self._inodes().get(meta, b"")
            parts = self._parts.get(other) or (
                [self._whole[other]] if other in self._whole else None
            )
        if not parts:
            return None
        return self._pieced(parts, meta, st.st_size)

    def _inodes(self) -> dict[tuple[int, int, int, int], bytes]:
        """The path each version of a file (size, times, inode) was read by: made at the
        first hardlink not read by its own name."""
        if self._by_inode is None:
            self._by_inode = {p.meta: p.path for r in self._receipts for p in r.parts}
        return self._by_inode

    def _pieced(
        self, parts: list[PartReceipt], meta: tuple[int, int, int, int], size: int
    ) -> tuple[list[bytes], str] | None:
        """A file in several parts (or one part of several regions): all of it, each part
        read from the version the commit sees."""
        parts = sorted(parts, key=lambda p: p.start)
        pos = 0
        for p in parts:
            if p.start != pos or tuple(p.meta) != meta:
                return None  # not all of it, or another version of it: read again
            pos = p.end
        if pos != size:
            return None
        content = [c for p in parts for c in p.content]
        if len(parts) == 1 and parts[0].digest is not None:
            digest = parts[0].digest
        else:  # a file of several regions, in one part or several
            regions = [r for p in parts for r in p.regions]
            if len(regions) < 2 or not self.region:
                return None
            digest = region_digest(self.region, regions)
        self.used += 1
        return content, digest


# -- the parent snapshot, by path ---------------------------------------------------------------


class ParentLookup:
    """Nodes of a snapshot found by their absolute path (folders read as needed, kept)."""

    def __init__(self, repo: Repository, tree: bytes | None):
        self.repo = repo
        self._dirs: dict[bytes, dict[bytes, Node]] = {}
        self._root = tree

    def _children(self, folder: bytes) -> dict[bytes, Node]:
        found = self._dirs.get(folder)
        if found is not None:
            return found
        if folder == b"/":
            tree = self._root
        else:
            up, name = os.path.split(folder.rstrip(b"/"))
            node = self._children(up or b"/").get(name)
            tree = node.subtree if node is not None and node.type == DIR else None
        nodes: dict[bytes, Node] = {}
        if tree is not None:
            try:
                nodes = {n.name: n for n in decode_tree(self.repo.load_blob(tree), "tree")}
            except CorruptObject:
                nodes = {}  # read in full then, as a backup does
        self._dirs[folder] = nodes
        return nodes

    def node(self, path: bytes) -> Node | None:
        folder, name = os.path.split(path)
        return self._children(folder or b"/").get(name)
