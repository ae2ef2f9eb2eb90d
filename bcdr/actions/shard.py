"""``bcdr shard plan|run|commit`` and ``bcdr backup --shards N``: one snapshot backed up by
several processes (bcdr/archive/shards.py; docs/scale-out.md).

Each step is a command, so any engine can drive them: the local executor here starts the
shards as processes on this machine; a Slurm job array runs ``shard run`` on its nodes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import runpy
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import IO, Any, Protocol

from bcdr.actions import slurm
from bcdr.actions.backup import (
    BackupRequest,
    BackupResult,
    find_parent,
    load_for_writing,
    resolve_sources,
    run_backup,
)
from bcdr.archive.backup import (
    BATCH_FILES,
    Archiver,
    PartRead,
    folder_id,
    identical,
    same_content,
)
from bcdr.archive.patterns import PathMatcher
from bcdr.archive.shards import (
    Manifest,
    ParentLookup,
    Part,
    PartReceipt,
    PreparedFiles,
    Receipt,
    cut,
    encode_shards,
    list_runs,
    load_manifest,
    load_receipt,
    load_receipts,
    new_run_nonce,
    save_manifest,
    save_receipt,
    walk_files,
)
from bcdr.compliance.context import RunContext
from bcdr.errors import BcdrError, RepositoryError, UsageError
from bcdr.repository.locks import BACKUP
from bcdr.repository.repo import Repository
from bcdr.repository.snapshot import Snapshot
from bcdr.units import human_bytes

#: Shards a run may have (a Slurm array's default MaxArraySize is 1001).
MAX_SHARDS = 1000


def plan_run(
    repo: Repository,
    paths: tuple[str, ...],
    shards: int,
    *,
    job: str | None = None,
    excludes: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    force_read: bool = False,
    one_file_system: bool = False,
) -> Manifest:
    """Walk the source and store the run's manifest: ``shards`` shards of about equal bytes
    of the files that changed since the parent snapshot (every file with ``force_read``;
    none on another filesystem than the paths' with ``one_file_system``)."""
    if not 1 <= shards <= MAX_SHARDS:
        raise UsageError(f"--shards must be from 1 to {MAX_SHARDS}, not {shards}")
    sources = resolve_sources(paths)
    names = [os.fsdecode(p) for p in sources]
    with repo.lock(BACKUP):
        parent = find_parent(repo, job, names)
        skip = folder_id(repo.local_folder)
        lookup = None
        if parent is not None and not force_read:
            repo.load_index(verify_packs=True)  # what the parent's files are stored in
            lookup = ParentLookup(repo, bytes.fromhex(parent.tree))
        files: list[tuple[bytes, int]] = []
        unchanged = unchanged_bytes = 0
        walk = walk_files(sources, PathMatcher(excludes), skip, one_file_system=one_file_system)
        for p, st in walk:
            if _unchanged(lookup, p, st, repo):
                unchanged += 1
                unchanged_bytes += st.st_size
            else:
                files.append((p, st.st_size))
        region = repo.config.chunker.region
        encoded, shard_bytes = encode_shards(cut(files, shards, region))
        manifest = Manifest(
            run=new_run_nonce(),
            created=repo.clock.now().isoformat(),
            paths=names,
            excludes=list(excludes),
            job=job,
            parent=parent.id if parent is not None else None,
            region=region,
            shards=encoded,
            shard_bytes=shard_bytes,
            files=len(files) + unchanged,
            bytes=sum(size for _, size in files) + unchanged_bytes,
            tags=list(tags),
            force_read=force_read,
            one_file_system=one_file_system,
            unchanged=unchanged,
            unchanged_bytes=unchanged_bytes,
        )
        return save_manifest(repo, manifest)


def run_shard(repo: Repository, run: str, index: int) -> Receipt:
    """Read and store shard ``index`` of ``run``; its receipt (stored in the repository). A
    shard that has its receipt already does nothing and returns it (an array run again
    whole re-runs only the shards that failed)."""
    manifest = load_manifest(repo, run)
    if not 0 <= index < manifest.count:
        raise UsageError(
            f"run {run} has shards 0 to {manifest.count - 1}; there is no shard {index}"
        )
    done = load_receipt(repo, manifest, index)
    if done is not None:
        return done
    unseen = [p for p in manifest.paths if not os.path.lexists(p)]
    if unseen:  # not mounted here: every part would be missing, and the commit read it all
        raise UsageError(
            f"shard {index} of run {run}: {unseen[0]} does not exist on "
            f"{socket.gethostname()}; nothing was read",
            hint="the source must be on a filesystem every node mounts, at the same path",
        )
    started = time.monotonic()
    with repo.lock(BACKUP) as lock:
        load_for_writing(repo)
        parent = None
        parts = manifest.parts(index)
        if not manifest.force_read and any(p.size < 0 for p in parts):
            parent = _parent_lookup(repo, manifest)  # an older manifest: the shard compares
        archiver = Archiver(repo)
        reads: list[PartRead] = []
        skipped = 0
        with repo.writing():
            # worker processes cost a fork each: worth it for a batch of small files or more
            archiver.begin(processes=_small_files(archiver, parts) >= BATCH_FILES)
            try:
                for part in parts:
                    size = part.size
                    if size < 0:  # planned by an older bcdr: as it ran shards
                        try:
                            st = os.lstat(part.path)
                        except OSError:
                            st = None  # read_part says why
                        if st is not None and _unchanged(parent, part.path, st, repo):
                            skipped += 1
                            continue
                        regular = st is not None and stat.S_ISREG(st.st_mode)
                        size = st.st_size if st is not None and regular else -1
                    # A file that changed since it was planned reads as changed (its size or
                    # times differ from the part's) and the commit reads it again.
                    whole = (part.start, part.end) == (0, size)
                    small = archiver.read_small(part.path, size) if whole else None
                    reads.append(small or archiver.read_part(part.path, part.start, part.end))
            finally:
                archiver.end()
        lock.ensure_valid()
        receipt = Receipt(
            run=run,
            index=index,
            host=socket.gethostname(),
            parts=[_receipt_part(r) for r in reads if r.error is None],
            skipped=skipped,
            failed=[(os.fsdecode(r.path), r.error) for r in reads if r.error is not None],
            bytes_read=archiver.stats.bytes_read,
            bytes_added=repo.writer.bytes_added,
            seconds=round(time.monotonic() - started, 3),
            slurm_job=slurm_task_id(),
        )
        save_receipt(repo, receipt)
    return receipt


def _small_files(archiver: Archiver, parts: list[Part]) -> int:
    """How many of ``parts`` are small files read whole in workers, counted up to
    BATCH_FILES (enough to know that workers are worth their fork)."""
    count = 0
    for p in parts:
        if p.start == 0 and p.end == p.size and archiver.reads_small(p.path, p.size):
            count += 1
            if count >= BATCH_FILES:
                break
    return count


def slurm_task_id() -> str | None:
    """``ARRAYJOB_TASK`` when this process is a task of a Slurm job array, the job id in
    another Slurm job, else None."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _receipt_part(r: PartRead) -> PartReceipt:
    return PartReceipt(r.path, r.start, r.end, r.meta, r.content, r.digest, r.regions)


def _parent_lookup(repo: Repository, manifest: Manifest) -> ParentLookup | None:
    if manifest.parent is None:
        return None
    try:
        snap = repo.load_snapshot(manifest.parent)
    except BcdrError:
        return None  # forgotten since the plan: every file is read
    return ParentLookup(repo, bytes.fromhex(snap.tree))


def _unchanged(
    parent: ParentLookup | None, path: bytes, st: os.stat_result, repo: Repository
) -> bool:
    """A file the parent snapshot holds as it is now, so no shard reads any part of it: the
    commit's walk keeps the parent's node for it (the no-change path of a backup) or, for a
    hardlinked file, makes its node anew around the parent's content, as a backup does."""
    if parent is None:
        return False
    node = parent.node(path)
    if node is None:
        return False
    same = identical(node, st) if st.st_nlink == 1 else same_content(node, st)
    return same and repo.reusable(node.content)


class ShardsMissing(RepositoryError):
    """A commit before every shard has its receipt."""


@dataclass
class CommitResult:
    backup: BackupResult | None  # None: the run was committed before (``snapshot``)
    snapshot: Snapshot
    receipts: list[Receipt] = field(default_factory=list)
    from_shards: int = 0  # files whose chunks came from the shards' receipts

    @property
    def already(self) -> bool:
        return self.backup is None


def commit_run(
    repo: Repository,
    run: str,
    *,
    plan: str | None = None,
    placement: dict[str, Any] | None = None,
    context: RunContext | None = None,
) -> CommitResult:
    """Make the run's snapshot from its receipts (files changed since, or not read by a
    shard, are read here). Refuses while a shard has no receipt; a run committed before
    returns its snapshot."""
    manifest = load_manifest(repo, run)
    snap = committed_snapshot(repo, manifest)
    if snap is not None:
        return CommitResult(None, snap)
    receipts = load_receipts(repo, manifest)
    missing = [i for i in range(manifest.count) if i not in receipts]
    if missing:
        shown = ",".join(str(i) for i in missing[:20]) + (",..." if len(missing) > 20 else "")
        raise ShardsMissing(
            f"run {run}: {len(missing)} of {manifest.count} shard(s) have no receipt "
            f"(shard(s) {shown}); nothing was committed",
            where=repo.storage.url,
            hint=f"run them again: `bcdr shard run --repo {repo.storage.url} --run {run} "
            f"--index N` for each (a Slurm array: sbatch --array={shown} ...)",
        )
    ordered = [receipts[i] for i in range(manifest.count)]
    prepared = PreparedFiles(ordered, manifest.region)
    request = BackupRequest(
        paths=tuple(manifest.paths),
        job=manifest.job,
        excludes=tuple(manifest.excludes),
        force_read=manifest.force_read,
        one_file_system=manifest.one_file_system,
        tags=tuple(manifest.tags),
        plan=plan,
        placement=placement,
        context=context,
        prepared=prepared,
        shard_run=run,
        parent_id=manifest.parent,
        shard_bytes=(sum(r.bytes_read for r in ordered), sum(r.bytes_added for r in ordered)),
        shards=manifest.count,
        slurm_jobs=_slurm_jobs(ordered),
    )
    result = run_backup(repo, request)
    return CommitResult(result, result.snapshot, ordered, prepared.used)


def _slurm_jobs(receipts: list[Receipt]) -> tuple[str, ...]:
    """The Slurm array tasks that read the shards, then this commit's job (when run in
    one), for the evidence."""
    tasks = [r.slurm_job for r in receipts if r.slurm_job]
    own = os.environ.get("SLURM_JOB_ID")
    return (*tasks, own) if own else tuple(tasks)


# -- prune --------------------------------------------------------------------------------------

#: A run not committed this long after it was planned is abandoned: prune removes it (and its
#: chunks stay only where a snapshot needs them).
ABANDONED_AFTER = timedelta(days=7)


class ShardRuns:
    """The sharded runs of a repository as prune sees them. Not committed yet: the chunks
    their receipts name are kept (``held``; a commit may still build on them). Committed, or
    abandoned (planned more than ABANDONED_AFTER ago): their manifest and receipts are
    removed (``remove_finished``). A run that cannot be read is left alone."""

    def __init__(self, repo: Repository):
        self.repo = repo
        self.kept = 0
        self.problems: list[str] = []
        self._finished: dict[str, list[str]] = {}

    def held(self) -> list[bytes]:
        repo = self.repo
        runs = list_runs(repo)
        committed = {s.shard_run for s in repo.list_snapshots() if s.shard_run}
        now = repo.clock.now()
        ids: list[bytes] = []
        self.kept, self.problems, self._finished = 0, [], {}
        for run, infos in sorted(runs.items()):
            keys = [i.key for i in infos]
            if run in committed:
                self._finished[run] = keys
                continue
            try:
                manifest = load_manifest(repo, run)
                created = datetime.fromisoformat(manifest.created)
                if now - created > ABANDONED_AFTER:
                    self._finished[run] = keys
                    continue
                receipts = load_receipts(repo, manifest)
            except (BcdrError, ValueError) as exc:
                newest = max((i.modified for i in infos if i.modified), default=None)
                if newest is not None and now - newest > ABANDONED_AFTER:
                    self._finished[run] = keys
                else:
                    self.problems.append(f"sharded run {run} cannot be read ({exc}); left")
                continue
            self.kept += 1
            for receipt in receipts.values():
                for part in receipt.parts:
                    ids.extend(part.content)
        return ids

    def remove_finished(self, *, dry_run: bool) -> int:
        """Remove the runs the last ``held`` found committed or abandoned; how many."""
        if not dry_run:
            for keys in self._finished.values():
                # receipts first: a run without its manifest is never taken for a live one
                for key in sorted(keys, key=lambda k: k.endswith("/manifest")):
                    self.repo.storage.delete(key)
        return len(self._finished)


# -- the local executor -----------------------------------------------------------------------


@dataclass
class ShardOutcome:
    index: int
    code: int
    seconds: float
    error: str = ""
    output: str = ""  # what it printed (--json: its result)


#: Shards of a backup the local executor runs at once. One: each uses every core (its worker
#: processes), and a shard that runs after another finds the chunks the other stored, where two
#: at once would both compress and upload what their files share (docs/scale-out.md).
SHARDS_AT_ONCE = 1


def run_local(
    argv_for: Callable[[int], list[str]],
    count: int,
    *,
    parallel: int | None = None,
    env: dict[str, str] | None = None,
    on_done: Callable[[ShardOutcome], None] | None = None,
) -> list[ShardOutcome]:
    """Run ``bcdr ARGV_FOR(I)`` for every I in 0..count-1 as a process on this machine,
    ``parallel`` at a time (default: one per core). Returns each one's outcome (code 0:
    it succeeded)."""
    parallel = max(1, min(count, parallel or os.cpu_count() or 1))
    pending = list(range(count))
    running: dict[int, tuple[Child, float, IO[bytes], IO[bytes]]] = {}
    out: list[ShardOutcome] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                i = pending.pop(0)
                # files, not pipes: a child's long output never blocks it
                stdout: IO[bytes] = tempfile.TemporaryFile()
                stderr: IO[bytes] = tempfile.TemporaryFile()
                proc = _start(argv_for(i), env or {}, stdout, stderr)
                running[i] = (proc, time.monotonic(), stdout, stderr)
            done = [i for i, (p, *_) in running.items() if p.poll() is not None]
            if not done:
                time.sleep(0.05)
                continue
            for i in done:
                proc, t0, stdout, stderr = running.pop(i)
                texts = []
                for f in (stdout, stderr):
                    f.seek(0)
                    texts.append(f.read().decode(errors="replace"))
                    f.close()
                outcome = ShardOutcome(
                    i, proc.wait(), time.monotonic() - t0, texts[1].strip(), texts[0]
                )
                out.append(outcome)
                if on_done is not None:
                    on_done(outcome)
    finally:
        for proc, _, stdout, stderr in running.values():
            proc.terminate()
            proc.wait()
            stdout.close()
            stderr.close()
    return sorted(out, key=lambda o: o.index)


class Child(Protocol):
    """What :func:`run_local` needs of a child: subprocess.Popen, or a forked bcdr."""

    returncode: int | None

    def poll(self) -> int | None: ...
    def terminate(self) -> None: ...
    def wait(self) -> int: ...


class ForkedBcdr:
    """``bcdr ARGV`` in a child forked from this process: it has every module loaded already
    (a new interpreter spends about 0.4 s of CPU importing them), and opens the repository
    itself as any bcdr process does. Forked only while this process runs one thread (a
    thread holding a lock at the fork would leave the child that lock held forever)."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout: IO[bytes], stderr: IO[bytes]):
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        # The parent's objects go to the collector's permanent generation for the fork (as
        # bcdr/forked.py does): the child's collections never walk them, which would write
        # to, and so copy, every page holding one (the plan's parts, every module).
        gc.freeze()
        try:
            pid = os.fork()
        except BaseException:
            gc.unfreeze()
            raise
        if pid != 0:
            gc.unfreeze()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.dup2(stdout.fileno(), 1)
                os.dup2(stderr.fileno(), 2)
                os.environ.update(env)
                sys.argv = ["bcdr", *argv]
                runpy.run_module("bcdr", run_name="__main__")  # as `python -m bcdr` would
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except KeyboardInterrupt:
                code = 130
            except Exception:  # noqa: BLE001 - what a new interpreter would print, then exit 1
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def terminate(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _start(argv: list[str], env: dict[str, str], stdout: IO[bytes], stderr: IO[bytes]) -> Child:
    if hasattr(os, "fork") and threading.active_count() == 1:
        return ForkedBcdr(argv, env, stdout, stderr)
    return subprocess.Popen(
        [sys.executable, "-m", "bcdr", *argv],
        env={**os.environ, **env},
        stdout=stdout,
        stderr=stderr,
    )


def shard_argv(repo_args: list[str], run: str) -> Callable[[int], list[str]]:
    """``bcdr shard run`` of shard I, for :func:`run_local`."""
    return lambda i: ["shard", "run", "--run", run, "-q", *repo_args, "--index", str(i)]


# -- the Slurm executor -----------------------------------------------------------------------


def submit_slurm(
    repo_args: list[str],
    run: str,
    indexes: list[int],
    options: slurm.SlurmOptions,
    *,
    name: str,
    commit: bool = True,
    env: dict[str, str] | None = None,
) -> slurm.Submission:
    """The shards ``indexes`` of ``run`` as a Slurm job array, and (``commit``) its commit
    as a job that runs once they all succeeded."""
    return slurm.submit(
        run,
        indexes,
        ["shard", "run", "--run", run, "-q", *repo_args],
        ["shard", "commit", "--run", run, *repo_args] if commit else None,
        options,
        name=name,
        env=env,
    )


def missing_shards(repo: Repository, run: str) -> tuple[Manifest, list[int]]:
    """The run's manifest and the shards without a receipt."""
    manifest = load_manifest(repo, run)
    receipts = load_receipts(repo, manifest)
    return manifest, [i for i in range(manifest.count) if i not in receipts]


def committed_snapshot(repo: Repository, manifest: Manifest) -> Snapshot | None:
    for snap in repo.list_snapshots(manifest.job):
        if snap.shard_run == manifest.run:
            return snap
    return None


@dataclass
class ShardLine:
    index: int
    ok: bool  # its receipt is stored
    node: str
    slurm_job: str | None
    parts: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    state: str = "COMPLETED"


@dataclass
class SlurmReport:
    submission: slurm.Submission
    shards: list[ShardLine]
    failed: list[int]  # shards without a receipt (a task that failed, or never ran)
    snapshot: Snapshot | None
    commit_state: str
    files: int = 0

    def to_dict(self) -> dict[str, object]:
        sub = self.submission
        return {
            "run": sub.run,
            "array_job": sub.array or None,
            "commit_job": sub.commit,
            "commit_state": self.commit_state,
            "snapshot": self.snapshot.id if self.snapshot else None,
            "shards": [asdict(s) for s in self.shards],
            "failed": self.failed,
        }


def slurm_report(
    repo: Repository, run: str, sub: slurm.Submission, outcome: slurm.Outcome
) -> SlurmReport:
    """Per shard, what its receipt says (node, bytes, time) or how its task ended; the
    snapshot, if the commit made it. The receipts decide: a shard is done when its receipt
    is stored, whatever Slurm forgot."""
    manifest = load_manifest(repo, run)
    receipts = load_receipts(repo, manifest)
    shards: list[ShardLine] = []
    failed = []
    for i in range(manifest.count):
        r = receipts.get(i)
        task = outcome.tasks.get(i)
        if r is not None:
            shards.append(
                ShardLine(i, True, r.host, r.slurm_job, len(r.parts), r.bytes_read, r.seconds)
            )
            continue
        failed.append(i)
        state = task.state if task is not None else "not run"
        if task is not None and task.exit_code not in ("", "0:0"):
            state += f" (exit {task.exit_code})"
        elif task is not None and task.reason and task.reason != "None":
            state += f" ({task.reason})"
        job = f"{sub.array}_{i}" if sub.array and i in sub.indexes else None
        shards.append(ShardLine(i, False, task.node if task else "", job, state=state))
    snap = committed_snapshot(repo, manifest)
    commit_state = outcome.commit.state if outcome.commit else "gone"
    return SlurmReport(sub, shards, failed, snap, commit_state, manifest.files)


# -- a plan's scale_out ----------------------------------------------------------------------


#: How often a plan's run asks Slurm about its jobs (seconds).
SLURM_POLL = 2.0


def run_shards(
    repo: Repository,
    manifest: Manifest,
    repo_args: list[str],
    *,
    executor: str,
    options: slurm.SlurmOptions,
    env: dict[str, str] | None = None,
    name: str = "backup",
) -> list[str]:
    """Run every shard of ``manifest`` with ``executor`` and wait for them (a plan's run:
    the commit follows here, then retention and copies as after any backup). Raises
    ShardsMissing, naming the shards and how to finish the run, when one failed."""
    errors: dict[int, str] = {}
    if executor == "slurm":
        sub = submit_slurm(
            repo_args,
            manifest.run,
            list(range(manifest.count)),
            options,
            name=name,
            commit=False,
            env=env,
        )
        outcome = slurm.wait(sub, poll=SLURM_POLL)
        for i, task in outcome.tasks.items():
            if task.state != "COMPLETED":
                errors[i] = f"Slurm task {sub.array}_{i} {task.state}"
        jobs = [sub.array]
    else:
        argv = shard_argv(repo_args, manifest.run)
        for o in run_local(argv, manifest.count, parallel=SHARDS_AT_ONCE, env=env):
            if o.code != 0:
                errors[o.index] = o.error.splitlines()[-1] if o.error else f"exit {o.code}"
        jobs = []
    _, missing = missing_shards(repo, manifest.run)
    if missing:
        first = missing[0]
        why = errors.get(first, "no receipt")
        raise ShardsMissing(
            f"{len(missing)} of {manifest.count} shard(s) of run {manifest.run} failed "
            f"({slurm.array_spec(missing)}; shard {first}: {why}); nothing was committed",
            where=repo.storage.url,
            hint=f"run them again and commit: bcdr shard submit {' '.join(repo_args)} --run "
            f"{manifest.run} --wait (Slurm), or bcdr shard run ... --index N and bcdr shard "
            "commit; else the job's next run starts anew and reuses what the shards stored",
        )
    return jobs


def describe_manifest(manifest: Manifest) -> str:
    sizes = manifest.sizes()
    unchanged = (
        f", {manifest.unchanged} unchanged since the parent "
        f"({human_bytes(manifest.unchanged_bytes)}, in no shard)"
        if manifest.unchanged
        else ""
    )
    return (
        f"run {manifest.run}: {manifest.count} shard(s), {manifest.files} files, "
        f"{human_bytes(manifest.bytes)}{unchanged} (largest shard "
        f"{human_bytes(max(sizes, default=0))})"
    )
