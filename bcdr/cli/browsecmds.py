"""``bcdr diff|find|dump|stats|tag|mount``: parse, call the action, render."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from bcdr.cli import render
from bcdr.cli.lazy import lazy
from bcdr.cli.repoargs import storage_spec
from bcdr.errors import EXIT_FAILED, EXIT_OK, UsageError
from bcdr.text import printable
from bcdr.units import human_bytes

if TYPE_CHECKING:  # typed as usual; loaded when a command first uses them
    from bcdr.actions import browse as browse_action
    from bcdr.actions import mount as mount_action
    from bcdr.actions import tag as tag_action
else:
    browse_action = lazy("bcdr.actions.browse")
    mount_action = lazy("bcdr.actions.mount")
    tag_action = lazy("bcdr.actions.tag")

Command = Callable[..., argparse.ArgumentParser]
MARK = {"added": "+", "removed": "-", "changed": "M", "metadata": "U"}


def cmd_diff(args: argparse.Namespace) -> int:
    d = browse_action.diff(storage_spec(args), args.first, args.second)
    if args.json:
        render.emit_json(d.to_dict())
        return EXIT_OK
    for c in d.changes:
        detail = f"  ({', '.join(c.fields)})" if c.fields else ""
        render.out(f"{MARK[c.what]}  {printable(c.path)}{'/' if c.type == 'dir' else ''}{detail}")
    n = d.counts()
    render.out(
        f"{d.first.short_id} -> {d.second.short_id}: {n['added']} added, {n['removed']} removed, "
        f"{n['changed']} changed, {n['metadata']} with other metadata"
    )
    return EXIT_OK


def cmd_find(args: argparse.Namespace) -> int:
    found = browse_action.find(
        storage_spec(args), tuple(args.patterns), snapshots=tuple(args.snapshot), job=args.job
    )
    if args.json:
        render.emit_json([f.to_dict() for f in found])
    else:
        for f in found:
            size = human_bytes(f.size) if f.type == "file" else f.type
            render.out(f"{f.snapshot[:8]}  {f.time[:19]}  {size:>10}  {printable(f.path)}")
        render.out(f"{len(found)} match(es)")
    return EXIT_OK if found else EXIT_FAILED


def cmd_dump(args: argparse.Namespace) -> int:
    if sys.stdout.isatty() and not args.force:
        raise UsageError(
            "dump writes the file's bytes (a folder as a tar stream) to stdout, which is a "
            "terminal here",
            hint="redirect it: bcdr dump ... > file (or | tar -x), or --force",
        )
    sys.stdout.flush()
    what = browse_action.dump(
        storage_spec(args), args.snapshot, args.path, sys.stdout.buffer, job=args.job
    )
    sys.stdout.buffer.flush()
    if not args.quiet and what != "file":
        sys.stderr.write(f"dumped {args.path} as a tar stream\n")
    return EXIT_OK


def cmd_stats(args: argparse.Namespace) -> int:
    st = browse_action.stats(storage_spec(args))
    if args.json:
        render.emit_json(st.to_dict())
        return EXIT_OK
    ratio = f"{st.dedup_ratio:.2f}x" if st.dedup_ratio else "-"
    render.out(
        f"{st.snapshots} snapshot(s); {human_bytes(st.logical_bytes)} to restore them all, "
        f"{human_bytes(st.stored_bytes)} stored in {st.packs} packs (dedup and compression "
        f"{ratio})"
    )
    for j in st.jobs:
        render.out(
            f"  {j.job or '(no job)'}: {j.snapshots} snapshot(s), newest "
            f"{(j.newest or '')[:8]} restores {human_bytes(j.restore_size)} in {j.files} files"
        )
    return EXIT_OK


def cmd_tag(args: argparse.Namespace) -> int:
    done = tag_action.tag(
        storage_spec(args),
        tuple(args.snapshots),
        add=tuple(args.add),
        remove=tuple(args.remove),
        set_to=tuple(args.set) if args.set is not None else None,
        job=args.job,
    )
    if args.json:
        render.emit_json([r.to_dict() for r in done])
        return EXIT_OK
    for r in done:
        tags = ", ".join(r.tags) or "no tags"
        if r.new:
            render.out(f"snapshot {r.old[:8]} is now {r.new[:8]} ({tags})")
        else:
            render.out(f"snapshot {r.old[:8]} unchanged ({tags})")
    return EXIT_OK


def cmd_mount(args: argparse.Namespace) -> int:
    def ready(count: int) -> None:
        render.note(
            f"{count} snapshot(s) mounted read-only at {args.mountpoint} (ids/, snapshots/, "
            f"jobs/, latest); Ctrl-C or `fusermount -u {args.mountpoint}` unmounts"
        )
        sys.stderr.flush()

    mount_action.mount(storage_spec(args), args.mountpoint, job=args.job, on_ready=ready)
    render.note(f"unmounted {args.mountpoint}")
    return EXIT_OK


def add_browse_commands(command: Command) -> None:
    p = command(
        "diff",
        cmd_diff,
        "What changed between two snapshots: + added, - removed, M content changed, U other "
        "metadata (mode, owner, times). Folders whose tree is the same are not read.",
        epilog="examples:\n  bcdr diff --repo /backups/main 1c48b7aa latest\n"
        "  bcdr diff --plan plans/quickstart.yaml 1c48b7aa 9f02c1d4 --json",
    )
    p.add_argument("first", metavar="SNAPSHOT", help="the older snapshot (id, prefix, latest)")
    p.add_argument("second", metavar="SNAPSHOT", help="the newer one")
    p = command(
        "find",
        cmd_find,
        "Find paths in every snapshot (or those named with --snapshot). A pattern without a "
        "/ matches names (*.safetensors), one with a / whole paths (/data/ckpt/step-9*). "
        "Exit 1 when nothing matches.",
        epilog="examples:\n  bcdr find --repo /backups/main 'step-9*.pt'\n"
        "  bcdr find --repo /backups/main '/data/ckpt/*' --snapshot latest --job ckpt",
    )
    p.add_argument("patterns", nargs="+", metavar="PATTERN", help="glob patterns")
    p.add_argument(
        "--snapshot", action="append", default=[], metavar="ID", help="only this snapshot"
    )
    p.add_argument("--job", help="only this job's snapshots (with latest: its newest)")
    p = command(
        "dump",
        cmd_dump,
        "Write one file of a snapshot to stdout, or a folder as a tar stream, every byte "
        "checked as a restore checks it.",
        epilog="examples:\n  bcdr dump --repo /backups/main latest /data/ckpt/config.json\n"
        "  bcdr dump --repo /backups/main latest /data/ckpt | tar -x -C /tmp/ckpt",
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="id, prefix or latest")
    p.add_argument("path", metavar="PATH", help="an absolute path in the snapshot")
    p.add_argument("--job", help="with latest: that job's newest snapshot")
    p.add_argument("--force", action="store_true", help="write to a terminal all the same")
    p = command(
        "mount",
        cmd_mount,
        "Browse the snapshots as a read-only filesystem (FUSE) until Ctrl-C: ids/<id>/, "
        "snapshots/<time>/, jobs/<job>/<time>/ and latest/, each holding the tree as backed up. "
        "Every chunk read is checked; mounted nosuid,nodev, for you alone; a read lock keeps "
        "prune away meanwhile. Needs libfuse and fusermount (Debian: apt-get install fuse).",
        epilog="examples:\n  mkdir -p /mnt/bcdr && bcdr mount --repo /backups/main /mnt/bcdr\n"
        "  bcdr mount --plan plans/quickstart.yaml --job ckpt /mnt/bcdr   # one job's snapshots\n"
        "  cp /mnt/bcdr/latest/data/ckpt/config.json .       # in another shell",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT", help="an empty folder")
    p.add_argument("--job", help="only this job's snapshots")
    p = command(
        "tag",
        cmd_tag,
        "Add, remove or set the tags of snapshots. A snapshot is written anew with its tags "
        "(its id changes; its data and its recovery point do not) and the old one is removed, "
        "so this needs a credential that may delete.",
        epilog="examples:\n  bcdr tag --repo /backups/main latest --job ckpt --add release-1.2\n"
        "  bcdr tag --repo /backups/main 1c48b7aa 9f02c1d4 --remove candidate",
    )
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT", help="ids, prefixes or latest")
    p.add_argument("--add", action="append", default=[], metavar="TAG", help="add this tag")
    p.add_argument("--remove", action="append", default=[], metavar="TAG", help="remove this tag")
    p.add_argument("--set", action="append", metavar="TAG", help="replace every tag by these")
    p.add_argument("--job", help="with latest: that job's newest snapshot")
    p = command(
        "stats",
        cmd_stats,
        "Sizes: what restoring each job's newest snapshot and all snapshots takes, what the "
        "repository stores, and the ratio of the two (dedup and compression).",
        epilog="examples:\n  bcdr stats --repo /backups/main\n  bcdr stats --plan "
        "plans/examples/ml-team-azure.yaml --repository westeu --json",
    )
