"""``bcdr shard plan|run|commit``, and the local executor of ``bcdr backup --shards N``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import repo_argv, storage_spec
from bcdr.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, UsageError
from bcdr.units import human_bytes

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import common as common_action
    from bcdr.actions import shard as shard_action
    from bcdr.actions import shardrestore as restore_parts
    from bcdr.actions import slurm as slurm_action
else:
    common_action = lazy("bcdr.actions.common")
    shard_action = lazy("bcdr.actions.shard")
    slurm_action = lazy("bcdr.actions.slurm")
    restore_parts = lazy("bcdr.actions.shardrestore")

Command = Callable[..., argparse.ArgumentParser]


def cmd_shard(args: argparse.Namespace) -> int:
    if args.what == "submit":
        if args.run is None:
            raise UsageError("`shard submit` takes --run ID (printed by `shard plan`)")
        return _shard_submit(args, args.run)
    repo = common_action.open_repo(storage_spec(args))
    try:
        if args.what == "plan":
            if not args.paths or not args.shards:
                raise UsageError("`shard plan` takes --shards N and the paths to back up")
            manifest = shard_action.plan_run(
                repo,
                tuple(args.paths),
                args.shards,
                job=args.job,
                excludes=tuple(args.exclude),
                tags=tuple(args.tag),
                force_read=args.force_read,
                one_file_system=args.one_file_system,
            )
            if args.json:
                render.emit_json(
                    {
                        "run": manifest.run,
                        "shards": manifest.count,
                        "files": manifest.files,
                        "bytes": manifest.bytes,
                        "unchanged_files": manifest.unchanged,
                        "unchanged_bytes": manifest.unchanged_bytes,
                    }
                )
            else:
                render.out(shard_action.describe_manifest(manifest))
            return EXIT_OK
        if args.run is None:
            raise UsageError(f"`shard {args.what}` takes --run ID (printed by `shard plan`)")
        if args.what == "run":
            if args.index is None:
                raise UsageError("`shard run` takes --index I (0 to shards - 1)")
            receipt = shard_action.run_shard(repo, args.run, args.index)
            if args.json:
                render.emit_json(
                    {
                        "run": receipt.run,
                        "index": receipt.index,
                        "parts": len(receipt.parts),
                        "skipped": receipt.skipped,
                        "failed": receipt.failed,
                        "bytes_read": receipt.bytes_read,
                        "bytes_added": receipt.bytes_added,
                        "seconds": receipt.seconds,
                    }
                )
            elif not args.quiet:
                # files unchanged since the parent are left out by the plan (`shard plan` says
                # how many); only a run planned by an older bcdr has its shards skip them
                unchanged = f", {receipt.skipped} unchanged" if receipt.skipped else ""
                render.out(
                    f"shard {receipt.index} of run {receipt.run}: {len(receipt.parts)} part(s) "
                    f"read{unchanged}, {len(receipt.failed)} left to the commit; "
                    f"{receipt.bytes_read} bytes read in {receipt.seconds:.2f}s"
                )
            return EXIT_OK
        result = shard_action.commit_run(repo, args.run)
        return _committed(args, result)
    finally:
        repo.close()


def _committed(args: argparse.Namespace, result: shard_action.CommitResult) -> int:
    if result.backup is None:
        if args.json:
            render.emit_json({"snapshot": result.snapshot.id, "already_committed": True})
        else:
            render.out(f"run already committed as snapshot {result.snapshot.short_id}")
        return EXIT_OK
    if args.json:
        doc = result.backup.to_dict()
        doc["shards"] = [
            {
                "index": r.index,
                "host": r.host,
                "parts": len(r.parts),
                "bytes_read": r.bytes_read,
                "seconds": r.seconds,
            }
            for r in result.receipts
        ]
        doc["files_from_shards"] = result.from_shards
        render.emit_json(doc)
    else:
        render.backup_text(result.backup)
        for r in result.receipts if not args.quiet else ():
            sys.stderr.write(
                f"  shard {r.index} on {r.host}: {len(r.parts)} part(s), "
                f"{human_bytes(r.bytes_read)} read in {r.seconds:.2f}s\n"
            )
    backup = result.backup
    return EXIT_PARTIAL if backup.partial or backup.evidence_error else EXIT_OK


def slurm_options(args: argparse.Namespace) -> slurm_action.SlurmOptions:
    return slurm_action.SlurmOptions(
        partition=args.slurm_partition,
        account=args.slurm_account,
        time_limit=args.slurm_time,
        cpus_per_task=args.slurm_cpus_per_task,
        output=args.slurm_output,
        extra_args=tuple(args.slurm_arg),
    )


def sharded_backup(args: argparse.Namespace) -> int:
    """``bcdr backup --shards N``: plan, run each shard (as processes here, or as a Slurm job
    array), commit."""
    if args.wait and args.executor != "slurm":
        raise UsageError("--wait goes with --executor slurm (the local executor always waits)")
    repo = common_action.open_repo(storage_spec(args))
    try:  # open once: the plan, then (after the shards) the commit
        manifest = shard_action.plan_run(
            repo,
            tuple(args.paths),
            args.shards,
            job=args.job,
            excludes=tuple(args.exclude),
            tags=tuple(args.tag),
            force_read=args.force_read,
            one_file_system=args.one_file_system,
        )
        if not args.quiet and not args.json:
            sys.stderr.write(shard_action.describe_manifest(manifest) + "\n")
        if args.executor == "slurm":
            return _submit(args, manifest.run, list(range(manifest.count)), args.job or "backup")
        outcomes = shard_action.run_local(
            shard_action.shard_argv(repo_argv(args), manifest.run),
            manifest.count,
            parallel=shard_action.SHARDS_AT_ONCE,
        )
        failed = [o for o in outcomes if o.code != 0]
        if not failed:
            return _committed(args, shard_action.commit_run(repo, manifest.run))
    finally:
        repo.close()
    for o in failed:
        last = o.error.splitlines()[-1] if o.error else f"exit {o.code}"
        sys.stderr.write(f"shard {o.index} failed: {last}\n")
    indexes = ",".join(str(o.index) for o in failed)
    where = shlex.join(repo_argv(args))
    sys.stderr.write(
        f"bcdr: error: {len(failed)} of {manifest.count} shard(s) failed; nothing was "
        f"committed\nhint: run them again with `bcdr shard run {where} --run {manifest.run} "
        f"--index N` (N in {indexes}), then `bcdr shard commit {where} --run {manifest.run}`\n"
    )
    return EXIT_FAILED


def _submit(args: argparse.Namespace, run: str, indexes: list[int], name: str) -> int:
    """Submit the shards ``indexes`` of ``run`` and its commit to Slurm; with --wait, follow
    them and report."""
    sub = shard_action.submit_slurm(repo_argv(args), run, indexes, slurm_options(args), name=name)
    if args.json and not args.wait:
        render.emit_json({"run": run, "array_job": sub.array or None, "commit_job": sub.commit})
        return EXIT_OK
    if not args.quiet:
        shown = (
            f"array job {sub.array} (shards {slurm_action.array_spec(sub.indexes)}), "
            if (sub.array)
            else ""
        )
        sys.stderr.write(f"submitted run {run} to Slurm: {shown}commit job {sub.commit}\n")
    if not args.wait:
        if not args.quiet and not args.json:
            render.out(
                f"{sub.array or sub.commit}: follow with `squeue -j {','.join(sub.jobs)}`; "
                f"the snapshot is committed by job {sub.commit}"
            )
        return EXIT_OK
    outcome = slurm_action.wait(sub, poll=SLURM_POLL)
    repo = common_action.open_repo(storage_spec(args))
    try:
        report = shard_action.slurm_report(repo, run, sub, outcome)
    finally:
        repo.close()
    return _reported(args, report)


#: How often --wait asks Slurm (seconds).
SLURM_POLL = 1.0


def _reported(args: argparse.Namespace, report: shard_action.SlurmReport) -> int:
    sub = report.submission
    if args.json:
        render.emit_json(report.to_dict())
    else:
        for s in report.shards:
            where = f" on {s.node}" if s.node else ""
            job = f" (job {s.slurm_job})" if s.slurm_job else ""
            if s.ok:
                sys.stderr.write(
                    f"  shard {s.index}{where}{job}: {s.parts} part(s), "
                    f"{human_bytes(s.bytes_read)} read in {s.seconds:.2f}s\n"
                )
            else:
                sys.stderr.write(f"  shard {s.index}{where}{job}: {s.state}\n")
        if report.snapshot is not None:
            render.out(
                f"snapshot {report.snapshot.short_id} committed by Slurm job {sub.commit} "
                f"({report.files} files)"
            )
    if report.snapshot is not None:
        return EXIT_OK
    if report.failed:
        indexes = slurm_action.array_spec(report.failed)
        sys.stderr.write(
            f"bcdr: error: {len(report.failed)} shard(s) of run {sub.run} failed ({indexes}); "
            f"nothing was committed\nhint: run just them again: bcdr shard submit "
            f"{shlex.join(repo_argv(args))} --run {sub.run} --indexes {indexes} --wait\n"
        )
    else:
        sys.stderr.write(
            f"bcdr: error: the commit job {sub.commit} ended {report.commit_state} without a "
            f"snapshot; see its output (Slurm's slurm-{sub.commit}.out by default)\n"
            f"hint: commit here: bcdr shard commit {shlex.join(repo_argv(args))} "
            f"--run {sub.run}\n"
        )
    return EXIT_FAILED


def _shard_submit(args: argparse.Namespace, repo_run: str) -> int:
    """``bcdr shard submit``: the shards without a receipt (or --indexes) and the commit."""
    repo = common_action.open_repo(storage_spec(args))
    try:
        manifest, missing = shard_action.missing_shards(repo, repo_run)
    finally:
        repo.close()
    indexes = missing if args.indexes is None else _indexes(args.indexes, manifest.count)
    return _submit(args, repo_run, indexes, manifest.job or "backup")


def _indexes(text: str, count: int) -> list[int]:
    out: set[int] = set()
    try:
        for part in text.split(","):
            a, _, b = part.strip().partition("-")
            out.update(range(int(a), int(b or a) + 1))
    except ValueError:
        raise UsageError(f"--indexes {text!r}: give shard numbers and ranges, e.g. 2,5-7") from None
    wrong = sorted(i for i in out if not 0 <= i < count)
    if wrong:
        raise UsageError(f"--indexes: the run has shards 0 to {count - 1}, not {wrong[0]}")
    return sorted(out)


def sharded_restore(args: argparse.Namespace) -> int:
    """``bcdr restore --shards N``: the parts as processes here or a Slurm array, then the
    finish (here; a job after the array when Slurm runs it without --wait)."""
    if args.wait and args.executor != "slurm":
        raise UsageError("--wait goes with --executor slurm (the local executor always waits)")
    spec = storage_spec(args)
    options = restore_parts.RestoreOptions(
        tuple(args.include), direct=not args.buffered, setid=args.keep_setuid, verify=args.verify
    )
    target = os.path.abspath(args.target)
    started = time.monotonic()
    snap = restore_parts.prepare(
        spec, args.snapshot, target, job=args.job, overwrite=args.overwrite, shards=args.shards
    )
    if args.executor == "local":
        result = restore_parts.restore_local(spec, snap, target, args.shards, options)
    else:
        sub = restore_parts.submit_slurm(
            spec, snap, target, args.shards, options, slurm_options(args), finish_job=not args.wait
        )
        if not args.wait:
            if args.json:
                render.emit_json(
                    {"snapshot": snap.id, "array_job": sub.array, "finish_job": sub.commit}
                )
            elif not args.quiet:
                render.out(
                    f"submitted the restore of snapshot {snap.short_id} to Slurm: array job "
                    f"{sub.array} ({args.shards} parts), finish job {sub.commit}"
                )
            return EXIT_OK
        outcome = slurm_action.wait(sub, poll=SLURM_POLL)
        result = restore_parts.ShardedRestore(
            snap, target, restore_parts.slurm_parts(sub, outcome, args.shards), submission=sub
        )
        if not result.failed:
            result.finish = restore_parts.finish(spec, snap, target, options)
    result.seconds = time.monotonic() - started
    return _restored(args, result, options)


def _restored(
    args: argparse.Namespace,
    result: restore_parts.ShardedRestore,
    options: restore_parts.RestoreOptions,
) -> int:
    if args.json:
        render.emit_json(result.to_dict())
    else:
        for p in result.parts:
            where = f" on {p.node}" if p.node else ""
            if p.ok:
                checked = f", {p.files_read_back} read back" if options.verify else ""
                sys.stderr.write(
                    f"  part {p.index}{where}: {p.files} file(s), "
                    f"{human_bytes(p.bytes_written)} written{checked} in {p.seconds:.2f}s\n"
                )
            else:
                sys.stderr.write(f"  part {p.index}{where}: failed: {p.error}\n")
        if result.finish is not None:
            # one warning for every part's extended attributes, not the finish's alone
            stats = dataclasses.replace(result.finish.stats, xattrs_skipped=result.xattrs_skipped)
            render.restore_text(dataclasses.replace(result.finish, stats=stats))
            render.out(
                f"restored over {len(result.parts)} part(s) in {result.seconds:.2f}s "
                "(until every file was in place and verified)"
            )
    if result.failed:
        snap, n = result.snapshot, len(result.parts)
        repo = shlex.join(repo_argv(args) + options.argv())
        first = result.failed[0]
        sys.stderr.write(
            f"bcdr: error: {len(result.failed)} of {n} part(s) failed "
            f"({slurm_action.array_spec(result.failed)}); the restore is not finished\n"
            f"hint: run each again (any host that mounts the target), e.g. bcdr restore "
            f"{snap.id} --target {shlex.quote(result.target)} --part {first}/{n} {repo}; then "
            f"bcdr restore {snap.id} --target {shlex.quote(result.target)} --finish {repo}\n"
        )
        return EXIT_FAILED
    return EXIT_OK if result.ok else EXIT_FAILED


def add_executor_options(p: argparse.ArgumentParser, what: str) -> None:
    """--executor, --wait and the sbatch settings, for ``backup --shards`` and friends."""
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help=f"with --shards: where {what} run (local: processes on this machine; slurm: "
        "a job array, and a job after it that finishes; needs sbatch here and the source, "
        "the target and a local repository on a filesystem every node mounts)",
    )
    add_slurm_options(p)


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Slurm (--executor slurm, shard submit)")
    g.add_argument(
        "--wait",
        action="store_true",
        help="wait for the Slurm jobs and report per shard (node, bytes, time); "
        "without it bcdr prints the job ids and returns",
    )
    g.add_argument("--slurm-partition", metavar="NAME", help="sbatch --partition")
    g.add_argument("--slurm-account", metavar="NAME", help="sbatch --account")
    g.add_argument("--slurm-time", metavar="LIMIT", help="sbatch --time, e.g. 4:00:00")
    g.add_argument("--slurm-cpus-per-task", type=int, metavar="N", help="sbatch --cpus-per-task")
    g.add_argument(
        "--slurm-output", metavar="PATTERN", help="sbatch --output (default: Slurm's, here)"
    )
    g.add_argument(
        "--slurm-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="another sbatch argument, e.g. --slurm-arg=--qos=backup; repeatable",
    )


def add_shard_commands(command: Command) -> None:
    p = command(
        "shard",
        cmd_shard,
        "One backup spread over several processes or machines (docs/scale-out.md): `plan` "
        "walks the source and stores a run of N shards, printing its id; `run --index I` "
        "backs up shard I (anywhere the source and the repository are reachable); `commit` "
        "makes the snapshot once every shard has run; `submit` sends the shards still "
        "without a receipt (or --indexes) and the commit to Slurm. `bcdr backup --shards N` "
        "does it all, on this machine or through Slurm.",
        epilog="Examples: bcdr shard plan --repo R --job ckpt --shards 8 /lustre/ckpt; then "
        "on 8 nodes bcdr shard run --repo R --run ID --index $SLURM_ARRAY_TASK_ID; then "
        "bcdr shard commit --repo R --run ID. After a failed array task: bcdr shard submit "
        "--repo R --run ID --wait (re-runs only the shards without a receipt, then commits).",
    )
    p.add_argument("what", choices=("plan", "run", "commit", "submit"), help="the step")
    p.add_argument("paths", nargs="*", metavar="PATH", help="plan: what to back up")
    p.add_argument("--shards", type=int, metavar="N", help="plan: how many shards")
    p.add_argument("--job", metavar="NAME", help="plan: the job name of the snapshot")
    p.add_argument(
        "--exclude",
        "-e",
        action="append",
        default=[],
        metavar="PATTERN",
        help="plan: skip matching paths; repeatable",
    )
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="plan: tag it")
    p.add_argument(
        "--force-read", action="store_true", help="plan: read every file, unchanged or not"
    )
    p.add_argument(
        "--one-file-system",
        "-x",
        action="store_true",
        help="plan: do not descend into other filesystems mounted below the paths (their "
        "mount points are kept as empty folders)",
    )
    p.add_argument("--run", metavar="ID", help="run, commit, submit: the run `plan` made")
    p.add_argument("--index", type=int, metavar="I", help="run: which shard (0 to N-1)")
    p.add_argument(
        "--indexes",
        metavar="LIST",
        help="submit: the shards to run, e.g. 2,5-7 (default: those without a receipt)",
    )
    add_slurm_options(p)
