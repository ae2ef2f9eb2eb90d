"""The ``bcdr`` command: parse arguments, call one action, render its result.

This is the only place that maps errors to exit codes (docs/exit-codes.md):
0 ok, 1 failed, 2 usage or bad input, 3 partial (some files skipped), 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from bcdr import __version__, retrybudget
from bcdr.actions.keyahead import derive_key_ahead
from bcdr.cli import examples, render
from bcdr.cli.browsecmds import add_browse_commands
from bcdr.cli.completioncmds import add_completion_commands
from bcdr.cli.diskcmds import add_disk_commands
from bcdr.cli.drillcmds import add_drill_commands
from bcdr.cli.evidencecmds import add_evidence_commands
from bcdr.cli.holdcmds import add_hold_commands
from bcdr.cli.keycmds import add_key_commands
from bcdr.cli.lazy import lazy
from bcdr.cli.plancmds import add_plan_commands
from bcdr.cli.progress import Progress
from bcdr.cli.repaircmds import add_repair_commands
from bcdr.cli.repoargs import (
    add_from_repo_options,
    add_repo_options,
    from_storage_spec,
    named_repo,
    storage_spec,
)
from bcdr.cli.reportcmds import add_report_commands
from bcdr.cli.retentioncmds import add_retention_commands
from bcdr.cli.schedulecmds import add_schedule_commands
from bcdr.cli.shardcmds import (
    add_executor_options,
    add_shard_commands,
    cmd_shard,
    sharded_backup,
    sharded_restore,
)
from bcdr.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    BcdrError,
    Interrupted,
    UsageError,
)
from bcdr.interrupts import terminate_as_interrupt, was_interrupted
from bcdr.memory import tune_malloc
from bcdr.text import printable

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import backup as backup_action
    from bcdr.actions import check as check_action
    from bcdr.actions import copy as copy_action
    from bcdr.actions import init as init_action
    from bcdr.actions import restore as restore_action
    from bcdr.actions import snapshots as snapshots_action
    from bcdr.actions import unlock as unlock_action
else:
    backup_action = lazy("bcdr.actions.backup")
    check_action = lazy("bcdr.actions.check")
    copy_action = lazy("bcdr.actions.copy")
    init_action = lazy("bcdr.actions.init")
    restore_action = lazy("bcdr.actions.restore")
    snapshots_action = lazy("bcdr.actions.snapshots")
    unlock_action = lazy("bcdr.actions.unlock")

Handler = Callable[[argparse.Namespace], int]


def _progress(args: argparse.Namespace) -> Progress:
    return Progress(enabled=False if args.json or args.quiet else None)


def _seed() -> int:
    """A chunker seed of its own for a new repository (its boundaries are not guessable)."""
    import secrets

    return secrets.randbelow(2**31)


def cmd_init(args: argparse.Namespace) -> int:
    chunker = None
    if args.chunk_size:
        try:
            lo, avg, hi = (int(x) for x in args.chunk_size.split(","))
        except ValueError:
            raise UsageError(
                "--chunk-size takes MIN,AVG,MAX in bytes, e.g. 524288,524288,8388608"
            ) from None
        from bcdr.repository.chunker import ChunkerParams

        chunker = ChunkerParams(min_size=lo, avg_size=avg, max_size=hi)
    if args.region_size is not None:
        from dataclasses import replace

        from bcdr.repository.chunker import ChunkerParams

        chunker = replace(chunker or ChunkerParams(seed=_seed()), region=args.region_size)
    if args.copy_chunker_params:
        if not args.from_repo:
            raise UsageError(
                "--copy-chunker-params takes the parameters of the repository --from-repo names",
                hint="give --from-repo URL (its password in BCDR_FROM_PASSWORD(_FILE))",
            )
        if chunker is not None:
            raise UsageError("give --chunk-size and --region-size or --copy-chunker-params")
        chunker = init_action.chunker_of(
            from_storage_spec(args), copy_action.source_env(os.environ)
        )
    elif args.from_repo:
        raise UsageError(
            "--from-repo is used by init only with --copy-chunker-params",
            hint="add --copy-chunker-params to cut files as that repository does",
        )
    result = init_action.init_repository(
        storage_spec(args), encrypt=args.encrypt, chunker=chunker, pack_size=args.pack_size
    )
    if args.json:
        render.emit_json(result.to_dict())
    else:
        render.out(
            f"created repository {result.id[:8]} at {result.url} (encryption: {result.encryption})"
        )
    return EXIT_OK


def _lines_of(files: list[str], what: str) -> list[str]:
    """The lines of each file (``-``: stdin), without blank lines and ``#`` comments."""
    out = []
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{what} {name}: cannot read it ({exc})") from None
        out += [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return out


def cmd_backup(args: argparse.Namespace) -> int:
    args.paths = [*args.paths, *_lines_of(args.files_from, "--files-from")]
    args.exclude = [*args.exclude, *_lines_of(args.exclude_file, "--exclude-file")]
    if not args.paths:
        raise UsageError("nothing to back up", hint="give paths, or --files-from FILE listing them")
    if args.shards is not None:
        return sharded_backup(args)
    progress = _progress(args)
    progress.count_ahead(list(args.paths), tuple(args.exclude), args.one_file_system)
    request = backup_action.BackupRequest(
        paths=tuple(args.paths),
        job=args.job,
        excludes=tuple(args.exclude),
        force_read=args.force_read,
        tags=tuple(args.tag),
        one_file_system=args.one_file_system,
    )
    try:
        result = backup_action.backup(storage_spec(args), request, progress=progress.backup)
    except KeyboardInterrupt:  # before the commit: a later one is held and named
        raise Interrupted(
            "interrupted before a snapshot was committed; no snapshot was written",
            hint="run it again: packs already uploaded are reused, or collected by prune",
        ) from None
    finally:
        progress.done()
    if args.json:
        render.emit_json(result.to_dict())
    else:
        render.backup_text(result)
    return EXIT_PARTIAL if result.partial or result.evidence_error else EXIT_OK


def cmd_copy(args: argparse.Namespace) -> int:
    progress = _progress(args)
    refs = tuple(args.snapshots)
    if "all" in refs:
        if len(refs) > 1:
            raise UsageError("'all' copies every snapshot: give it alone, or name snapshots")
        refs = ()
    elif not refs:
        raise UsageError(
            "name the snapshots to copy",
            hint="give snapshot ids, 'latest' (with --job: that job's newest) or 'all'",
        )
    request = copy_action.CopyRequest(snapshots=refs, job=args.job)
    try:
        result = copy_action.copy(
            from_storage_spec(args),
            storage_spec(args),
            request,
            progress=progress.copy,
            source_env=copy_action.source_env(os.environ),
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "interrupted while copying; the snapshots already copied are complete",
            hint="run it again: it skips what the destination holds and finishes the rest",
        ) from None
    finally:
        progress.done()
    if args.json:
        render.emit_json(result.to_dict())
    else:
        render.copy_text(result)
    return EXIT_PARTIAL if result.evidence_error else EXIT_OK


def cmd_snapshots(args: argparse.Namespace) -> int:
    snaps, damaged = snapshots_action.list_snapshots(storage_spec(args), job=args.job)
    for name in damaged:
        sys.stderr.write(
            f"warning: snapshot {name[:12]} is damaged and was skipped; run `bcdr check`\n"
        )
    if args.json:
        render.emit_json([s.to_dict() for s in snaps])
    else:
        render.snapshots_text(snaps, args.job)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    snap, entries = snapshots_action.ls(storage_spec(args), args.snapshot, args.path, job=args.job)
    if args.json:
        render.emit_json({"snapshot": snap.id, "entries": [e.to_dict() for e in entries]})
    else:
        render.ls_text(snap, entries)
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    if args.shards is not None:
        if args.part is not None or args.finish:
            raise UsageError("--shards runs the parts and the finish itself; drop --part/--finish")
        return sharded_restore(args)
    if args.part is not None and args.finish:
        raise UsageError("--part and --finish are separate steps: run the parts, then --finish")
    if args.wait or args.executor != "local":
        raise UsageError("--executor and --wait go with --shards N")
    progress = _progress(args)
    try:
        result = restore_action.restore(
            storage_spec(args),
            args.snapshot,
            args.target,
            job=args.job,
            includes=tuple(args.include),
            overwrite=args.overwrite,
            direct=not args.buffered,
            setid=args.keep_setuid,
            progress=progress.restore,
            part=args.part,
            finish=args.finish,
            verify=args.verify,
        )
    finally:
        progress.done()
    if args.json:
        render.emit_json(result.to_dict())
    else:
        render.restore_text(result)
    return EXIT_OK if result.ok else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    progress = _progress(args)
    try:
        report = check_action.check(
            storage_spec(args),
            read_data=args.read_data,
            subset_percent=args.read_data_subset,
            progress=progress.check,
        )
    finally:
        progress.done()
    if args.json:
        render.emit_json(report.to_dict())
    else:
        render.check_text(report)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_unlock(args: argparse.Namespace) -> int:
    removed = unlock_action.unlock(storage_spec(args), remove_all=args.remove_all)
    if args.json:
        render.emit_json([vars(lock) for lock in removed])
    else:
        for lock in removed:
            render.out(f"removed {lock.describe()}")
        render.out(f"{len(removed)} lock(s) removed")
    return EXIT_OK


def _part(text: str) -> tuple[int, int]:
    """``I/N`` of ``restore --part``."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: I must be from 0 to N-1")
    return i, n


def _job_name(text: str) -> str:
    """A job name a backup records: shown in listings and reports, so one line of text."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a job needs a name")
    if not text.isprintable() or len(text) > 200:
        raise argparse.ArgumentTypeError(
            f"{text[:60]!r} is not a name: at most 200 characters, no control characters"
        )
    return text


def _duration(text: str) -> float:
    """``90s``, ``10m``, ``1h``: seconds (plan durations, without loading the plan model)."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*([smhdw])\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write a number and a unit, e.g. 90s, 10m, 1h"
        )
    return float(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m[2]])


def _percent(text: str) -> float:
    try:
        return float(text.rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that an epilog of examples keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Unbuilt:
    """What a command's parser-building code gets for a command that is not the one being
    run (see :func:`build_parser`): every attribute, call and item is accepted, ignored and
    is itself (``p.add_argument_group(...).add_argument(...)``, ``sub.choices["x"]``)."""

    def __getattr__(self, name: str) -> _Unbuilt:
        return self

    def __call__(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self

    def __getitem__(self, key: object) -> _Unbuilt:
        return self

    def __iter__(self) -> Iterator[_Unbuilt]:
        return iter(())


def build_parser(
    only: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and one parser per command. With ``only``, just that command's
    parser is built (when it is one): building all of them took 15-25 ms of every start,
    most of it argparse's help formatter and gettext per argument, and of every shard a
    sharded backup forks."""
    parser = argparse.ArgumentParser(
        prog="bcdr",
        description="Backup and disaster recovery for AI datasets and model checkpoints.",
        epilog="Exit codes: 0 ok, 1 failed, 2 usage error, 3 partial, 4 target missed (drills), "
        "130 interrupted. "
        "Passwords come from BCDR_PASSWORD or BCDR_PASSWORD_FILE, never from arguments.",
    )
    parser.add_argument("--version", action="version", version=f"bcdr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands: dict[str, argparse.ArgumentParser] = {}

    def command(
        name: str,
        handler: Handler,
        help_text: str,
        *,
        repo: bool = True,
        epilog: str | None = None,
    ) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return cast(argparse.ArgumentParser, _Unbuilt())
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog or examples.epilog(name),
            formatter_class=HelpFormatter,
        )
        if repo:
            add_repo_options(p)
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
        p.add_argument(
            "--retry-budget",
            type=_duration,
            metavar="DURATION",
            help="how long one call to Azure keeps retrying outages and throttling before it "
            "fails (default: the plan's retry_budget, $BCDR_RETRY_SECONDS, else 10m)",
        )
        p.set_defaults(handler=handler, command=name)
        commands[name] = p
        return p

    p = command("init", cmd_init, "Create a new repository.")
    p.add_argument(
        "--encrypt",
        action="store_true",
        help="encrypt with AES-256-GCM; password from BCDR_PASSWORD(_FILE)",
    )
    p.add_argument(
        "--chunk-size",
        metavar="MIN,AVG,MAX",
        help="advanced: FastCDC parameters in bytes (default 524288,524288,8388608; MIN "
        "64 B-1 MiB, AVG 256 B-4 MiB, MAX 1 KiB-16 MiB, MIN <= AVG <= MAX)",
    )
    p.add_argument(
        "--pack-size",
        type=int,
        metavar="BYTES",
        help="advanced: target pack size in bytes (default 16777216)",
    )
    p.add_argument(
        "--region-size",
        type=int,
        metavar="BYTES",
        help="advanced: files are also cut at every multiple of this many bytes, so that "
        "parts of one large file can be backed up by separate processes (default 1073741824; "
        "0: no such cuts; else a multiple of 4096 from 64 KiB to 1 TiB)",
    )
    p.add_argument(
        "--copy-chunker-params",
        action="store_true",
        help="cut files exactly as the repository --from-repo names does (sizes and seed): "
        "`bcdr copy` from it then copies chunks as they are instead of cutting files again",
    )
    add_from_repo_options(
        p, required=False, help_text="with --copy-chunker-params: the repository to match"
    )

    p = command(
        "backup",
        cmd_backup,
        "Back up paths into a new snapshot (incremental).",
        epilog="Examples: bcdr backup --repo /backups/main --job ckpt --exclude '*.tmp' "
        "/data/checkpoints. Read by 64 Slurm tasks, one snapshot: bcdr backup --repo "
        "azure://acct/backups --job ckpt --shards 64 --executor slurm --wait "
        "--slurm-partition backup /lustre/ckpt (docs/scale-out.md).",
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or folders to back up")
    p.add_argument(
        "--job",
        type=_job_name,
        metavar="NAME",
        help="job name; the parent is its newest snapshot",
    )
    p.add_argument(
        "--files-from",
        action="append",
        default=[],
        metavar="FILE",
        help="back up the paths listed in FILE, one per line (# comments; - reads stdin); "
        "with the PATH arguments; repeatable",
    )
    p.add_argument(
        "--exclude-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read --exclude patterns from FILE, one per line (# comments); repeatable",
    )
    p.add_argument(
        "--one-file-system",
        "-x",
        action="store_true",
        help="do not descend into other filesystems mounted below the paths (their mount "
        "points are kept as empty folders)",
    )
    p.add_argument(
        "--exclude",
        "-e",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip matching paths (glob: *.tmp, **/.cache/**); repeatable",
    )
    p.add_argument(
        "--force-read",
        action="store_true",
        help="read every file, even those unchanged since the parent snapshot",
    )
    p.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag the snapshot")
    p.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="spread the reading over N processes (each a part of the files, large files in "
        "parts too), committed as one snapshot: the tree any N gives is the same; see "
        "`bcdr shard --help` and docs/scale-out.md",
    )
    add_executor_options(p, "the shards")

    p = command(
        "copy",
        cmd_copy,
        "Copy snapshots from another repository into this one (--repo), with everything "
        "they need; what it holds already is skipped.",
        epilog="Example: BCDR_FROM_PASSWORD_FILE=/etc/bcdr/pw-westeu "
        "bcdr copy --from-repo /backups/main --repo azure://bcdrne/copies --job ckpt latest. "
        "A copied snapshot keeps its time, job and paths, and is the same recovery point: "
        "copying it again copies nothing. An interrupted copy is finished by running it again.",
    )
    add_from_repo_options(p)
    p.add_argument(
        "snapshots",
        nargs="*",
        metavar="SNAPSHOT",
        help="ids, unique id prefixes, 'latest' (of --job), or 'all' (every snapshot, of "
        "--job if given)",
    )
    p.add_argument("--job", metavar="NAME", help="only snapshots of this job")

    p = command("snapshots", cmd_snapshots, "List snapshots, oldest first.")
    p.add_argument("--job", metavar="NAME", help="only this job's snapshots")

    p = command("ls", cmd_ls, "List the files of a snapshot.")
    p.add_argument("snapshot", metavar="SNAPSHOT", help="id, unique id prefix, or 'latest'")
    p.add_argument("path", nargs="?", metavar="PATH", help="only entries at or under this path")
    p.add_argument("--job", metavar="NAME", help="with 'latest': newest snapshot of this job")

    p = command(
        "restore",
        cmd_restore,
        "Restore a snapshot into a folder, verifying every file, until it is on the disk.",
        epilog="Examples: bcdr restore --repo /backups/main latest --job ckpt --target "
        "/scratch/restore --include '/data/ckpt/step-900*'. Over 64 Slurm tasks into a "
        "shared folder: bcdr restore --repo azure://acct/backups latest --job ckpt --target "
        "/lustre/restore --shards 64 --executor slurm --wait (docs/scale-out.md).",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="id, unique id prefix, or 'latest'")
    p.add_argument("--target", "-t", required=True, metavar="DIR", help="folder to restore into")
    p.add_argument(
        "--include",
        "-i",
        action="append",
        default=[],
        metavar="PATTERN",
        help="restore only matching paths (and everything below them); repeatable",
    )
    p.add_argument("--overwrite", action="store_true", help="allow a non-empty target")
    p.add_argument(
        "--keep-setuid",
        action="store_true",
        help="restore setuid and setgid bits too (off by default: whoever can write to the "
        "repository must not be able to plant a setuid program)",
    )
    p.add_argument(
        "--buffered",
        action="store_true",
        help="write every file through the page cache. By default files of 8 MiB or more "
        "restored onto a local disk (ext4, XFS, Btrfs...) are written with O_DIRECT: at the "
        "disk's speed, without filling memory with dirty pages "
        "or evicting what the machine has cached. Buffered is faster for a restore that fits "
        "in memory onto a slow disk, and leaves the files cached for their next read",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="once every file is written and flushed, read each one back from the disk (not "
        "from the page cache) and compare its "
        "size and fingerprint with the snapshot's; one that differs is an error. Every chunk "
        "is checked against its id as it is written anyway; this checks what the disk holds, "
        "at the cost of reading everything again. With --shards each part reads back its own "
        "files",
    )
    p.add_argument("--job", metavar="NAME", help="with 'latest': newest snapshot of this job")
    g = p.add_argument_group("Scale-out (docs/scale-out.md)")
    g.add_argument(
        "--shards",
        type=int,
        metavar="N",
        help="spread the restore over N processes or Slurm tasks (each the files of one of N "
        "parts of about equal bytes, into the same target), then finish here",
    )
    g.add_argument(
        "--part",
        type=_part,
        metavar="I/N",
        help="(one step of --shards, for any engine) restore only part I of N's files; the "
        "target may hold the other parts' files",
    )
    g.add_argument(
        "--finish",
        action="store_true",
        help="(the last step) links, hardlinks and folder metadata, and a check that every "
        "file of the parts is in place",
    )
    add_executor_options(p, "the parts")

    p = command("check", cmd_check, "Check the repository; exit 1 and list problems if any.")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--read-data", action="store_true", help="read and verify all stored data")
    g.add_argument(
        "--read-data-subset",
        type=_percent,
        metavar="PERCENT",
        help="read and verify a random PERCENT of the packs",
    )

    add_retention_commands(command)
    add_plan_commands(command)
    add_disk_commands(command)
    add_drill_commands(command)
    add_evidence_commands(command)
    add_report_commands(command)
    add_repair_commands(command)
    add_hold_commands(command)
    add_browse_commands(command)
    add_completion_commands(command)
    add_key_commands(command)
    add_shard_commands(command)
    add_schedule_commands(command)

    p = command("unlock", cmd_unlock, "Remove stale locks left by processes that died.")
    p.add_argument(
        "--remove-all",
        action="store_true",
        help="remove every lock, even of live processes (only when certain)",
    )
    return parser, commands


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; a command's options and positionals may come in any order
    (``bcdr ls latest --job ckpt /data``), which plain subparsers do not allow."""
    if argv and argv[0] != "schedule":  # intermixed: no subcommands
        _, commands = build_parser(only=argv[0])
        if argv[0] in commands:
            return commands[argv[0]].parse_intermixed_args(argv[1:])
    parser, _ = build_parser()  # --help, --version, schedule, or not a command: all of them
    return parser.parse_args(argv)


def quiet_sdk_logging() -> None:
    """The Azure SDK logs its own view of failures (long, and at times with request URLs);
    bcdr reports each failure once, translated, so the SDK's loggers are silenced."""
    sdk = logging.getLogger("azure")
    sdk.addHandler(logging.NullHandler())
    sdk.propagate = False


def progress_logging(quiet: bool) -> None:
    """Progress of long Azure operations (``bcdr.*`` loggers) as lines on stderr."""
    logger = logging.getLogger("bcdr")
    logger.propagate = False
    logger.handlers.clear()
    if quiet:
        logger.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(sys.stderr)
    # on a terminal, over the progress line (it is drawn again with the next update)
    clear = "\r\033[K" if sys.stderr.isatty() else ""
    handler.setFormatter(logging.Formatter(clear + "  %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


#: Commands whose output is the answer asked for: --quiet leaves it (their progress goes).
ANSWERS = {
    *("snapshots", "ls", "status", "evidence", "report", "validate", "plan", "hold"),
    *("diff", "find", "dump", "stats", "completion"),
}

#: Freed memory each data command keeps for reuse (see bcdr/memory.py for the figures).
KEEP_FREED: dict[Handler, int] = {
    cmd_backup: 32 * 2**20,
    cmd_shard: 32 * 2**20,  # `shard run` is a backup's reading
    cmd_restore: 64 * 2**20,
}


def main(argv: Sequence[str] | None = None) -> int:
    render.set_quiet(False)  # a caller in this process may have run a quiet command before
    try:
        args = parse(list(sys.argv[1:] if argv is None else argv))
        if argv is None:  # the bcdr command itself, not a caller in this process
            tune_malloc(keep=KEEP_FREED.get(args.handler, 0))
        repo = named_repo(args)
        if repo is not None:
            derive_key_ahead(repo)  # before the command's modules load: they overlap scrypt
        terminate_as_interrupt()
        if getattr(args, "retry_budget", None) is not None:
            retrybudget.set_from_flag(args.retry_budget)
        quiet_sdk_logging()
        render.set_quiet(bool(getattr(args, "quiet", False)) and args.command not in ANSWERS)
        progress_logging(bool(getattr(args, "quiet", False) or getattr(args, "json", False)))
        return _run(args)
    except (KeyboardInterrupt, ImportError) as exc:  # before the command started
        if isinstance(exc, ImportError) and not was_interrupted():
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("bcdr: interrupted before the command started; nothing was done\n")
        return EXIT_INTERRUPTED
    finally:
        if argv is None:  # the process is about to exit: a Ctrl-C now has nothing to stop
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run(args: argparse.Namespace) -> int:
    """Call the command's handler; map what it raises to a message and an exit code."""
    try:
        code: int = args.handler(args)
        return code
    except BcdrError as exc:
        if isinstance(exc, Interrupted):
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if getattr(args, "json", False):
            render.emit_json(exc.to_dict())
        for problem in getattr(exc, "problems", ()):
            sys.stderr.write(f"{printable(str(problem))}\n")
        sys.stderr.write(f"bcdr: error: {printable(str(exc))}\n")
        if exc.hint:
            sys.stderr.write(f"hint: {printable(exc.hint)}\n")
        return exc.exit_code
    except (KeyboardInterrupt, ImportError) as exc:
        if isinstance(exc, ImportError) and not was_interrupted():
            raise  # a broken install: its traceback is the report
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback now
        sys.stderr.write(
            "bcdr: interrupted; every write is atomic, so nothing half-written is visible "
            "(run the command again to finish it)\n"
        )
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
