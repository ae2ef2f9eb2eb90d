"""``make bench``: bcdr against restic (when installed) and ``cp -a`` on one deterministic corpus.

Phases: initial backup, no-change re-run, incremental after a day-1 change, full restore, and
check with read-data. Each phase runs as a child process; wall time is measured around it, CPU
time and peak RSS come from wait4(2)'s rusage of that child. Stored bytes is the repository's
size on disk after each phase. Ratios are bcdr / restic, the median of each round's ratio
(within a round the tools run side by side on the same corpus).

Every restore, each tool's and ``cp -a``'s, is timed until its bytes are durable: the timed span
ends when ``sync`` returns after the command (dirty pages were synced before it started, so
what ``sync`` writes is the restore's); each starts after SETTLE seconds of quiet, so that
all start with the VM's memory in the same state. ``cp -a`` (and ``cp`` of the single file)
runs after the tools in even rounds and before them in odd ones.

Environment:

- BENCH_SIZES (default ``large,small``): the corpus shapes to run (bench/corpus.py: large is
  3.35 GiB, small 632 MiB, as restored after the day-1 change); BENCH_SCALE (default 1.0)
  scales them;
- BENCH_SINGLE_MIB (default 4096, 0 to skip): the single checkpoint file restored against
  ``cp``;
- BENCH_ROUNDS (default 4): how many times every phase runs (the table gives medians, each
  round's ratios follow it, with ``cp -a``'s and the disk's own write's times; results.json
  keeps every run);
- BENCH_TARGET (default ``journaled``, or ``plain``) and BENCH_TARGET_GIB: where restores go
  (see TARGET_KIND);
- BENCH_AZURE=0, BENCH_COPY=0 and BENCH_SHARDS=0 leave out the Azure (Azurite, rclone),
  ``bcdr copy`` (bench/copy_rates.py) and sharded-backup (bench/shard_rates.py) parts;
  BENCH_SHARD_FILES sets the file counts of the commit's cost (default 10,000, 100,000 and
  1,000,000);
- BENCH_DIR (default bench/out) holds the corpus, repositories, and results.json.

Both tools run with encryption on (restic always encrypts) and warm page cache. Peak RSS has a
floor of this harness's own RSS (~12 MiB), as Linux children start from their parent's
high-water mark; ``cp -a`` shows that floor. bcdr's worker processes are counted (see
:func:`run`).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from azure_rates import bench_azure, bench_rclone  # beside this file
from copy_rates import bench_copy
from shard_rates import bench_shards

CORPUS = [sys.executable, str(Path(__file__).resolve().parent / "corpus.py")]
OUT = Path(os.environ.get("BENCH_DIR", Path(__file__).resolve().parent / "out"))
SCALE = float(os.environ.get("BENCH_SCALE", "1.0"))
SIZES = [s.strip() for s in os.environ.get("BENCH_SIZES", "large,small").split(",") if s.strip()]
SINGLE_MIB = int(os.environ.get("BENCH_SINGLE_MIB", "4096"))
#: Phases timed until their bytes are durable (``sync`` inside the timed span).
AZURE = os.environ.get("BENCH_AZURE", "1") != "0"
COPY = os.environ.get("BENCH_COPY", "1") != "0"
SHARDS = os.environ.get("BENCH_SHARDS", "1") != "0"
DURABLE = frozenset({"full restore", "single-file restore"})
#: Seconds every restore (each tool's, ``cp``'s, the disk's) waits before it is timed, so that
#: each starts with the VM's memory in the same state. The kernel hands memory freed for a
#: couple of seconds back to the host (virtio-balloon free page reporting), and the next touch
#: of each page then costs a fault in the host: 4 GiB copied by ``cp`` took 4.4-4.5 s right
#: after 6 GiB had been touched and freed, and 7.7-17 s otherwise, or 11 s when the same
#: touch was 10 s old (2026-12-07). The wait did not make ``cp``'s place in a round matter
#: less (bench/NOTES.md): it gives every restore the same start, not a steady ``cp``.
SETTLE = float(os.environ.get("BENCH_SETTLE", "10"))
#: An even number, so that each tool runs first in as many rounds as the other at every phase
#: (the second to restore was the slower in this VM: 2.68 s against 1.77 and 2.15 s for bcdr).
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "4")))
PASSWORD = "bench-password"
BCDR = [sys.executable, "-m", "bcdr"]


#: Restores go to TARGET: by default an ext4 made for this run with mkfs's defaults (a
#: journal, as on an Azure VM's data disk), on a loop device over a file in BENCH_DIR written
#: whole first (``--direct-io``: its writes reach the disk, not the page cache twice). This
#: VM's root filesystem is ext4 *without* a journal, where the kernel skips every inode freed
#: in the last minutes when it allocates one (``recently_deleted``): creating 20,000 files
#: right after deleting as many took 6-15 s there and 0.64 s on a journaled ext4, which would
#: make every restore of the large corpus measure that, not the tool. BENCH_TARGET=plain
#: restores into BENCH_DIR itself (as runs before 2026-12-06 did).
TARGET_KIND = os.environ.get("BENCH_TARGET", "journaled")
TARGET = OUT / "target"
TARGET_IMAGE_GIB = int(os.environ.get("BENCH_TARGET_GIB", "24"))


@contextlib.contextmanager
def restore_filesystem() -> Iterator[str]:
    """Make and mount the filesystem restores go to (see TARGET_KIND); what it is."""
    global TARGET
    if TARGET_KIND == "plain":
        TARGET = OUT
        yield "BENCH_DIR's own filesystem"
        return
    if TARGET_KIND != "journaled":
        raise SystemExit(f"BENCH_TARGET: unknown kind {TARGET_KIND!r} (journaled, plain)")
    image = OUT / "target.img"
    image.unlink(missing_ok=True)
    # Written whole, and never discarded (mkfs discards by default, and the loop device turns
    # a discard into a hole): in a sparse image a block written for the first time costs the
    # filesystem under it an allocation, which fell on whichever restore wrote into fresh
    # space. Every block costs the same now; it did not make cp steadier (bench/NOTES.md).
    subprocess.run(
        [
            "dd",
            "if=/dev/zero",
            f"of={image}",
            "bs=64M",
            f"count={TARGET_IMAGE_GIB * 16}",
            "oflag=direct",
            "status=none",
        ],
        check=True,
    )
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(image)], check=True)
    loop = subprocess.run(
        ["losetup", "--find", "--show", "--direct-io=on", str(image)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    TARGET.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", loop, str(TARGET)], check=True)
        try:
            yield f"a new journaled ext4 of {TARGET_IMAGE_GIB} GiB on {loop} (direct I/O)"
        finally:
            subprocess.run(["umount", str(TARGET)], check=False)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        image.unlink(missing_ok=True)


def _clear_round(pattern: str, *, end: bool = False) -> None:
    """Delete restores: on the journaled target after each round, elsewhere only at the end
    (see TARGET_KIND: a restore into a folder deleted a moment before measures the kernel)."""
    if end or TARGET != OUT:
        for path in TARGET.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
        os.sync()


@dataclass
class Measure:
    tool: str
    phase: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    stored_bytes: int
    exit_code: int


def du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except FileNotFoundError:
                pass
    return total


PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.extend(int(c) for c in f.read().split())
    return out


def _pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_memory(pid: int) -> int:
    """Memory of ``pid`` and its descendants, in bytes (0 once gone): the resident set of a
    lone process; for a process tree (bcdr's forked workers) the summed proportional set
    size, so that pages a child shares with its parent count once, not once each. (PSS is
    read only for trees: reading it stalls the process's page faults.)"""
    try:
        tree, todo = [pid], _children(pid)
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(_children(p))
        if len(tree) == 1:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * PAGE
        return sum(_pss(p) for p in tree)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0


def run(
    cmd: list[str], env: dict[str, str], durable: bool = False
) -> tuple[float, float, float, int]:
    """Wall and CPU time (children included) and peak memory of one command. Peak memory is
    the larger of wait4's max RSS (one process's) and the peak of the process tree's summed
    memory (:func:`tree_memory`), sampled every 100 ms: bcdr's forked worker processes count,
    with the pages they share with their parent counted once. ``durable``: the wall time runs
    until ``sync`` returns after the command, so what it wrote is on the disk; and before it,
    dirty pages are synced and the machine left idle SETTLE seconds (see SETTLE)."""
    if durable:
        os.sync()
        time.sleep(SETTLE)
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], tree_memory(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    if durable:
        os.sync()
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0 and proc.stderr is not None:
        sys.stderr.write(f"{' '.join(cmd[:4])}... exited {code}: {proc.stderr.read().decode()}\n")
    rss_mib = max(usage.ru_maxrss / 1024, peak[0] / 2**20)
    return wall, usage.ru_utime + usage.ru_stime, rss_mib, code


def phases(tool: str, repo: Path, corpus: Path, restore_to: Path) -> list[tuple[str, list[str]]]:
    if tool == "bcdr":
        base = [*BCDR]
        return [
            ("init", [*base, "init", "--repo", str(repo), "--encrypt"]),
            (
                "initial backup",
                [*base, "backup", "-q", "--repo", str(repo), "--job", "b", str(corpus)],
            ),
            (
                "no-change backup",
                [*base, "backup", "-q", "--repo", str(repo), "--job", "b", str(corpus)],
            ),
            (
                "incremental backup",
                [*base, "backup", "-q", "--repo", str(repo), "--job", "b", str(corpus)],
            ),
            (
                "full restore",
                [
                    *base,
                    "restore",
                    "-q",
                    "--repo",
                    str(repo),
                    "latest",
                    "--target",
                    str(restore_to),
                ],
            ),
            ("check read-data", [*base, "check", "-q", "--repo", str(repo), "--read-data"]),
        ]
    base = ["restic", "--repo", str(repo), "--quiet"]
    return [
        ("init", [*base, "init"]),
        ("initial backup", [*base, "backup", str(corpus)]),
        ("no-change backup", [*base, "backup", str(corpus)]),
        ("incremental backup", [*base, "backup", str(corpus)]),
        ("full restore", [*base, "restore", "latest", "--target", str(restore_to)]),
        ("check read-data", [*base, "check", "--read-data"]),
    ]


def bench_rounds(
    tools: list[str], corpus: Path, size: str = "small"
) -> tuple[list[Measure], list[list[Measure]]]:
    """BENCH_ROUNDS rounds of every phase of every tool (fresh repositories and corpus each
    round) and of ``cp -a``: (each tool's phase as its median over the rounds, the rounds).
    One run of a phase on this kind of VM varies by 10-30% with the state of its memory and
    disk (guest memory not touched since the host took it back costs a first touch; see
    docs/performance.md), the same for both tools but not at the same moment."""
    rounds = []
    for k in range(ROUNDS):
        # cp -a goes last in even rounds and first in odd ones (then it copies the corpus as
        # the round before left it, the tree the restores restore), so that no one state of
        # the machine falls on it alone (see SETTLE)
        where = "first" if k % 2 else "last"
        print(f"{size} corpus, round {k + 1} of {ROUNDS} (cp -a {where})", flush=True)
        baselines = _baselines(corpus, k) if k % 2 else []
        measured = bench_tools(tools, corpus, k, size)
        measured += baselines or _baselines(corpus, k)
        rounds.append(measured)
        _clear_round("restore-*")
    _clear_round("restore-*", end=True)
    return [_median(runs) for runs in zip(*rounds, strict=True)], rounds


def _median(runs: tuple[Measure, ...]) -> Measure:
    first = runs[0]
    assert all((m.tool, m.phase) == (first.tool, first.phase) for m in runs)
    return Measure(
        first.tool,
        first.phase,
        statistics.median(m.wall_s for m in runs),
        statistics.median(m.cpu_s for m in runs),
        statistics.median(m.peak_rss_mib for m in runs),
        int(statistics.median(m.stored_bytes for m in runs)),
        max(m.exit_code for m in runs),
    )


def bench_tools(
    tools: list[str], corpus: Path, round_no: int = 0, size: str = "small"
) -> list[Measure]:
    """Each phase for every tool in turn (the first tool alternates, phase by phase and round
    by round), so that the machine's state at a phase (page cache, ext4's inode allocator
    after the corpus was rewritten, steal from neighbours) is shared rather than falling on
    one tool's whole run. Dirty pages are synced before each timed command, so no tool pays
    for the previous one's writeback. Each round restores into folders of its own, deleted
    only at the end: a restore into a folder deleted a moment before spends its time in
    ext4's scan for recently deleted inodes."""
    env = {"BCDR_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD}
    plans = {}
    for tool in tools:
        repo, restore_to = OUT / f"repo-{tool}", TARGET / f"restore-{tool}-{round_no}"
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(restore_to, ignore_errors=True)
        plans[tool] = (repo, phases(tool, repo, corpus, restore_to))
    out = []
    names = [name for name, _ in plans[tools[0]][1]]
    for step, phase in enumerate(names):
        # The corpus is made in its own process: a child's peak RSS starts at its parent's,
        # so this process must stay small (numpy lives only in corpus.py).
        if phase == "initial backup":
            subprocess.run([*CORPUS, "make", str(corpus), str(SCALE), size], check=True)
        if phase == "incremental backup":
            subprocess.run([*CORPUS, "change", str(corpus)], check=True)
        order = tools if (step + round_no) % 2 == 0 else tools[::-1]
        for tool in order:
            repo, steps = plans[tool]
            os.sync()
            wall, cpu, rss, code = run(dict(steps)[phase], env, durable=phase in DURABLE)
            if phase != "init":
                out.append(Measure(tool, phase, wall, cpu, rss, du(repo), code))
                print(
                    f"  {tool:6} {phase:20} {wall:8.2f}s wall {cpu:8.2f}s cpu {rss:8.0f} MiB",
                    flush=True,
                )
    return sorted(out, key=lambda m: (tools.index(m.tool), names.index(m.phase)))


def _baselines(corpus: Path, k: int) -> list[Measure]:
    """``cp -a`` of the corpus and the disk's own write of as many bytes (in that order)."""
    copied = bench_cp(corpus, k)
    disk = bench_disk(du(corpus), k)
    print(f"  disk   {'full restore':20} {disk.wall_s:8.2f}s wall (O_DIRECT)")
    return [copied, disk]


def bench_cp(corpus: Path, round_no: int = 0) -> Measure:
    target = TARGET / f"restore-cp-{round_no}"
    shutil.rmtree(target, ignore_errors=True)
    wall, cpu, rss, code = run(["cp", "-a", str(corpus), str(target)], {}, durable=True)
    print(f"  cp -a  {'full restore':20} {wall:8.2f}s wall {cpu:8.2f}s cpu {rss:8.0f} MiB")
    return Measure("cp -a", "full restore", wall, cpu, rss, 0, code)


def bench_disk(size: int, round_no: int = 0, phase: str = "full restore") -> Measure:
    """The device's own write speed for a restore's bytes (bench/corpus.py ``disk_write``),
    timed until durable: what the disk alone takes for them."""
    target = TARGET / f"restore-disk-{round_no}"
    target.unlink(missing_ok=True)
    wall, cpu, rss, code = run([*CORPUS, "disk", str(target), str(size)], {}, durable=True)
    target.unlink(missing_ok=True)
    return Measure("disk", phase, wall, cpu, rss, 0, code)


INDEX_SCALE = [sys.executable, str(Path(__file__).resolve().parent / "index_scale.py")]
INDEX_CHUNKS = int(os.environ.get("BENCH_INDEX_CHUNKS", "10000000"))
#: Loads of each index, medians reported: one load in five or so keeps a thread's malloc arena
#: of up to 12 MiB of freed index files (glibc trims no thread arena's top below twice the
#: dynamic mmap threshold), 1 B per chunk more.
INDEX_LOADS = 3


def bench_index() -> dict[str, float]:
    """Load an index of INDEX_CHUNKS synthetic chunks and, as the baseline, an empty one."""
    out: dict[str, dict[str, float]] = {}
    for label, n in (("empty", 0), ("full", INDEX_CHUNKS)):
        root = OUT / f"index-{label}"
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([*INDEX_SCALE, "make", str(root), str(n)], check=True)
        out[label] = {}
        for mode, times in (("load", INDEX_LOADS), ("check", 1)):
            runs = [
                json.loads(
                    subprocess.run(
                        [*INDEX_SCALE, mode, str(root)], check=True, capture_output=True, text=True
                    ).stdout
                )
                for _ in range(times)
            ]
            for k in runs[0]:
                values = [r[k] for r in runs]
                out[label][f"{mode}_{k}"] = statistics.median(values)
                out[label][f"{mode}_{k}_max"] = max(values)
        shutil.rmtree(root, ignore_errors=True)
    full, empty = out["full"], out["empty"]
    n = max(1, int(full["load_entries"]))

    def above_empty(key: str) -> float:
        return float(full[key] - empty[key])  # MiB the full index adds to an empty one's

    steady = above_empty("load_rss_after_load_mib")
    peak = above_empty("load_peak_rss_mib")
    check_mib = above_empty("check_peak_rss_mib")
    return {
        "entries": full["load_entries"],
        "load_s": full["load_load_s"],
        "lookups_per_s": full["load_lookups_per_s"],
        "steady_mib": steady,
        "peak_mib": peak,
        "steady_bytes_per_chunk": steady * 2**20 / n,
        "steady_bytes_per_chunk_max": above_empty("load_rss_after_load_mib_max") * 2**20 / n,
        "peak_bytes_per_chunk": peak * 2**20 / n,
        "check_s": full["check_check_s"],
        "check_peak_mib": check_mib,
        "check_bytes_per_chunk": check_mib * 2**20 / n,
    }


PRUNE_SCALE = [sys.executable, str(Path(__file__).resolve().parent / "prune_scale.py")]
PRUNE_CHUNKS = int(os.environ.get("BENCH_PRUNE_CHUNKS", "1000000"))


def bench_prune() -> dict[str, float]:
    """``bcdr prune --grace 0`` (mark and sweep) on PRUNE_CHUNKS synthetic chunks, and on an
    empty repository as the baseline, each as a child process (peak RSS from wait4)."""
    out: dict[str, tuple[float, float, float, int]] = {}
    for label, n in (("empty", 0), ("full", PRUNE_CHUNKS)):
        root = OUT / f"prune-{label}"
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([*PRUNE_SCALE, "make", str(root), str(n)], check=True)
        cmd = [*BCDR, "prune", "--repo", str(root), "--grace", "0", "--max-unused", "100", "-q"]
        out[label] = run(cmd, {})
        shutil.rmtree(root, ignore_errors=True)
    (wall, cpu, rss, code), (_, _, base, _) = out["full"], out["empty"]
    return {
        "chunks": PRUNE_CHUNKS,
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": rss,
        "baseline_rss_mib": base,
        "rss_ratio": rss / base if base else 0.0,
        "bytes_per_chunk": (rss - base) * 2**20 / max(1, PRUNE_CHUNKS),
        "exit_code": code,
    }


SMALL_FILES = int(os.environ.get("BENCH_SMALL_FILES", "50000"))


def small_tree(root: Path, n: int) -> None:
    """``n`` small files (64 B to 2 KiB) in folders of 200, deterministic."""
    import random

    rng = random.Random(50_000)
    shutil.rmtree(root, ignore_errors=True)
    for i in range(n):
        folder = root / f"d{i // 200:04d}"
        if i % 200 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i % 200:03d}.txt").write_bytes(rng.randbytes(rng.randint(64, 2048)))


def bench_extra(corpus: Path, tools: list[str]) -> dict[str, dict[str, float]]:
    """Two measurements issue 3 names: the no-change re-run over SMALL_FILES small files (the
    metadata-only path), and the stored bytes of the checkpoint series alone (the safetensors
    checkpoints, 60% of tensors frozen between consecutive ones) backed up one after another."""
    env = {"BCDR_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD}
    small = OUT / "small-tree"
    small_tree(small, SMALL_FILES)
    series = sorted((corpus / "checkpoints").iterdir())
    out: dict[str, dict[str, float]] = {}
    for tool in tools:
        repo = OUT / f"extra-{tool}"
        shutil.rmtree(repo, ignore_errors=True)
        if tool == "bcdr":
            base = [*BCDR]
            init = [*base, "init", "--repo", str(repo), "--encrypt"]

            def backup(
                path: Path, job: str, base: list[str] = base, repo: Path = repo
            ) -> list[str]:
                return [*base, "backup", "-q", "--repo", str(repo), "--job", job, str(path)]
        else:
            init = ["restic", "--repo", str(repo), "--quiet", "init"]

            def backup(path: Path, job: str, repo: Path = repo) -> list[str]:
                return ["restic", "--repo", str(repo), "--quiet", "backup", "--tag", job, str(path)]

        run(init, env)
        run(backup(small, "small"), env)
        wall, cpu, rss, code = run(backup(small, "small"), env)
        before = du(repo)
        stage = OUT / "series-stage"  # the series appears one checkpoint per backup
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        for ckpt in series:
            os.link(ckpt, stage / ckpt.name)
            run(backup(stage, "series"), env)
        out[tool] = {
            "small_files": SMALL_FILES,
            "no_change_wall_s": wall,
            "no_change_cpu_s": cpu,
            "no_change_rss_mib": rss,
            "series_checkpoints": len(series),
            "series_stored_bytes": du(repo) - before,
            "exit_code": code,
        }
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(small, ignore_errors=True)
    if "restic" in out:
        b, r = out["bcdr"], out["restic"]
        out["ratio"] = {
            "no_change_wall": b["no_change_wall_s"] / r["no_change_wall_s"],
            "series_stored": b["series_stored_bytes"] / r["series_stored_bytes"],
        }
    return out


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    corpus = OUT / "corpus"
    tools = ["bcdr"] + (["restic"] if shutil.which("restic") else [])
    if "restic" not in tools:
        print("restic not found: install Debian's `restic` package for the comparison")
    unknown = [shape for shape in SIZES if shape not in ("small", "large")]
    if unknown:
        raise SystemExit(f"BENCH_SIZES: unknown size {', '.join(unknown)} (small, large)")
    # stopped (SIGTERM): unmount and remove the restore filesystem on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with restore_filesystem() as where:
        print(f"restores go to {where}", flush=True)
        return _main(corpus, tools)


def _main(corpus: Path, tools: list[str]) -> int:
    sizes: dict[str, dict[str, object]] = {}
    exits: list[int] = []
    for shape in SIZES:
        results, rounds = bench_rounds(tools, corpus, shape)
        size = du(corpus)
        print(f"\n{shape} corpus, {size / 2**20:.0f} MiB:" + render(results, rounds))
        sizes[shape] = {
            "corpus_bytes": size,
            "results": [asdict(m) for m in results],
            "rounds": [[asdict(m) for m in measured] for measured in rounds],
            "ratios": paired_ratios([ratios(measured) for measured in rounds]),
        }
        exits += [m.exit_code for m in results]
    single = bench_single(tools) if SINGLE_MIB else []
    print(f"\n{SMALL_FILES:,} small files, no-change re-run; checkpoint series:", flush=True)
    extra = bench_extra(corpus, tools)
    for tool in tools:
        e = extra[tool]
        wall, cpu, rss = e["no_change_wall_s"], e["no_change_cpu_s"], e["no_change_rss_mib"]
        print(
            f"  {tool:6} no-change {wall:.2f} s wall, {cpu:.2f} s cpu, {rss:.0f} MiB; series of "
            f"{e['series_checkpoints']:.0f} stored {e['series_stored_bytes'] / 2**20:.1f} MiB"
        )
    if "ratio" in extra:
        print(
            f"  bcdr/restic: no-change wall {extra['ratio']['no_change_wall']:.2f}, "
            f"series stored {extra['ratio']['series_stored']:.2f}"
        )
    print(f"\nmaster index, {INDEX_CHUNKS:,} chunks:", flush=True)
    index = bench_index()
    print(
        f"  load {index['load_s']:.2f} s, {index['lookups_per_s']:,.0f} lookups/s, "
        f"RSS above an empty repository: {index['steady_mib']:.0f} MiB loaded "
        f"({index['steady_bytes_per_chunk']:.1f} B/chunk, median of {INDEX_LOADS} loads; "
        f"at most {index['steady_bytes_per_chunk_max']:.1f}), "
        f"{index['peak_mib']:.0f} MiB peak ({index['peak_bytes_per_chunk']:.0f} B/chunk)"
    )
    print(
        f"  check (structure; every pack missing) {index['check_s']:.1f} s, peak RSS above an "
        f"empty repository's check {index['check_peak_mib']:.0f} MiB "
        f"({index['check_bytes_per_chunk']:.0f} B/chunk)"
    )
    print(f"\nprune (mark and sweep), {PRUNE_CHUNKS:,} chunks:", flush=True)
    pruned = bench_prune()
    print(
        f"  {pruned['wall_s']:.1f} s, peak RSS {pruned['peak_rss_mib']:.0f} MiB = "
        f"{pruned['rss_ratio']:.1f}x an empty repository's prune "
        f"({pruned['baseline_rss_mib']:.0f} MiB); {pruned['bytes_per_chunk']:.0f} B per chunk"
    )
    azure: list[dict[str, float]] = []
    rclone: dict[str, object] = {}
    copied: dict[str, object] = {}
    if AZURE:
        print("\nAzure Blob (Azurite on loopback; ratio to 1 connection at the same RTT):")
        azure = bench_azure(OUT, TARGET)
        for r in azure:
            print(
                f"  rtt {r['rtt_ms']:4.0f} ms  {r['connections']:.0f} conn  "
                f"upload {r['upload_mib_s']:7.1f} MiB/s ({r['upload_ratio']:.2f}x)  "
                f"download {r['download_mib_s']:7.1f} MiB/s ({r['download_ratio']:.2f}x)"
            )
        print("\nAzure Blob, bcdr against rclone (--transfers 8), Azurite:", flush=True)
        rclone = bench_rclone(OUT, ROUNDS, TARGET)
        if "backup_ratio" in rclone:
            print(
                f"  bcdr/rclone, median: backup {rclone['backup_ratio']:.2f}, "
                f"restore {rclone['restore_ratio']:.2f}"
            )
    if COPY:
        print("\nbcdr copy of a repository against rclone copying its folder:", flush=True)
        copied = bench_copy(OUT, ROUNDS)
        if "local_ratio" in copied:
            print(
                f"  bcdr/rclone, median: local {copied['local_ratio']:.2f}, into Azurite "
                f"{copied['azure_ratio']:.2f}; a rerun with nothing new {copied['rerun_s']:.2f} s"
            )
    sharded: dict[str, object] = {}
    if SHARDS:
        print("\nSharded backups (local executor) against the unsharded one:", flush=True)
        sharded = bench_shards(OUT, ROUNDS)
    doc = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "scale": SCALE,
        "restore_target": TARGET_KIND,
        "sizes": sizes,
        "single": [[asdict(m) for m in measured] for measured in single],
        "index": index,
        "prune": pruned,
        "azure": azure,
        "rclone": rclone,
        "copy": copied,
        "shards": sharded,
        "extra": extra,
    }
    (OUT / "results.json").write_text(json.dumps(doc, indent=2))
    print(f"\nresults in {OUT / 'results.json'}")
    exits += [m.exit_code for measured in single for m in measured] + [int(pruned["exit_code"])]
    return 1 if any(exits) else 0


def bench_single(tools: list[str]) -> list[list[Measure]]:
    """One checkpoint file of SINGLE_MIB, backed up by each tool, then restored by each (and
    copied by ``cp``), each timed until its bytes are durable; BENCH_ROUNDS rounds, the first
    tool alternating."""
    env = {"BCDR_PASSWORD": PASSWORD, "RESTIC_PASSWORD": PASSWORD}
    source = OUT / "single" / "model.safetensors"
    subprocess.run([*CORPUS, "single", str(source), str(SINGLE_MIB)], check=True)
    rounds = []
    for k in range(ROUNDS):
        where = "first" if k % 2 else "last"
        print(f"single {SINGLE_MIB} MiB file, round {k + 1} of {ROUNDS} (cp {where})", flush=True)
        measured: list[Measure] = []
        order = tools if k % 2 == 0 else tools[::-1]
        # cp goes last in even rounds and first in odd ones (see bench_rounds)
        if k % 2:
            measured += _single_baselines(source, k)
        for tool in order:
            repo, target = OUT / f"single-repo-{tool}", TARGET / f"single-restore-{tool}-{k}"
            shutil.rmtree(repo, ignore_errors=True)
            steps = dict(phases(tool, repo, source.parent, target))
            run(steps["init"], env)
            run(steps["initial backup"], env)
            wall, cpu, rss, code = run(steps["full restore"], env, durable=True)
            measured.append(Measure(tool, "single-file restore", wall, cpu, rss, du(repo), code))
            shutil.rmtree(repo, ignore_errors=True)
        if not k % 2:
            measured += _single_baselines(source, k)
        for m in measured:
            print(
                f"  {m.tool:6} {m.wall_s:8.2f}s wall {m.cpu_s:8.2f}s cpu {m.peak_rss_mib:6.0f} MiB"
            )
        rounds.append(measured)
        _clear_round("single-restore-*")
    _clear_round("single-restore-*", end=True)
    by_round = [{m.tool: m.wall_s for m in measured} for measured in rounds]
    for tool in tools:
        walls = " ".join(f"{r[tool] / r['cp']:.2f}" for r in by_round)
        floor = " ".join(f"{r[tool] / r['disk']:.2f}" for r in by_round)
        print(f"  {tool} / cp + sync, each round: {walls}; / the disk's O_DIRECT write: {floor}")
    return rounds


def _single_baselines(source: Path, k: int) -> list[Measure]:
    """``cp`` of the single file and the disk's own ``O_DIRECT`` write of as many bytes, each
    timed until durable."""
    target = TARGET / f"single-restore-cp-{k}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    wall, cpu, rss, code = run(["cp", str(source), str(target)], {}, durable=True)
    copied = Measure("cp", "single-file restore", wall, cpu, rss, 0, code)
    return [copied, bench_disk(source.stat().st_size, k, "single-file restore")]


def ratios(results: list[Measure]) -> dict[str, dict[str, float]]:
    by = {(m.tool, m.phase): m for m in results}
    out: dict[str, dict[str, float]] = {}
    for (tool, phase), m in by.items():
        if tool != "bcdr" or ("restic", phase) not in by:
            continue
        r = by[("restic", phase)]
        out[phase] = {
            "wall": m.wall_s / r.wall_s if r.wall_s else float("nan"),
            "cpu": m.cpu_s / r.cpu_s if r.cpu_s else float("nan"),
            "rss": m.peak_rss_mib / r.peak_rss_mib if r.peak_rss_mib else float("nan"),
            "stored": m.stored_bytes / r.stored_bytes if r.stored_bytes else float("nan"),
        }
    if ("cp -a", "full restore") in by:
        cp = by[("cp -a", "full restore")]
        out.setdefault("full restore", {})["wall_vs_cp"] = (
            by[("bcdr", "full restore")].wall_s / cp.wall_s
        )
        if ("restic", "full restore") in by:
            out["full restore"]["cp_vs_restic"] = _floor(results)
    if ("disk", "full restore") in by:
        disk = by[("disk", "full restore")].wall_s
        for tool in ("bcdr", "restic", "cp -a"):
            if (tool, "full restore") in by:
                key = f"{tool.split()[0]}_vs_disk"
                out.setdefault("full restore", {})[key] = by[(tool, "full restore")].wall_s / disk
    return out


def paired_ratios(per_round: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each ratio as the median of the rounds' ratios (:func:`ratios` of each round): within
    a round the tools ran side by side, on the same state of the machine, which drifts from
    round to round."""
    return {
        phase: {key: statistics.median(r[phase][key] for r in per_round) for key in keys}
        for phase, keys in per_round[0].items()
    }


def render(results: list[Measure], rounds: list[list[Measure]]) -> str:
    rows = [
        f"\nmedians of {len(rounds)} round(s) (restores timed until durable):",
        f"{'tool':7} {'phase':20} {'wall s':>8} {'cpu s':>8} {'RSS MiB':>8} {'stored MiB':>11}",
    ]
    for m in results:
        rows.append(
            f"{m.tool:7} {m.phase:20} {m.wall_s:8.2f} {m.cpu_s:8.2f} "
            f"{m.peak_rss_mib:8.0f} {m.stored_bytes / 2**20:11.1f}"
        )
    per_round = [ratios(measured) for measured in rounds]
    rat = paired_ratios(per_round)
    if "wall_vs_cp" in rat.get("full restore", {}):
        rows.append(f"\nfull restore bcdr / cp -a: {rat['full restore']['wall_vs_cp']:.2f}")
    if any("wall" in r for r in rat.values()):  # restic was measured
        rows.append(f"\nbcdr/restic, median of the {len(rounds)} rounds' ratios:")
        rows.append(f"{'':28} {'wall':>6} {'cpu':>6} {'rss':>6} {'stored':>7}")
        for phase, r in rat.items():
            if "wall" in r:
                rows.append(
                    f"{phase:28} {r['wall']:6.2f} {r['cpu']:6.2f} {r['rss']:6.2f} "
                    f"{r['stored']:7.2f}"
                )
        rows.append(f"\n{'bcdr/restic, each round':28} {'wall':>20} {'rss':>20}")
        for phase in rat:
            if "wall" in rat[phase]:
                walls = " ".join(f"{r[phase]['wall']:.2f}" for r in per_round)
                rsss = " ".join(f"{r[phase]['rss']:.2f}" for r in per_round)
                rows.append(f"{phase:28} {walls:>20} {rsss:>20}")
        floor = " ".join(f"{r['full restore']['cp_vs_restic']:.2f}" for r in per_round)
        rows.append(f"{'cp -a / restic (the floor)':28} {floor:>20}")
    if "bcdr_vs_disk" in rat.get("full restore", {}):
        rows.append("\nfull restore / the disk's own O_DIRECT write of as many bytes, each round:")
        for tool in ("bcdr", "restic", "cp"):
            key = f"{tool}_vs_disk"
            if key in per_round[0].get("full restore", {}):
                each = " ".join(f"{r['full restore'][key]:.2f}" for r in per_round)
                rows.append(f"{tool:28} {each:>20}")
    return "\n".join(rows)


def _floor(measured: list[Measure]) -> float:
    """A round's ``cp -a`` against restic's restore: how close to restic any tool that
    writes the tree through the page cache could have come in that round."""
    by = {(m.tool, m.phase): m.wall_s for m in measured}
    restic = by.get(("restic", "full restore"))
    return by[("cp -a", "full restore")] / restic if restic else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
