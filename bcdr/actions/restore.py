"""``bcdr restore``: restore a snapshot (or part of it) into a folder, verified."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from bcdr.actions.common import open_repo, transfer
from bcdr.archive.availability import require_online
from bcdr.archive.patterns import PathMatcher, PathSet
from bcdr.archive.restore import ProgressFn, Restorer, RestoreStats
from bcdr.clock import Clock
from bcdr.errors import RestoreError, UsageError
from bcdr.repository.bounds import check_snapshot_size
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.storage.url import StorageSpec
from bcdr.storage.wrap import Transfer


@dataclass
class RestoreResult:
    snapshot: Snapshot
    target: str
    stats: RestoreStats
    downloaded: Transfer | None = None

    @property
    def ok(self) -> bool:
        return not self.stats.errors

    def to_dict(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot.id,
            "target": self.target,
            "ok": self.ok,
            **self.stats.to_dict(),
            "downloaded": self.downloaded.to_dict() if self.downloaded else None,
        }


def check_target(target: str, overwrite: bool) -> None:
    if not target.strip():
        raise UsageError(
            "the restore target is empty",
            hint="give the folder to restore into, e.g. --target /scratch/restore",
        )
    if os.path.exists(target) and not os.path.isdir(target):
        raise UsageError(f"restore target is not a directory: {target}")
    try:
        occupied = os.path.isdir(target) and any(os.scandir(target))
    except OSError as exc:  # it must be read: to see it is empty, to find a killed run's files
        raise UsageError(
            f"cannot read the restore target {target}: {exc.strerror}",
            hint="give this user read access to it, or choose another folder",
        ) from None
    if occupied and not overwrite:
        raise UsageError(
            f"restore target is not empty: {target}",
            hint="choose an empty folder, or pass --overwrite to replace files in it",
        )


def _not_into_the_repository(repo: Repository, target: str) -> None:
    """A restore into a local repository's own folder is refused: it is never what was meant,
    and it leaves the restored files among the repository's objects."""
    root = repo.local_folder
    if root is None:
        return
    inside, folder = os.path.realpath(target), os.path.realpath(root)
    if os.path.commonpath([inside, folder]) == folder:
        raise UsageError(
            f"restore target {target} is inside the repository {folder}",
            hint="choose a folder outside the repository",
        )


def restore(
    where: StorageSpec | str,
    ref: str,
    target: str,
    *,
    job: str | None = None,
    includes: tuple[str, ...] = (),
    overwrite: bool = False,
    direct: bool = True,
    setid: bool = False,
    progress: ProgressFn | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
    part: tuple[int, int] | None = None,
    finish: bool = False,
    verify: bool = False,
) -> RestoreResult:
    """``part`` (I, N) and ``finish``: the steps of a sharded restore (bcdr/actions/shard.py,
    docs/scale-out.md): the target is shared with the other parts, so it may hold files."""
    if part is not None and not 0 <= part[0] < part[1]:
        raise UsageError(f"--part {part[0]}/{part[1]}: give I/N with 0 <= I < N, e.g. 0/4")
    check_target(target, overwrite or part is not None or finish)
    repo = open_repo(where, clock=clock, env=env)
    _not_into_the_repository(repo, target)
    with repo.lock(READ, wait=read_wait()):  # a prune's sweep must not delete packs under us
        snap = repo.resolve_snapshot(ref, job)
        repo.load_index(verify_packs=True)  # a copy in a pack that is gone is read last
        stats = restore_snapshot(
            repo,
            snap,
            target,
            includes=PathMatcher(includes) or None,
            progress=progress,
            direct=direct,
            setid=setid,
            part=part,
            finish=finish,
            verify=verify,
        )
    matched = stats.files + stats.dirs + stats.symlinks + stats.hardlinks + len(stats.errors)
    if includes and part is None and not finish and not matched:
        raise RestoreError(
            f"--include {' '.join(includes)} matched nothing in snapshot {snap.short_id}; "
            "nothing was restored",
            where=target,
            hint="patterns match the paths as backed up, absolute (e.g. "
            f"'{snap.paths[0] if snap.paths else '/data'}/*'); "
            f"`bcdr ls {snap.short_id}` lists them",
        )
    return RestoreResult(snap, os.path.abspath(target), stats, transfer(repo, "down"))


def restore_snapshot(
    repo: Repository,
    snap: Snapshot,
    target: str,
    *,
    includes: PathMatcher | PathSet | None = None,
    progress: ProgressFn | None = None,
    direct: bool = True,
    setid: bool = False,
    sized: bool = False,
    part: tuple[int, int] | None = None,
    finish: bool = False,
    verify: bool = False,
) -> RestoreStats:
    """Restore ``snap`` (or the paths ``includes`` matches) into ``target``, every file
    verified; the caller holds a read lock and has loaded the index. Refused before a byte is
    written when the snapshot is too large to walk (unless the caller checked: ``sized``) or
    needs archived packs. ``verify``: read every file written back from the disk afterwards.
    ``bcdr restore`` and drills restore through here."""
    tree = bytes.fromhex(snap.tree)
    if not sized:
        check_snapshot_size(repo, tree, f"snapshot {snap.short_id}")
    require_online(repo, tree, snap.short_id, includes)
    restorer = Restorer(
        repo,
        os.fsencode(os.path.abspath(target)),
        includes=includes,
        progress=progress,
        walked=snap.paths,
        direct=direct,
        setid=setid,
        part=part,
        finish=finish,
        verify=verify,
    )
    return restorer.run(tree)
