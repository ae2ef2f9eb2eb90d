"""Restore a snapshot's tree into a target folder, verifying every file.

The tree is walked in this thread; directories and symlinks are created as met, and files are
handed to :class:`FileRestorer` (parallel, verified, renamed into place only when whole and
correct: a damaged file is reported and never appears with wrong bytes). Runs of zeros stay
holes, so sparse files come back sparse where the filesystem allows. Hardlinked files (same
device and inode in the snapshot) are linked to the first restored copy once all files are
done. Owners are restored when running as root; directory metadata is applied last, deepest
first.
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial

from bcdr.archive import readback
from bcdr.archive.beneath import Beneath, parent_of, split_path
from bcdr.archive.filerestore import AS_ROOT, FileRestorer, remove_leftover_temps
from bcdr.archive.filewrite import Flusher, direct_suits, filesystem_of, flush_every
from bcdr.archive.patterns import PathMatcher, PathSet
from bcdr.archive.statahead import StatAhead
from bcdr.archive.xattrs import apply_xattrs, count_skipped
from bcdr.errors import BcdrError
from bcdr.memory import KEEP_WITH_WORKERS, big_buffers_ahead
from bcdr.repository.repo import Repository
from bcdr.repository.tree import DIR, FILE, SYMLINK, Node, decode_tree


@dataclass
class RestoreStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    bytes_written: int = 0
    bytes_total: int = 0
    bytes_direct: int = 0  # of bytes_total, in files written with O_DIRECT
    duration_s: float = 0.0
    first_byte_s: float | None = None
    temps_removed: int = 0  # temporary files of an earlier, killed restore
    errors: list[dict[str, str]] = field(default_factory=list)
    bytes_planned: int = 0  # progress: the bytes to write, once every file is known (0 before)
    # extended attributes not restored: name -> paths (the target filesystem does not keep
    # them, this user may not set them, or file capabilities without --keep-setuid)
    xattrs_skipped: dict[str, int] = field(default_factory=dict)
    # --verify: the files this restore wrote, read back from the disk and found as the
    # snapshot has them (bcdr/archive/readback.py); the bytes to read back, once known
    files_read_back: int = 0
    bytes_read_back: int = 0
    read_back_planned: int = 0
    read_back_wrong: int = 0  # of the errors: files the disk gave back otherwise
    # the final flush of what was written to the disk (syncfs): how long it took; or that the
    # disk failed a write of this restore (an error names the target)
    synced_s: float | None = None
    sync_failed: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


ProgressFn = Callable[[RestoreStats, bytes], None]


class Restorer:
    def __init__(
        self,
        repo: Repository,
        target: bytes,
        *,
        includes: PathMatcher | PathSet | None = None,
        progress: ProgressFn | None = None,
        walked: Iterable[str] = (),
        direct: bool = True,
        setid: bool = False,
        part: tuple[int, int] | None = None,
        finish: bool = False,
        verify: bool = False,
    ):
        """``part`` (I, N): a sharded restore's task (bcdr/actions/restore.py): only the
        regular files of part I of N (parts of about equal bytes, in walk order, the same in
        every task), with the folders they need; the other tasks write into the same target
        meanwhile, so nothing of theirs is touched. ``finish``: after every part, everything
        else (links, hardlinks, folders' metadata), each regular file checked to be in
        place with its size.

        ``walked``: the snapshot's backed-up paths. Folders at or below them were real
        folders when backed up, and are made as real folders: a symlink in the way of one is
        replaced (the target is empty unless --overwrite), never followed. The folders above
        them were recorded as folders whatever they were (/lib -> usr/lib on many systems), and
        are made, or followed, as they are. ``direct``: larger files are written with
        ``O_DIRECT`` if the target is on a local disk (bcdr/archive/filerestore.py).
        ``setid``: restore setuid and setgid bits (off: a repository someone else could write
        to must not plant a setuid program). ``verify``: once every file is written, read
        back each regular file this restore wrote (a part: its own) and compare it with the
        snapshot; one that differs is an error (bcdr/archive/readback.py)."""
        self.repo = repo
        self.target = target
        self._walked = tuple(os.fsencode(os.path.normpath(p)) for p in walked)
        self._under_target = target.rstrip(b"/") + b"/"  # what paths under the target start with
        self.includes = includes if includes else None
        self.progress = progress
        self.stats = RestoreStats()
        self._mode_mask = 0o7777 if setid else 0o1777
        self._beneath = Beneath(target)  # every folder is opened beneath the target
        self._files = FileRestorer(repo, direct=direct, mode_mask=self._mode_mask, root=target)
        self._links: list[tuple[Node, bytes, bytes]] = []
        self._link_firsts: dict[tuple[int, int], Node] = {}  # the first file of each group
        self._dirs: list[tuple[bytes, Node]] = []
        self._made: set[bytes] = {target}
        self._started = 0.0
        self._last_progress = 0.0
        self._part = part
        self._finish = finish
        self._mine: list[bool] = []  # part: per regular file in walk order, is it this part's
        self._ordinal = 0
        self._planned = 0  # bytes of the files submitted (the total, once the walk is done)
        self._walk_done = False
        self._last_path = b""
        self._stats = StatAhead()  # finish: each folder's files checked side by side (slow fs)
        self._slow_target = False  # is the target on such a filesystem? (see run)
        self._in_place_ahead: dict[bytes, int | OSError] = {}  # dest -> its size (-1: not a file)
        self._verify = verify
        self._flush_every = flush_every()  # a bad BCDR_FLUSH_EVERY stops before any work
        self._written: list[tuple[bytes, bytes, Node]] = []  # verify: snap path, dest, node
        self._flusher: Flusher | None = None  # (run) makes the bytes durable

    def run(self, root_tree: bytes) -> RestoreStats:
        self._started = time.monotonic()
        os.makedirs(self.target, exist_ok=True)
        # The target's filesystem, looked up once: on one where every call waits for a server
        # (Lustre, NFS...: bcdr/archive/statahead.py) the workers write a batch's files, the
        # finish checks a folder's files and --verify reads files back side by side; on a
        # local disk what is written is flushed as it goes.
        fstype = filesystem_of(self.target)
        self._slow_target = self._stats.slow(self.target, os.stat(self.target).st_dev, fstype)
        self._files.side_by_side = self._slow_target  # before the workers fork
        # Workers fork first (they return freed buffers at once); the small files are theirs,
        # and this process keeps less freed memory then.
        forked = self._files.start()
        big_buffers_ahead(KEEP_WITH_WORKERS if forked else None)
        # a thread, so after the workers forked; on a local disk it flushes as files are
        # written, and at the end it makes them durable
        local = direct_suits(self.target, fstype)
        flusher = self._flusher = Flusher(self.target, self._flush_every if local else 0)
        try:
            self._write_all(root_tree)
        except BaseException:
            flusher.close()
            raise
        try:
            self.stats.synced_s = round(flusher.finish(), 3)
        except OSError as exc:
            self.stats.sync_failed = True
            self._error(
                self.target,
                f"the disk failed a write of this restore ({exc.strerror or exc}): files "
                "restored here may not hold what was verified; check the disk (dmesg) and "
                "restore again",
            )
        self.stats.duration_s = time.monotonic() - self._started
        return self.stats

    def _write_all(self, root_tree: bytes) -> None:
        """Every file, link and folder of the tree (this part's), read back with verify."""
        old_limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old_limit, 20000))
        try:
            if self._part is not None:
                self._mine = self._assign(root_tree, *self._part)
            else:  # a part never removes temporary files: another part's are being written
                self.stats.temps_removed += self._remove_temps(self.target)
            self._restore_tree(root_tree, b"", self.includes is None)
        finally:
            sys.setrecursionlimit(old_limit)
            self._walk_done = True
            self._stats.close()
            self._files.wait(self._live_tick if self.progress is not None else None)
            self._files.close_root()
        self._collect_files()
        if self._written:
            self._read_back_written()
        if self._part is None:
            for node, dest, snap_path in self._links:
                self._link(node, dest, snap_path)
            for path, node in reversed(self._dirs):
                self._apply_meta(path, node)
        self._beneath.close()

    def _collect_files(self) -> None:
        f = self._files
        self.stats.files = f.files
        self.stats.bytes_written = f.bytes_written
        self.stats.bytes_total += f.bytes_total
        self.stats.bytes_direct = f.bytes_direct
        self.stats.first_byte_s = f.first_byte_s
        for name, n in f.xattrs_skipped.items():
            self.stats.xattrs_skipped[name] = self.stats.xattrs_skipped.get(name, 0) + n
        for snap_path, error in sorted(f.errors):
            self._error(snap_path, error)

    def _link(self, node: Node, dest: bytes, snap_path: bytes) -> None:
        first = self._files.done.get((node.dev, node.inode))
        if first is None:
            self._error(snap_path, "not restored: the file it is a hardlink of failed")
            return
        try:
            with (
                parent_of(self._beneath, first) as (src_fd, src),
                parent_of(self._beneath, dest) as (dst_fd, name),
            ):
                _remove_existing(dst_fd, name)
                os.link(src, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            self.stats.hardlinks += 1
            self.stats.files += 1
        except BcdrError as exc:
            self._error(snap_path, str(exc))
        except OSError as exc:
            self._error(snap_path, exc.strerror or str(exc))

    def _error(self, snap_path: bytes, reason: str) -> None:
        self.stats.errors.append({"path": os.fsdecode(snap_path), "error": reason})

    def _restore_tree(self, tree_id: bytes, rel: bytes, included: bool) -> bool:
        """Restore the nodes of a tree under ``rel``; True if anything was restored."""
        try:
            nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
        except BcdrError as exc:
            self._error(rel or b"/", f"cannot read directory listing: {exc}")
            return False
        restored = False
        checked = self._check_ahead(nodes, rel) if self._finish else []
        for node in nodes:
            snap_path = rel + b"/" + node.name
            inc = included or (self.includes is not None and self.includes.matches(snap_path))
            if node.type == DIR:
                restored |= self._restore_dir(node, snap_path, inc)
            elif inc:
                restored = True
                self._restore_entry(node, snap_path)
        for dest in checked:  # not looked at (left out, or a hardlink's other name)
            self._in_place_ahead.pop(dest, None)
        return restored

    def _dest(self, snap_path: bytes) -> bytes:
        return self._under_target + snap_path.lstrip(b"/")  # os.path.join, for every file

    def _restore_dir(self, node: Node, snap_path: bytes, included: bool) -> bool:
        dest = self._dest(snap_path)
        if included:
            try:
                self._makedirs(dest)
            except OSError as exc:
                self._error(snap_path, f"cannot create directory: {exc.strerror}")
                return False
            except BcdrError as exc:
                self._error(snap_path, str(exc))
                return False
        restored = node.subtree is not None and self._restore_tree(
            node.subtree, snap_path, included
        )
        if included or restored:
            self._dirs.append((dest, node))
            self.stats.dirs += 1
        return included or restored

    def _makedirs(self, path: bytes) -> None:
        """Make ``path`` (under the target) a folder, component by component, never through a
        link that leads out of the target. What is in the way of a folder is replaced: a
        file, or a link at or below a backed-up path (there were real folders there). A link
        above the backed-up paths (/lib -> usr/lib) is kept and followed only while it leads
        to a place inside the target; one that leads outside stops this part of the restore
        with an error and is never followed."""
        if path in self._made or path == self.target:
            return
        self._makedirs(os.path.dirname(path))
        with parent_of(self._beneath, path) as (dir_fd, name):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o700, dir_fd=dir_fd)  # its mode is applied last
                    self._made.add(path)
                    return
                except FileExistsError:  # another part of a sharded restore made it
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and not self._walked_folder(path):
                if not self._inside(path):
                    raise BcdrError(
                        f"{os.fsdecode(path)} is a link to a place outside the restore target "
                        "(or an absolute one); not followed (remove it, or restore into an "
                        "empty folder)"
                    )
            elif not stat.S_ISDIR(st.st_mode):  # a file, or a link where a real folder was
                _remove_existing(dir_fd, name)
                os.mkdir(name, 0o700, dir_fd=dir_fd)
            elif self._part is None:  # a folder that was there: a killed restore's leftovers go
                self.stats.temps_removed += self._remove_temps(path)
        self._made.add(path)

    def _remove_temps(self, path: bytes) -> int:
        fd = self._beneath.folder(path, readable=True)
        try:
            return remove_leftover_temps(fd)
        finally:
            os.close(fd)

    def _inside(self, path: bytes) -> bool:
        """Does the link ``path`` lead, relatively, to a place inside the target? (An
        absolute link is never followed: the kernel resolves folders beneath the target,
        bcdr/archive/beneath.py, unless the target is /.)"""
        if self.target != b"/" and os.readlink(path).startswith(b"/"):
            return False
        real, root = os.path.realpath(path), os.path.realpath(self.target)
        return real == root or real.startswith(root.rstrip(b"/") + b"/")

    def _walked_folder(self, path: bytes) -> bool:
        """Is ``path`` (under the target) a folder at or below a backed-up path?"""
        prefix = self._under_target
        if not self._walked or not path.startswith(prefix):
            return False
        snap_path = b"/" + path[len(prefix) :]
        return any(snap_path == w or snap_path.startswith(w + b"/") for w in self._walked)

    def _restore_entry(self, node: Node, snap_path: bytes) -> None:
        dest = self._dest(snap_path)
        if self._part is not None and node.type == FILE:
            ordinal = self._ordinal
            self._ordinal += 1
            if not self._mine[ordinal]:
                return  # another part's (a hardlink's other names: the finish's)
        elif self._part is not None:
            return  # links: the finish's
        try:
            self._makedirs(split_path(dest)[0])
            if node.type == FILE:
                self._restore_file(node, dest, snap_path)
            elif node.type == SYMLINK and self._part is None:
                with parent_of(self._beneath, dest) as (dir_fd, name):
                    _remove_existing(dir_fd, name)
                    os.symlink(node.target or b"", name, dir_fd=dir_fd)
                self._apply_meta(dest, node)
                self.stats.symlinks += 1
        except BcdrError as exc:
            self._error(snap_path, str(exc))
        except OSError as exc:
            self._error(snap_path, f"{exc.strerror or exc}")

    def _restore_file(self, node: Node, dest: bytes, snap_path: bytes) -> None:
        link_key = (node.dev, node.inode)
        if node.nlink > 1:
            first = self._link_firsts.get(link_key)
            if first is not None:
                if (first.content, first.digest, first.size) != (
                    node.content,
                    node.digest,
                    node.size,
                ):  # a crafted tree: linking would give this path the other's bytes
                    self._error(snap_path, "hardlinked to a file with other contents; not restored")
                    return
                self._links.append((node, dest, snap_path))
                return
            self._link_firsts[link_key] = node
        if self._finish:
            self._in_place(node, dest, snap_path)
            return
        self._files.submit(node, dest, snap_path)
        if self._verify:
            self._written.append((snap_path, dest, node))
        self._planned += node.size
        self._tick(snap_path)

    def _read_back_written(self) -> None:
        """(verify) Read back every file written without an error, before the folders get
        their modes (one may forbid reading) and hardlinks their other names (the same
        inode), READERS at a time. The target is flushed first, so that each file is read
        from the disk (bcdr/archive/readback.py); a write that failed is told by the
        restore's last flush."""
        if self._flusher is not None:
            self._flusher.flush()
        failed = {snap_path for snap_path, _ in self._files.errors}
        todo = [w for w in self._written if w[0] not in failed]
        self._written = []
        self.stats.read_back_planned = sum(node.size for _, _, node in todo)
        if todo:  # the progress line says at once that the reading back has started
            self._last_progress = 0.0
            self._tick(todo[0][0])
        readers = StatAhead(threads=readback.READERS)
        try:
            items = [(dest, node) for _, dest, node in todo]
            results = readers.map(self._read_back, items, readers.reads_ahead())
            for (snap_path, _, node), result in zip(todo, results, strict=True):
                wrong = readback.finding(node, result)
                if wrong is not None:
                    self._error(snap_path, f"read back from the disk: {wrong}")
                    self.stats.read_back_wrong += 1
                    continue
                self.stats.files_read_back += 1
                self.stats.bytes_read_back += node.size
                self._tick(snap_path)
        finally:
            readers.close()

    def _read_back(self, item: tuple[bytes, Node]) -> readback.ReadBack:
        """Read back the restored file ``dest`` (its folder opened beneath the target)."""
        dest, node = item
        try:
            with parent_of(self._beneath, dest) as (dir_fd, name):
                fd = os.open(name, readback.OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)
        except BcdrError as exc:
            return str(exc)
        except OSError as exc:
            return readback.open_failed(exc)
        try:
            return readback.read_fd(fd, node)
        finally:
            os.close(fd)

    def _check_ahead(self, nodes: list[Node], rel: bytes) -> list[bytes]:
        """(finish) Where the target is on a filesystem slow to answer a stat (Lustre,
        NFS...: bcdr/archive/statahead.py), stat this folder's files side by side now, through
        one descriptor of the folder opened beneath the target, for :meth:`_in_place`; the
        paths checked. Looked up once for the target: a folder mounted inside it goes as the
        target does."""
        names = [n.name for n in nodes if n.type == FILE]
        if not self._slow_target or len(names) < 2:
            return []
        folder = self._dest(rel) if rel else self.target
        try:
            fd = self._beneath.folder(folder)
        except (OSError, BcdrError):
            return []  # each file's own check says what is wrong
        try:
            dests = [os.path.join(folder, name) for name in names]
            sizes = self._stats.map(partial(_size_at, fd), names)
            self._in_place_ahead.update(zip(dests, sizes, strict=True))
        finally:
            os.close(fd)
        return dests

    def _in_place(self, node: Node, dest: bytes, snap_path: bytes) -> None:
        """(finish) A part restored this file, verified, and renamed it into place: it is
        there, a regular file of its size (a part that did not run leaves it missing)."""
        size = self._in_place_ahead.pop(dest, None)
        if size is None:
            with parent_of(self._beneath, dest) as (dir_fd, name):
                size = _size_at(dir_fd, name)
        if isinstance(size, FileNotFoundError):
            self._error(snap_path, "not restored (the part that holds it did not finish)")
            return
        if isinstance(size, OSError):
            raise size
        if size != node.size:
            self._error(snap_path, "not the restored file (not a regular file of its size)")
            return
        self._files.done[(node.dev, node.inode)] = dest
        self._files.files += 1
        self._files.bytes_total += node.size

    def _assign(self, root_tree: bytes, index: int, count: int) -> list[bool]:
        """Per regular file in walk order: is it part ``index``'s? Parts are runs of files
        of about equal bytes (a hardlink's other names weigh nothing: the finish links
        them), decided from the snapshot alone, so every task decides alike."""
        sizes: list[int] = []
        firsts: set[tuple[int, int]] = set()

        def walk(tree_id: bytes, rel: bytes, included: bool) -> None:
            try:
                nodes = decode_tree(self.repo.load_blob(tree_id), f"tree {tree_id.hex()[:12]}")
            except BcdrError:
                return  # the walk that restores says so
            for node in nodes:
                snap_path = rel + b"/" + node.name
                inc = included or (self.includes is not None and self.includes.matches(snap_path))
                if node.type == DIR:
                    if node.subtree is not None:
                        walk(node.subtree, snap_path, inc)
                elif inc and node.type == FILE:
                    key = (node.dev, node.inode)
                    first = node.nlink <= 1 or key not in firsts
                    firsts.add(key)
                    sizes.append(node.size + 1 if first else 0)  # + 1: empty files spread too

        walk(root_tree, b"", self.includes is None)
        total = sum(sizes) or 1
        out, done = [], 0
        for size in sizes:
            out.append(size > 0 and min(count - 1, (done + size // 2) * count // total) == index)
            done += size
        return out

    def _apply_meta(self, path: bytes, node: Node) -> None:
        """Owner, mode and times of a folder (through a descriptor opened without following
        a link, so a link swapped in is never changed through) or of a symlink itself."""
        try:
            with parent_of(self._beneath, path) as (dir_fd, name):
                if node.type == SYMLINK:
                    if AS_ROOT:
                        os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
                    if node.xattrs:  # by path under the folder (no *at form): its own
                        full = b"/proc/self/fd/%d/%s" % (dir_fd, name)
                        skipped = apply_xattrs(full, node.xattrs, follow_symlinks=False)
                        count_skipped(self.stats.xattrs_skipped, skipped)
                    times = (node.mtime_ns, node.mtime_ns)
                    os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
                    return
                if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    return  # a link kept above the backed-up paths: nothing is changed through it
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, dir_fd=dir_fd)
            try:
                if AS_ROOT:
                    os.fchown(fd, node.uid, node.gid)
                if node.xattrs:
                    count_skipped(self.stats.xattrs_skipped, apply_xattrs(fd, node.xattrs))
                os.fchmod(fd, node.mode & self._mode_mask)
                os.utime(fd, ns=(node.mtime_ns, node.mtime_ns))
            finally:
                os.close(fd)
        except BcdrError as exc:
            self._error(path, str(exc))
        except OSError as exc:
            self._error(path, f"cannot set metadata: {exc.strerror}")
        except (OverflowError, ValueError) as exc:  # a crafted tree's out-of-range field
            self._error(path, f"cannot set metadata: {exc}")

    def _live_tick(self) -> None:
        """(while the files are written) the progress line, from the bytes written so far."""
        self._tick(self._last_path, live=True)

    def _tick(self, path: bytes, *, live: bool = False) -> None:
        if self.progress is None:
            return
        self._last_path = path
        now = time.monotonic()
        if now - self._last_progress >= 0.2:
            self._last_progress = now
            self.stats.files = self._files.files
            self.stats.bytes_written = max(self._files.bytes_written, self._files.live_bytes)
            self.stats.bytes_planned = self._planned if self._walk_done else 0
            self.progress(self.stats, path)


def _size_at(dir_fd: int, name: bytes) -> int | OSError:
    """The size of the regular file ``name`` in the folder ``dir_fd`` (-1: there, but not a
    regular file), or the error its stat gave."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return exc
    return st.st_size if stat.S_ISREG(st.st_mode) else -1


def _remove_existing(dir_fd: int, name: bytes) -> None:
    """Remove what is at ``name`` in the folder ``dir_fd`` (a file or a link, never followed)
    to make room; a folder in the way is an error."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise BcdrError("a directory is in the way")
    os.unlink(name, dir_fd=dir_fd)
