"""Extended attributes (and so POSIX ACLs, ``system.posix_acl_access`` and ``..._default``)
read at backup and set again at restore. Linux only; elsewhere nothing is read or set."""

from __future__ import annotations

import errno
import os

Xattrs = tuple[tuple[bytes, bytes], ...]
#: Errors that mean "not here": no xattrs on this filesystem, or not for this user (trusted.*,
#: security.* as non-root). They are counted, not fatal: the data is restored all the same.
NOT_HERE = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL}


def read_xattrs(path: bytes) -> Xattrs:
    """The extended attributes of ``path`` itself (a link's own, not its target's), sorted."""
    if not hasattr(os, "listxattr"):
        return ()
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for name in sorted(names):
        try:
            out.append((os.fsencode(name), os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue  # removed meanwhile, or not readable by this user
    return tuple(out)


#: File capabilities: privileges a restored program would run with, as a setuid bit grants.
#: Restored only when setuid and setgid bits are (``restore --keep-setuid``): a repository
#: someone could write to must not hand a root-owned restored file extra privileges.
CAPABILITY = b"security.capability"


def apply_xattrs(
    target: int | bytes,
    xattrs: Xattrs,
    *,
    follow_symlinks: bool = True,
    privileged: bool = False,
) -> list[bytes]:
    """Set each attribute on ``target`` (a descriptor, or a path); the names that could not
    be set here (NOT_HERE) or were left out (file capabilities, unless ``privileged``). Any
    other error is raised."""
    skipped: list[bytes] = []
    for name, value in xattrs:
        if name == CAPABILITY and not privileged:
            skipped.append(name)
            continue
        try:
            os.setxattr(target, name, value, follow_symlinks=follow_symlinks)
        except OSError as exc:
            if exc.errno not in NOT_HERE:
                raise
            skipped.append(name)
    return skipped


def count_skipped(counts: dict[str, int], names: list[bytes]) -> None:
    """Add ``names`` (attributes not restored on one path) to ``counts`` (name -> paths)."""
    for name in names:
        key = os.fsdecode(name)
        counts[key] = counts.get(key, 0) + 1
