"""The Repository: config, key, index and the blob/snapshot operations over a Storage."""

from __future__ import annotations

import itertools
import random
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

from bcdr import __version__
from bcdr.clock import Clock, SystemClock
from bcdr.errors import (
    CorruptObject,
    MissingPermission,
    NotARepository,
    ObjectNotFound,
    PasswordRequired,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    StoragePermission,
    UsageError,
    WrongPassword,
)
from bcdr.memory import give_back
from bcdr.parallel import ordered_map
from bcdr.repository.chunker import Chunker, ChunkerParams
from bcdr.repository.compression import Compressor, Layout
from bcdr.repository.config import CONFIG_KEY, DEFAULT_PACK_SIZE, RepoConfig
from bcdr.repository.crypto import MasterKey, cipher_for, unwrap_key, wrap_key
from bcdr.repository.hashing import content_id_func, object_name
from bcdr.repository.index import BlobLocation, encode_index, without_packs
from bcdr.repository.locks import RepoLock
from bcdr.repository.pack import (
    ENTRY,
    TRAILER,
    PackEntry,
    header_span,
    pack_key,
    read_header,
)
from bcdr.repository.snapshot import SNAPSHOT_AAD, Snapshot
from bcdr.repository.writer import PACKS_PER_INDEX, BlobWriter
from bcdr.storage.base import LocalFolder, Storage

if TYPE_CHECKING:
    import numpy as np

PasswordProvider = Callable[[], bytes | None]


class SnapshotFields(TypedDict):
    time: str
    program_version: str


#: Loads of the index that may find a file gone (a prune replaced it meanwhile) before one
#: such miss is an error. Three were too few beside a prune running round after round.
INDEX_LOAD_ATTEMPTS = 6


def _no_password() -> bytes | None:
    return None


class Repository:
    """An opened repository. Not safe for concurrent writers inside one process."""

    def __init__(self, storage: Storage, config: RepoConfig, key: MasterKey, clock: Clock):
        self.storage = storage
        self.config = config
        self.clock = clock
        self._key = key
        self.key_file = ""  # the key file the password opened (set by open)
        self.cipher = cipher_for(key)
        self.content_id = content_id_func(config.content_id, key.id_key)
        self.compressor = Compressor(config.compression_level)
        self.chunker = Chunker(config.chunker)
        from bcdr.repository.masterindex import MasterIndex  # numpy: after scrypt's peak

        self.index = MasterIndex()
        self.index_loaded = False
        self.marked: set[str] = set()  # packs a pending prune marked (see repository/marks.py)
        self.missing_packs: set[str] = set()  # packs the index names that storage lacks
        self._avoid: np.ndarray | None = None  # sorted ids (S32) whose only copies are marked
        self.damaged_snapshots: list[str] = []
        self._stored_at: dict[str, datetime | None] = {}  # snapshot -> when storage wrote it
        self._writer: BlobWriter | None = None
        self._reused: list[bytes] = []  # ids the snapshot being written refers to, not stored
        self._own_before: set[str] = set()  # packs written before the snapshot being written
        self._own_gone: set[str] = set()  # packs this run wrote that were swept under it
        self._distrusted: list[bytes] = []  # blobs found damaged (see distrust)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        storage: Storage,
        *,
        password: bytes | None,
        chunker: ChunkerParams | None = None,
        pack_size: int | None = None,
        clock: Clock | None = None,
    ) -> Repository:
        """Create a repository; refuses an existing repository or a non-empty location."""
        clock = clock or SystemClock()
        if storage.exists(CONFIG_KEY):
            raise RepositoryExists("a repository already exists here", where=storage.url)
        found = [o.key for o in itertools.islice(storage.list(""), 100)]
        if found and all(k.startswith("keys/") for k in found):
            # keys are written before the config, whose presence marks a whole repository
            raise UsageError(
                "the location holds only the key file(s) of an init that did not finish "
                f"({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})",
                where=storage.url,
                hint="nothing was backed up with them: delete the keys/ folder and run init again",
            )
        if found:
            raise UsageError(
                "the location is not empty and holds no bcdr repository",
                where=storage.url,
                hint="choose an empty or new folder/container",
            )
        params = chunker or ChunkerParams(seed=secrets.randbelow(2**31))
        problem = params.problem()
        if problem is not None:  # before anything is written: FastCDC would refuse them later
            raise UsageError(
                f"chunk sizes (MIN,AVG,MAX): {problem}",
                hint="e.g. 524288,524288,8388608 (the default); MIN 64 B-1 MiB, "
                "AVG 256 B-4 MiB, MAX 1 KiB-16 MiB",
            )
        config = RepoConfig(
            id=secrets.token_hex(16),
            created=clock.now().isoformat(),
            chunker=params,
            encryption="aes-256-gcm" if password else "none",
            pack_size=pack_size or DEFAULT_PACK_SIZE,
        )
        key = MasterKey.generate(encrypted=password is not None)
        wrapped = wrap_key(key, password)
        key_name = f"keys/{object_name(wrapped)}"
        storage.put(key_name, wrapped)
        # last: its presence marks a whole repository; put never overwrites, so of two inits
        # at once one makes the repository and the other takes its key back
        if not storage.put(CONFIG_KEY, config.to_bytes()):
            storage.delete(key_name)
            raise RepositoryExists(
                "another init created a repository here at the same time", where=storage.url
            )
        return cls(storage, config, key, clock)

    @classmethod
    def open(
        cls,
        storage: Storage,
        *,
        password: PasswordProvider = _no_password,
        clock: Clock | None = None,
    ) -> Repository:
        """Open an existing repository.

        Raises RepositoryNotFound, NotARepository, UnsupportedFormat, PasswordRequired,
        WrongPassword.
        """
        try:
            raw = storage.get(CONFIG_KEY)
        except ObjectNotFound:
            if next(iter(storage.list("")), None) is None:
                raise RepositoryNotFound(
                    "no repository here",
                    where=storage.url,
                    hint=f"create one with `bcdr init --repo {storage.url}`",
                ) from None
            raise NotARepository(
                "this is not a bcdr repository (no config object)",
                where=storage.url,
                hint="check the --repo URL",
            ) from None
        config = RepoConfig.from_bytes(raw, f"{storage.url}/config")
        key_files = [info.key for info in storage.list("keys/")]
        if not key_files:
            raise NotARepository("the repository has no key file", where=storage.url)
        pw = password() if config.encrypted else None
        if config.encrypted and pw is None:
            raise PasswordRequired(
                "the repository is encrypted and no password was given",
                where=storage.url,
                hint="set BCDR_PASSWORD, or BCDR_PASSWORD_FILE to a file holding it",
            )
        last_error: WrongPassword | None = None
        for key_file in sorted(key_files):
            try:
                key = unwrap_key(storage.get(key_file), pw, f"{storage.url}/{key_file}")
                repo = cls(storage, config, key, clock or SystemClock())
                repo.key_file = key_file  # the one this password opened (`bcdr key`)
                return repo
            except WrongPassword as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def add_key(self, password: bytes, about: dict[str, str]) -> str:
        """Store the master key wrapped with another password (``bcdr key add``): a key
        file of its own, so either password opens the repository; no data changes."""
        wrapped = wrap_key(self._key, password, about)
        name = f"keys/{object_name(wrapped)}"
        self.storage.put(name, wrapped)
        return name

    def require_delete(self, command: str) -> None:
        """Stop ``command`` before it changes anything when this credential may not delete
        (an append-only SAS or role: docs/immutability.md). Asks by deleting an object that
        does not exist: the storage checks the permission first (Azure: 403)."""
        try:
            self.storage.delete(f"locks/probe-{secrets.token_hex(8)}")
        except StoragePermission as exc:
            raise MissingPermission(
                f"{command} deletes objects, and this credential may not delete in this "
                f"repository ({exc.message}); nothing was changed",
                where=self.storage.url,
                hint=f"run {command} with a credential that may delete: a SAS with the d "
                "permission, or a role with the blobs/delete action (docs/immutability.md); "
                "backup, check, restore and copy work without it",
            ) from None

    def lock(self, kind: str, *, wait: float = 0) -> RepoLock:
        """Take a repository lock of ``kind`` (see :mod:`bcdr.repository.locks`)."""
        return RepoLock(
            self.storage, self.clock, kind=kind, url=self.storage.url, wait=wait
        ).acquire()

    # -- index -------------------------------------------------------------------------------

    def index_files(self) -> tuple[list[str], int]:
        """The index files' names, sorted, and a bound on the entries they hold (their total
        size over the entry size: what the master index allocates for them)."""
        infos = list(self.storage.list("index/"))
        names = sorted(info.key.removeprefix("index/") for info in infos)
        return names, sum(info.size for info in infos) // ENTRY.size

    def load_index(self, only_type: int | None = None, *, verify_packs: bool = False) -> None:
        """Load every index file (again, when a prune replaced one while we listed);
        ``only_type``: just the blobs of that type (prune reads trees only). With
        ``verify_packs`` the packs in storage are listed too, and packs the index names that
        are gone count as marked ones do (``missing_packs``): loaded last, and their blobs
        are not built on.

        See :meth:`_load_index_once`."""
        for attempt in range(INDEX_LOAD_ATTEMPTS):
            try:
                self._load_index_once(only_type, verify_packs)
                # now that the decoded files, their reader and the sort's temporaries are gone
                give_back()
                return
            except ObjectNotFound:
                if attempt == INDEX_LOAD_ATTEMPTS - 1:
                    raise
                self._forget_index()
                # A prune is replacing index files: let its round end (backing off, at
                # random, so that two loaders do not retry in step; 1.6 s at most in all).
                time.sleep(random.uniform(0.5, 1.0) * 0.05 * 2**attempt)

    def _forget_index(self) -> None:
        """Drop what a load put in memory, for a load that starts again."""
        from bcdr.repository.masterindex import MasterIndex

        self.index = MasterIndex()
        self._avoid = None
        self.index_loaded = False

    def _load_index_once(self, only_type: int | None, verify_packs: bool) -> None:
        """Load every index file. Packs a pending prune marked (and, with ``verify_packs``,
        packs that are gone) are loaded last, so a blob that also lives in another pack is
        found there; blobs whose only copies are in them are remembered so that
        :meth:`has_blob` and :meth:`reusable` do not build on them."""
        from bcdr.repository.marks import marked_packs

        if self.index_loaded:  # loaded before (a sharded run's plan, then its commit): afresh,
            self._forget_index()  # not every entry twice, or a pack's old standing
        self.marked = marked_packs(self.storage, self.cipher)
        names, capacity = self.index_files()
        # Listed after the index files: a pack is written before the index naming it, so a
        # pack a listed index file names and this listing lacks is really gone.
        sizes = self.stored_packs() if verify_packs else None
        self.pack_sizes = sizes or {}
        stored = set(sizes) if sizes is not None else None
        self.missing_packs = set()
        if only_type is not None:
            capacity = 0  # a fraction of the entries: the columns grow as needed
        # Decoded here, in name order: decoding in a pool's threads would spread the arrays
        # over per-thread malloc arenas and cost RSS (see index_readers).
        fetched = ordered_map(self._read_index_bytes, names, self.index_readers())
        held_back: list[tuple[str, np.ndarray]] = []

        def usable(pack: str) -> bool:
            if stored is not None and pack not in stored:
                self.missing_packs.add(pack)
                self.index.demote(pack)
                return False
            if pack in self.marked:
                self.index.demote(pack)
                return False
            return True

        def unmarked() -> Iterator[list[tuple[str, np.ndarray]]]:
            for name, data in zip(names, fetched, strict=True):
                packs = self._decode_index(name, data)
                if only_type is not None:
                    packs = [(p, r[r["type"] == only_type]) for p, r in packs]
                held_back.extend(p for p in packs if not usable(p[0]))
                yield [p for p in packs if usable(p[0])]

        self.index.load(unmarked(), capacity)
        if held_back:
            self._avoid = self.index.missing_ids([r for _, r in held_back])
            self.index.load([held_back], sum(len(r) for _, r in held_back))
        self.index_loaded = True

    def _avoided(self, blob_id: bytes) -> bool:
        avoid = self._avoid
        if avoid is None or not len(avoid):
            return False
        i = int(avoid.searchsorted(blob_id))
        return i < len(avoid) and bytes(avoid[i]).ljust(32, b"\0") == blob_id

    def reusable(self, blob_ids: list[bytes]) -> bool:
        """May a new snapshot refer to these blobs without storing them again? False when
        one's only copy is in a pack a pending prune marked or that is gone (the backup then
        reads the file). Approved ids are remembered for the commit guard."""
        if self._avoid is not None and len(self._avoid):
            stored_again = self._writer.has if self._writer is not None else (lambda _b: False)
            if any(self._avoided(b) and not stored_again(b) for b in blob_ids):
                return False
        self._reused.extend(blob_ids)
        return True

    def distrust(self, blob_id: bytes) -> None:
        """A blob found damaged: never deduplicate against it (store it again)."""
        import numpy as np

        ids = np.frombuffer(blob_id, dtype="S32")
        self._avoid = ids if self._avoid is None else np.union1d(self._avoid, ids)
        self._distrusted.append(blob_id)

    def note_reused(self, blob_id: bytes) -> None:
        """A blob a new snapshot refers to was found stored (deduplicated): remembered for the
        commit guard (main thread)."""
        self._reused.append(blob_id)

    # -- the commit guard --------------------------------------------------------------------

    #: The end of a pack read first for its header (most headers fit; else a second read).
    TAIL_READ = 64 * 1024

    def pack_header(self, pack: str, size: int) -> list[PackEntry]:
        """A pack's blob list from its own header (two ranged reads at most); CorruptObject
        when it does not open."""
        what = f"pack {pack[:12]}"
        key = pack_key(pack)
        tail = self.storage.get(key, max(0, size - self.TAIL_READ))
        body_end = header_span(tail, size, what)
        if size - body_end > len(tail):
            tail = self.storage.get(key, body_end)
        header = tail[len(tail) - (size - body_end) : len(tail) - TRAILER.size]
        return read_header(header, self.cipher, body_end, what)

    def adopt_unindexed_packs(self) -> tuple[int, int]:
        """Index the packs in storage that no index file lists, from their own headers: a
        backup that failed or was killed uploaded them before it wrote its index, and what they
        hold is then not uploaded again (an index file per 64 packs, written before they are
        built on). Packs a prune marked are left to it. Call after ``load_index(verify_packs=
        True)``; returns (packs, bytes) adopted."""
        indexed = self.index.packs()
        orphans = sorted(p for p in self.pack_sizes if p not in indexed and p not in self.marked)
        if not orphans:
            return 0, 0

        def header(pack: str) -> list[PackEntry] | None:
            try:
                return self.pack_header(pack, self.pack_sizes[pack])
            except (CorruptObject, ObjectNotFound):  # damaged (check names it), or just swept
                return None

        found = [
            (pack, entries)
            for pack, entries in zip(
                orphans, ordered_map(header, orphans, self.storage.concurrency), strict=True
            )
            if entries
        ]
        for start in range(0, len(found), PACKS_PER_INDEX):
            name, data = encode_index(dict(found[start : start + PACKS_PER_INDEX]), self.cipher)
            self.storage.put(f"index/{name}", data)
        for pack, entries in found:
            self.index.add_pack(pack, entries)
        return len(found), sum(self.pack_sizes[p] for p, _ in found)

    def stored_packs(self) -> dict[str, int]:
        """Every pack in storage with its size (one listing of ``data/``)."""
        return {info.key.rsplit("/", 1)[-1]: info.size for info in self.storage.list("data/")}

    def begin_snapshot(self) -> None:
        """Start remembering the blobs a new snapshot reuses and the packs it writes (see
        :meth:`lost_references`)."""
        self._reused = []
        self._own_before = set(self._writer.packs) if self._writer is not None else set()

    def lost_references(self, session: str) -> tuple[list[str], int]:
        """The commit guard, run after the snapshot's blobs are flushed and before it is
        written: are the blobs it reuses, and the packs this run wrote, still safely stored?
        A blob is not when every copy is in a pack that is gone or in a prune mark that does
        not wait for ``session`` (or one seen at the start), or when it is not indexed at all.
        If any is lost, the avoided blobs are computed afresh (a new pass of the backup then
        stores exactly those again). Returns (the packs found gone or being swept, how many
        blobs are lost); (``[]``, 0) means the snapshot may be written."""
        import numpy as np

        from bcdr.repository.marks import list_marks
        from bcdr.repository.masterindex import contains, id_array

        reused = id_array(self._reused) if self._reused else np.empty(0, dtype="S32")
        unsafe = self.index.packs() - set(self.stored_packs())
        for mark in list_marks(self.storage, self.cipher):
            if mark.ready is not None and session not in mark.sessions:
                unsafe.update(mark.packs)  # a sweep of it will not wait for us
        avoid = self.index.only_in(unsafe | self.marked)
        indexed = self.index.holds(reused)
        lost = int((~indexed | contains(avoid, reused)).sum())
        own = (self._writer.packs if self._writer is not None else set()) - self._own_before
        lost += len(self.index.only_in(unsafe & own)) if unsafe & own else 0
        self._own_gone = (self._writer.packs & unsafe) if self._writer is not None else set()
        if not lost:
            return [], 0
        self._avoid = np.union1d(avoid, reused[~indexed])
        if self._distrusted:  # still damaged: a later pass must not build on them either
            self._avoid = np.union1d(self._avoid, id_array(self._distrusted))
        if self._writer is not None:
            self._writer.forget_pending()  # what it stored is in the index, or must be again
        return sorted(unsafe & self.index.packs()), lost

    def unlist_lost_own_packs(self) -> None:
        """After the commit guard passed: packs this run wrote in an earlier pass that were
        swept under it are taken out of the index files it wrote (their blobs are stored
        again), so the index names no pack that is gone."""
        writer = self._writer
        if writer is None or not self._own_gone:
            return
        files: dict[str, set[str]] = {}
        for pack in self._own_gone:
            files.setdefault(writer.index_of[pack], set()).add(pack)
        for name, gone in files.items():
            without_packs(self.storage, self.cipher, name, gone)
        self._own_gone = set()

    def _decode_index(self, name: str, data: bytes) -> list[tuple[str, np.ndarray]]:
        from bcdr.repository.masterindex import decode_index_records

        return decode_index_records(data, self.cipher, f"index {name[:12]}")

    def index_readers(self) -> int:
        """Threads that fetch index files while they are loaded: a remote storage's, to hide
        its latency; none for a repository in a folder (one on a shared filesystem too, where
        each file is a sequential read of a few MiB; not measured there). A thread that reads
        them keeps freed files of up to 12-24 MiB in its malloc arena (glibc trims no thread
        arena's top below twice its dynamic mmap threshold): 10 million chunks' index then held
        49.5-51 B per chunk one load in three, instead of 48.2, and reading in the loading
        thread was as fast on the local disk (4.2-4.4 s against 4.6-5.9, page cache warm or
        dropped)."""
        return 1 if self.local_folder is not None else self.storage.concurrency

    def _read_index_bytes(self, name: str) -> bytes:
        data = self.storage.get(f"index/{name}")
        if object_name(data) != name:
            raise CorruptObject(f"index {name[:12]}: content does not match its name")
        return data

    def read_index_records(self, name: str) -> list[tuple[str, np.ndarray]]:
        """An index file's packs, each with its entries as one record array."""
        return self._decode_index(name, self._read_index_bytes(name))

    # -- blobs -------------------------------------------------------------------------------

    def has_blob(self, blob_id: bytes) -> bool:
        """Is the blob stored where a new snapshot may refer to it?"""
        if self._writer is not None and self._writer.has(blob_id):
            return True
        return self._indexed_usable(blob_id)

    def _indexed_usable(self, blob_id: bytes) -> bool:
        return blob_id in self.index and not self._avoided(blob_id)

    def encode_blob(
        self, blob_id: bytes, data: bytes | memoryview, layout: Layout | None = None
    ) -> tuple[int, bytes]:
        """Compress (byte-grouped for float chunks with a ``layout``) and seal a blob
        (thread-safe)."""
        codec, stored = self.compressor.compress(data, layout)
        return codec, self.cipher.seal(stored, blob_id)

    def decode_blob(
        self, blob_id: bytes, codec: int, sealed: bytes | memoryview, raw_len: int
    ) -> bytes | memoryview:
        """Open, decompress and verify a blob; raises CorruptObject on any mismatch.
        ``sealed`` may be a view into a larger read (check's pack sections, restore's runs)."""
        what = f"blob {blob_id.hex()[:12]}"
        stored = self.cipher.open(sealed, blob_id, what)
        data = self.compressor.decompress(codec, stored, raw_len, what)
        if self.content_id(data) != blob_id:
            raise CorruptObject(
                f"{what}: content does not match its id",
                hint="run `bcdr check --read-data` to find every damaged pack",
            )
        return data

    @property
    def local_folder(self) -> str | None:
        """The folder of a repository on the local disk, or None (Azure): backup does not
        walk into it, and restore does not write into it."""
        folder = self.storage.capability(LocalFolder)
        return None if folder is None else str(folder.root)

    @property
    def writer(self) -> BlobWriter:
        if self._writer is None:
            self._writer = BlobWriter(
                self.storage, self.cipher, self.index, self.config.pack_size, self._indexed_usable
            )
        return self._writer

    def save_blob(self, blob_type: int, data: bytes) -> bytes:
        """Store ``data`` (deduplicated) and return its id. For trees and small blobs."""
        blob_id = self.content_id(data)
        if self.has_blob(blob_id):
            self._reused.append(blob_id)
        else:
            codec, sealed = self.encode_blob(blob_id, data)
            self.writer.add(blob_id, blob_type, codec, len(data), sealed)
        return blob_id

    def read_pack_range(self, pack: str, offset: int, length: int) -> bytes:
        """``length`` stored bytes of ``pack`` from ``offset`` (sealed blobs, one or a run of
        them); fewer when the pack is shorter. Raises ObjectNotFound for a pack that is gone."""
        return self.storage.get(pack_key(pack), offset, length)

    def load_blob(self, blob_id: bytes, loc: BlobLocation | None = None) -> bytes:
        """Read, open, decompress and verify a blob (``loc``: its index entry, if known), as
        bytes (trees and what parses them)."""
        data = self.read_blob(blob_id, loc)
        return data if isinstance(data, bytes) else bytes(data)

    def read_blob(self, blob_id: bytes, loc: BlobLocation | None = None) -> bytes | memoryview:
        """:meth:`load_blob` without a copy: a chunk of float tensors comes back as the view
        it was ungrouped into (restore writes it as it is)."""
        if loc is None:
            copies = self.index.lookup_all(blob_id)
            if not copies:
                raise CorruptObject(
                    f"blob {blob_id.hex()[:12]} is not in the index",
                    hint="run `bcdr check` to see what is missing",
                )
            # A blob stored again (its first copy lost or damaged) has several: try each.
            for other in copies[:-1]:
                try:
                    return self.read_blob(blob_id, other)
                except CorruptObject:
                    continue
            loc = copies[-1]
        try:
            sealed = self.read_pack_range(loc.pack, loc.offset, loc.stored_len)
        except ObjectNotFound:
            raise CorruptObject(
                f"pack {loc.pack[:12]} holding blob {blob_id.hex()[:12]} is missing"
            ) from None
        if len(sealed) != loc.stored_len:
            raise CorruptObject(
                f"pack {loc.pack[:12]} is truncated (blob {blob_id.hex()[:12]} cut short)"
            )
        return self.decode_blob(blob_id, loc.codec, sealed, loc.raw_len)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @contextmanager
    def writing(self) -> Iterator[BlobWriter]:
        """Write blobs, then flush; on error, abandon what was not yet indexed (prune
        collects it). The writer stays readable for statistics until ``close``."""
        writer = self.writer
        try:
            yield writer
            writer.flush()
        except BaseException:
            writer.abort()
            self._writer = None
            raise

    # -- snapshots ---------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> Snapshot:
        sealed = self.cipher.seal(snap.to_bytes(), SNAPSHOT_AAD)
        name = object_name(sealed)
        self.storage.put(f"snapshots/{name}", sealed)
        return Snapshot.from_bytes(snap.to_bytes(), name)

    def load_snapshot(self, name: str) -> Snapshot:
        sealed = self.storage.get(f"snapshots/{name}")
        if object_name(sealed) != name:
            raise CorruptObject(f"snapshot {name[:12]}: content does not match its name")
        return Snapshot.from_bytes(
            self.cipher.open(sealed, SNAPSHOT_AAD, f"snapshot {name[:12]}"), name
        )

    def snapshot_names(self) -> list[str]:
        return [info.key.removeprefix("snapshots/") for info in self.storage.list("snapshots/")]

    def list_snapshots(self, job: str | None = None) -> list[Snapshot]:
        """All readable snapshots (of ``job``), oldest first. Damaged ones are skipped and
        named in ``damaged_snapshots`` (check reports them as errors)."""
        snaps = []
        self.damaged_snapshots = []
        self._stored_at = {}
        for info in self.storage.list("snapshots/"):
            name = info.key.removeprefix("snapshots/")
            try:
                snap = self.load_snapshot(name)
            except ObjectNotFound:
                continue  # removed while listing
            except CorruptObject:
                self.damaged_snapshots.append(name)
                continue
            finally:
                self._stored_at[name] = info.modified
            if job is None or snap.job == job:
                snaps.append(snap)
        return sorted(snaps, key=lambda s: (s.datetime, s.id))

    def _maybe_newer_damaged(self, newest: Snapshot | None) -> list[str]:
        """The unreadable snapshots (of the last listing) that may be newer than ``newest``:
        all but those the storage wrote before it (both times by the storage's own clock;
        where it gives none, every one)."""
        stored = self._stored_at.get(newest.id) if newest is not None else None
        if stored is None:
            return list(self.damaged_snapshots)
        return [
            name
            for name in self.damaged_snapshots
            if (when := self._stored_at.get(name)) is None or when >= stored
        ]

    def resolve_snapshot(self, ref: str, job: str | None = None) -> Snapshot:
        """``ref`` is an id, a unique id prefix, or ``latest`` (of ``job`` if given)."""
        if ref == "latest":
            snaps = self.list_snapshots(job)
            newer = self._maybe_newer_damaged(snaps[-1] if snaps else None)
            if newer:
                # An unreadable snapshot may be the newest (of the job): "latest" must not
                # quietly mean an older one.
                names = ", ".join(n[:12] for n in newer[:3])
                raise CorruptObject(
                    f"snapshot(s) {names} cannot be read, and may be the newest"
                    + (f" of job {job!r}" if job else ""),
                    where=self.storage.url,
                    hint="name the snapshot to use (`bcdr snapshots` lists the readable ones), "
                    "or remove the damaged one with `bcdr repair snapshots --forget`",
                )
            if not snaps:
                scope = f" of job {job!r}" if job else ""
                jobs = sorted({s.job for s in self.list_snapshots() if s.job}) if job else []
                raise SnapshotNotFound(
                    f"no snapshot{scope} in the repository",
                    where=self.storage.url,
                    hint=f"jobs with snapshots here: {', '.join(jobs)}" if jobs else None,
                )
            return snaps[-1]
        matches = [n for n in self.snapshot_names() if n.startswith(ref.lower())]
        if not matches or len(ref) < 4:
            raise SnapshotNotFound(
                f"no snapshot with id {ref!r}"
                if not matches
                else f"id prefix {ref!r} is too short",
                where=self.storage.url,
                hint="list them with `bcdr snapshots`; use at least 4 characters of an id",
            )
        if len(matches) > 1:
            raise UsageError(
                f"snapshot id prefix {ref!r} is ambiguous: {', '.join(m[:12] for m in matches)}",
                hint="give more characters of the id",
            )
        snap = self.load_snapshot(matches[0])
        if job is not None and snap.job != job:
            raise SnapshotNotFound(
                f"snapshot {ref} belongs to job {snap.job!r}, not {job!r}",
                where=self.storage.url,
                hint=f"give a snapshot of job {job} (`bcdr snapshots --job {job}`)",
            )
        return snap

    def new_snapshot_fields(self) -> SnapshotFields:
        return {"time": self.clock.now().isoformat(), "program_version": __version__}
