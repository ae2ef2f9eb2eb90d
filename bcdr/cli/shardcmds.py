"""``bcdr shard plan|run|commit``, and the local executor of ``bcdr backup --shards N``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import repo_argv, storage_spec
from bcdr.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, UsageError

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import common as common_action
    from bcdr.actions import shard as shard_action
else:
    common_action = lazy("bcdr.actions.common")
    shard_action = lazy("bcdr.actions.shard")

Command = Callable[..., argparse.ArgumentParser]


def cmd_shard(args: argparse.Namespace) -> int:
    repo = common_action.open_repo(storage_spec(args))
    try:
        if args.what == "plan":
            if not args.paths or not args.shards:
                raise UsageError("`shard plan` takes --shards N and the paths to back up")
            manifest = shard_action.plan_run(
                repo, tuple(args.paths), args.shards, job=args.job, excludes=tuple(args.exclude)
            )
            if args.json:
                render.emit_json(
                    {
                        "run": manifest.run,
                        "shards": manifest.count,
                        "files": manifest.files,
                        "bytes": manifest.bytes,
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
                render.out(
                    f"shard {receipt.index} of run {receipt.run}: {len(receipt.parts)} part(s) "
                    f"read, {receipt.skipped} unchanged, {len(receipt.failed)} left to the "
                    f"commit; {receipt.bytes_read} bytes read in {receipt.seconds:.2f}s"
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
        for r in result.receipts:
            sys.stderr.write(
                f"  shard {r.index} on {r.host}: {len(r.parts)} part(s), "
                f"{r.bytes_read} bytes read in {r.seconds:.2f}s\n"
            )
    backup = result.backup
    return EXIT_PARTIAL if backup.partial or backup.evidence_error else EXIT_OK


def sharded_backup(args: argparse.Namespace) -> int:
    """``bcdr backup --shards N --executor local``: plan, run each shard as a process here,
    commit."""
    if args.tag or args.force_read:
        raise UsageError("--tag and --force-read do not work with --shards yet")
    if args.executor != "local":
        raise UsageError(
            f"--executor {args.executor} is not available in this version of bcdr",
            hint="use --executor local, or drive `bcdr shard plan|run|commit` from your engine",
        )
    repo = common_action.open_repo(storage_spec(args))
    try:
        manifest = shard_action.plan_run(
            repo, tuple(args.paths), args.shards, job=args.job, excludes=tuple(args.exclude)
        )
    finally:
        repo.close()
    if not args.quiet and not args.json:
        sys.stderr.write(shard_action.describe_manifest(manifest) + "\n")
    outcomes = shard_action.run_local(repo_argv(args), manifest.run, manifest.count)
    failed = [o for o in outcomes if o.code != 0]
    if failed:
        for o in failed:
            last = o.error.splitlines()[-1] if o.error else f"exit {o.code}"
            sys.stderr.write(f"shard {o.index} failed: {last}\n")
        indexes = ",".join(str(o.index) for o in failed)
        sys.stderr.write(
            f"bcdr: error: {len(failed)} of {manifest.count} shard(s) failed; nothing was "
            f"committed\nhint: run them again with `bcdr shard run --run {manifest.run} "
            f"--index N` (N in {indexes}), then `bcdr shard commit --run {manifest.run}`\n"
        )
        return EXIT_FAILED
    repo = common_action.open_repo(storage_spec(args))
    try:
        return _committed(args, shard_action.commit_run(repo, manifest.run))
    finally:
        repo.close()


def add_shard_commands(command: Command) -> None:
    p = command(
        "shard",
        cmd_shard,
        "One backup spread over several processes or machines (docs/scale-out.md): `plan` "
        "walks the source and stores a run of N shards, printing its id; `run --index I` "
        "backs up shard I (anywhere the source and the repository are reachable); `commit` "
        "makes the snapshot once every shard has run. `bcdr backup --shards N` does all three "
        "on this machine.",
        epilog="Example: bcdr shard plan --repo R --job ckpt --shards 8 /lustre/ckpt; then "
        "on 8 nodes bcdr shard run --repo R --run ID --index $SLURM_ARRAY_TASK_ID; then "
        "bcdr shard commit --repo R --run ID.",
    )
    p.add_argument("what", choices=("plan", "run", "commit"), help="the step")
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
    p.add_argument("--run", metavar="ID", help="run, commit: the run `plan` made")
    p.add_argument("--index", type=int, metavar="I", help="run: which shard (0 to N-1)")
