"""Restored files read back from the disk and compared with the snapshot.

A restore checks every chunk against its id as it writes it; reading a file back afterwards
checks what the disk now holds, through another path: its size and its fingerprint (the
snapshot's, by regions or not) against the tree's. The disk's, not the page cache's: a file
is read back only once its filesystem was flushed (the restore's ``syncfs``), and its cached
pages, clean by then, are dropped first (``POSIX_FADV_DONTNEED``), so the bytes come from the
device (or a network filesystem's server). Reading the page cache would find what was written
whatever the disk kept.

A drill reads every restored file back (bcdr/actions/drill.py); ``bcdr restore --verify``
does the same for the files a restore, or a part of a sharded one, wrote
(bcdr/archive/restore.py). READERS files are read at a time (one with
``BCDR_STAT_AHEAD=0``): each small file is a read from the device (or a round trip to a
server), and one reader would wait for each in turn. A ``restore --verify`` of the small
bench corpus (20,000 small files) onto this VM's loop-mounted ext4 took 6.5 s reading back
one file at a time, 5.6 s eight at a time, and 2.9-3.1 s when the read-back read the page
cache.
"""

from __future__ import annotations

import os
import stat

from bcdr.archive.filerestore import file_digest
from bcdr.repository.tree import Node

#: Files read back at once on a network filesystem (each holds an 8 MiB block while read).
READERS = 8

#: How a restored file is opened to be read back: a FIFO swapped in for it does not block.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC

#: (size, fingerprint in the form of the node's), or what went wrong.
ReadBack = tuple[int, str] | str


def read_fd(fd: int, node: Node) -> ReadBack:
    """Read the open file ``fd`` back (a read error is returned, not raised)."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        drop_cached(fd)
        return st.st_size, file_digest(fd, st.st_size, node.digest)
    except OSError as exc:
        return f"cannot be read back: {exc.strerror}"


def drop_cached(fd: int) -> None:
    """Drop the file's pages from the page cache, so that it is read from the disk. Only
    clean pages go: call it after the filesystem was flushed. Where the call is missing or
    refused, the file is read as it is."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def open_failed(exc: OSError) -> str:
    """What a failed open of a restored file means: missing, or there and not readable (a
    mode without read for this user, a link in its place)."""
    if isinstance(exc, FileNotFoundError):
        return f"not restored: {exc.strerror}"
    return f"cannot be opened to read it back: {exc.strerror}"


def read_path(item: tuple[bytes, Node]) -> ReadBack:
    """Read back the restored file at the path ``item[0]``."""
    path, node = item
    try:
        fd = os.open(path, OPEN_FLAGS | os.O_NOFOLLOW)  # a file is never a link
    except OSError as exc:
        return open_failed(exc)
    try:
        return read_fd(fd, node)
    finally:
        os.close(fd)


def finding(node: Node, result: ReadBack) -> str | None:
    """How the file read back differs from the snapshot's ``node``; None when it does not."""
    if isinstance(result, str):
        return result
    size, digest = result
    if size != node.size:
        return f"size {size}, the snapshot recorded {node.size}"
    if digest != node.digest:
        return f"digest {digest}, the snapshot recorded {node.digest}"
    return None
