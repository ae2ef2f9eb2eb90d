"""``bcdr restore --shards N``: one restore spread over several processes or Slurm nodes, for
the RTO of a large snapshot (docs/scale-out.md).

Part I of N (``bcdr restore SNAP --target T --part I/N``) restores the regular files of the
I-th of N runs of files of about equal bytes, in the snapshot's walk order (decided from the
snapshot alone, so every part decides alike), each verified and renamed into place as a
plain restore does; the parts write into the same target meanwhile. Then the finish
(``--finish``) makes the links and hardlinks, applies the folders' metadata, and checks that
every file is in place. A part that failed is run again on its own; nothing is half-written
under a file's name, whatever stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bcdr.actions import slurm
from bcdr.actions.common import open_repo
from bcdr.actions.restore import RestoreResult, check_target, restore
from bcdr.actions.shard import MAX_SHARDS, ShardOutcome, run_local
from bcdr.archive.availability import require_online
from bcdr.clock import Clock
from bcdr.errors import UsageError
from bcdr.repository.bounds import check_snapshot_size
from bcdr.repository.locks import READ, read_wait
from bcdr.repository.snapshot import Snapshot
from bcdr.storage.url import StorageSpec


@dataclass
class PartResult:
    index: int
    ok: bool
    seconds: float
    files: int = 0
    bytes_written: int = 0
    files_read_back: int = 0  # --verify: the files it wrote, read back as the snapshot has them
    error: str = ""
    node: str = ""
    xattrs_skipped: dict[str, int] = field(default_factory=dict)  # name -> paths not set


@dataclass
class ShardedRestore:
    snapshot: Snapshot
    target: str
    parts: list[PartResult] = field(default_factory=list)
    finish: RestoreResult | None = None
    seconds: float = 0.0  # from the start to the finish's end: the restore's RTO
    submission: slurm.Submission | None = None

    @property
    def failed(self) -> list[int]:
        return [p.index for p in self.parts if not p.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and self.finish is not None and self.finish.ok

    @property
    def xattrs_skipped(self) -> dict[str, int]:
        """Extended attributes not set, over every part and the finish (name -> paths)."""
        out: dict[str, int] = {}
        sources = [p.xattrs_skipped for p in self.parts]
        if self.finish is not None:
            sources.append(self.finish.stats.xattrs_skipped)
        for counts in sources:
            for name, n in counts.items():
                out[name] = out.get(name, 0) + n
        return out

    def to_dict(self) -> dict[str, object]:
        sub = self.submission
        return {
            "snapshot": self.snapshot.id,
            "target": self.target,
            "ok": self.ok,
            "seconds": round(self.seconds, 3),
            "parts": [vars(p) for p in self.parts],
            "failed": self.failed,
            "xattrs_skipped": self.xattrs_skipped,
            "finish": self.finish.to_dict() if self.finish else None,
            "array_job": sub.array if sub else None,
            "finish_job": (sub.commit or None) if sub else None,
        }


@dataclass(frozen=True)
class RestoreOptions:
    includes: tuple[str, ...] = ()
    direct: bool = True
    setid: bool = False
    verify: bool = False  # each part reads back the files it wrote

    def argv(self) -> list[str]:
        out: list[str] = []
        for pattern in self.includes:
            out += ["--include", pattern]
        if not self.direct:
            out.append("--buffered")
        if self.setid:
            out.append("--keep-setuid")
        if self.verify:
            out.append("--verify")
        return out


def prepare(
    spec: StorageSpec,
    ref: str,
    target: str,
    *,
    job: str | None,
    overwrite: bool,
    shards: int,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> Snapshot:
    """Resolve the snapshot (every part restores the same one, ``latest`` or not) and check,
    before anything starts, what a plain restore checks first."""
    if not 1 <= shards <= MAX_SHARDS:
        raise UsageError(f"--shards must be from 1 to {MAX_SHARDS}, not {shards}")
    check_target(target, overwrite)
    repo = open_repo(spec, clock=clock, env=env)
    try:
        with repo.lock(READ, wait=read_wait()):
            snap = repo.resolve_snapshot(ref, job)
            tree = bytes.fromhex(snap.tree)
            repo.load_index()
            check_snapshot_size(repo, tree, f"snapshot {snap.short_id}")
            require_online(repo, tree, snap.short_id, None)
    finally:
        repo.close()
    return snap


def part_argv(spec: StorageSpec, snap: Snapshot, target: str, options: RestoreOptions) -> list[str]:
    """``bcdr restore`` of one part, without its ``--part I/N``."""
    return ["restore", snap.id, "--target", target, "-q", "--json", *spec.argv(), *options.argv()]


def finish_argv(
    spec: StorageSpec, snap: Snapshot, target: str, options: RestoreOptions
) -> list[str]:
    return ["restore", snap.id, "--target", target, "--finish", *spec.argv(), *options.argv()]


def restore_local(
    spec: StorageSpec,
    snap: Snapshot,
    target: str,
    shards: int,
    options: RestoreOptions,
    *,
    env: dict[str, str] | None = None,
    on_part: Callable[[PartResult], None] | None = None,
) -> ShardedRestore:
    """Every part as a process on this machine, then the finish here."""
    started = time.monotonic()
    result = ShardedRestore(snap, target)
    base = part_argv(spec, snap, target, options)

    def done(outcome: ShardOutcome) -> None:
        part = _part_result(outcome)
        result.parts.append(part)
        if on_part is not None:
            on_part(part)

    run_local(lambda i: [*base, "--part", f"{i}/{shards}"], shards, env=env, on_done=done)
    result.parts.sort(key=lambda p: p.index)
    if not result.failed:
        result.finish = finish(spec, snap, target, options, env=env)
    result.seconds = time.monotonic() - started
    return result


def _part_result(outcome: ShardOutcome) -> PartResult:
    part = PartResult(outcome.index, outcome.code == 0, round(outcome.seconds, 3))
    try:
        doc = json.loads(outcome.output) if outcome.output.strip() else {}
    except ValueError:
        doc = {}
    if isinstance(doc, dict) and "files" in doc:
        part.files, part.bytes_written = int(doc["files"]), int(doc.get("bytes_written", 0))
        part.files_read_back = int(doc.get("files_read_back", 0))
        skipped = doc.get("xattrs_skipped") or {}
        if isinstance(skipped, dict):
            part.xattrs_skipped = {str(k): int(v) for k, v in skipped.items()}
        errors = doc.get("errors") or []
        if errors:
            part.ok = False
            part.error = f"{len(errors)} file(s) failed, first {errors[0]['path']}: " + str(
                errors[0]["error"]
            )
    if not part.ok and not part.error:
        lines = outcome.error.splitlines()
        part.error = lines[-1] if lines else f"exit {outcome.code}"
    return part


def finish(
    spec: StorageSpec,
    snap: Snapshot,
    target: str,
    options: RestoreOptions,
    *,
    env: Mapping[str, str] | None = None,
) -> RestoreResult:
    return restore(
        spec,
        snap.id,
        target,
        includes=options.includes,
        overwrite=True,
        direct=options.direct,
        setid=options.setid,
        finish=True,
        env=env,
    )


def submit_slurm(
    spec: StorageSpec,
    snap: Snapshot,
    target: str,
    shards: int,
    options: RestoreOptions,
    sbatch: slurm.SlurmOptions,
    *,
    finish_job: bool,
    indexes: list[int] | None = None,
    env: dict[str, str] | None = None,
) -> slurm.Submission:
    """The parts as a Slurm job array; the finish as a job after it when ``finish_job``
    (else the caller finishes once it has waited)."""
    return slurm.submit(
        snap.id,
        range(shards) if indexes is None else indexes,
        part_argv(spec, snap, target, options),
        finish_argv(spec, snap, target, options) if finish_job else None,
        sbatch,
        name=f"restore-{snap.short_id}",
        task_suffix=f' --part "$SLURM_ARRAY_TASK_ID/{shards}"',
        env=env,
    )


def slurm_parts(sub: slurm.Submission, outcome: slurm.Outcome, shards: int) -> list[PartResult]:
    """Per part, how its array task ended (a part's own result is in its Slurm output)."""
    out = []
    for i in range(shards):
        task = outcome.tasks.get(i)
        if i not in sub.indexes:
            continue
        ok = task is not None and task.state == "COMPLETED"
        state = task.state if task is not None else "unknown (Slurm forgot the task)"
        if task is not None and task.exit_code not in ("", "0:0"):
            state += f" (exit {task.exit_code})"
        out.append(
            PartResult(i, ok, 0.0, error="" if ok else state, node=task.node if task else "")
        )
    return out
