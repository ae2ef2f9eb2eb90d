"""``bench_shards``: sharded backups (``bcdr backup --shards N --executor local``) against the
unsharded backup of the same corpus, in the same run, and the commit's cost against the number
of files and of shards (docs/scale-out.md).

1. The bench corpora (large, 2.85 GiB, and small, 504 MiB: before the day-1 change) backed
   up unsharded and with N = 1, 2 and 4 shards, each into a fresh encrypted repository,
   BENCH_ROUNDS rounds (order rotated; SMALL_ROUNDS times as many for the small corpus)
   after one unsharded backup that is not counted; ratios are medians of each round's ratio. Per
   backup: wall time until it returns, total CPU time of every process it started (``wait4``
   of the children: shards and their workers included), and per file its metadata,
   fingerprint and chunk lengths, which must be the unsharded backup's.
2. Trees of F files of 100 bytes (BENCH_SHARD_FILES, default 10,000, 100,000 and 1,000,000; 1,000
   per folder), each run with S shards (1 and 16): the plan, the shards and the commit timed
   apart. The commit walks the whole source and looks every file up in the receipts: its cost
   per file is what a cluster cannot spread.
3. Walks over a filesystem whose every stat waits (``bench_slow_metadata``): the plan and a
   no-change backup with stats one at a time and taken ahead (bcdr/archive/statahead.py).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from azure_rates import BCDR, CORPUS, PASSWORD  # beside this file; puts the repo on sys.path

SHARDS = (1, 2, 4)
COMMIT_FILES = tuple(
    int(x) for x in os.environ.get("BENCH_SHARD_FILES", "10000,100000,1000000").split(",") if x
)
COMMIT_SHARDS = (1, 16)
#: The small corpus's backups take about 3 s of CPU each, and the same backup's CPU time
#: varies by +-10% between runs in this VM (a round's ratio of 4 shards to none spread
#: 0.84-1.30 over eight rounds, 2026-12-08): it gets this many times BENCH_ROUNDS, so that its
#: medians tell the shards' cost and not the VM's. The large corpus's rounds take ten times as
#: long and spread less.
SMALL_ROUNDS = 3
ENV = {**os.environ, "BCDR_PASSWORD": PASSWORD}


def _run(cmd: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``cmd`` (its children included), and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def _files(repo: Path, path: Path) -> dict[bytes, tuple[object, ...]]:
    """Per file under ``path`` in the repository's only snapshot: its metadata, fingerprint
    and the length of each of its chunks. The repositories have the same chunker (cutting
    parameters and seed: ``init --copy-chunker-params``) but their own keys, so equal chunk
    lengths mean the same chunks, as one repository's equal tree ids would."""
    from bcdr.actions.common import open_repo
    from bcdr.repository.tree import DIR, FILE, decode_tree

    opened = open_repo(str(repo), env=ENV)
    try:
        opened.load_index()
        [snap] = opened.list_snapshots()
        out: dict[bytes, tuple[object, ...]] = {}
        stack = [(bytes.fromhex(snap.tree), b"")]
        root = os.fsencode(path.resolve())
        while stack:
            tree, rel = stack.pop()
            for node in decode_tree(opened.load_blob(tree), "tree"):
                p = rel + b"/" + node.name
                if node.type == DIR and node.subtree is not None:
                    if root.startswith(p) or p.startswith(root):
                        stack.append((node.subtree, p))
                elif node.type == FILE and p.startswith(root):
                    lengths = []
                    for blob in node.content:
                        loc = opened.index.lookup(blob)
                        lengths.append(loc.raw_len if loc else -1)
                    meta = (node.size, node.mtime_ns, node.mode, node.digest)
                    out[p] = (*meta, tuple(lengths))
        return out
    finally:
        opened.close()


def _fresh(repo: Path, like: Path | None = None) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    cmd = [*BCDR, "init", "-q", "--repo", str(repo), "--encrypt"]
    if like is not None:
        cmd += ["--copy-chunker-params", "--from-repo", str(like)]
    env = {**ENV, "BCDR_FROM_PASSWORD": PASSWORD}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


def bench_shard_counts(out: Path, rounds: int, shape: str = "small") -> dict[str, object]:
    corpus = out / f"shard-corpus-{shape}"
    if not corpus.exists():
        subprocess.run([*CORPUS, "make", str(corpus), "1.0", shape], check=True)
    kinds = ["unsharded", *(f"shards={n}" for n in SHARDS)]
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    cpus: dict[str, list[float]] = {k: [] for k in kinds}
    same: dict[str, list[bool]] = {k: [] for k in kinds}
    chunker = out / "shard-chunker"  # its cutting parameters and seed, for every repository
    _fresh(chunker)
    reference: dict[bytes, tuple[object, ...]] | None = None
    if shape == "small":
        rounds *= SMALL_ROUNDS
    # Not counted: the first backup after the corpus was written or read by another part
    # took up to 1.6 times the CPU of the next ones (page cache, the interpreter's caches).
    warm = out / "shard-repo-warm"
    _fresh(warm, chunker)
    _run([*BCDR, "backup", "-q", "--repo", str(warm), "--job", "b", str(corpus)])
    shutil.rmtree(warm, ignore_errors=True)
    for r in range(rounds):
        order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
        for kind in order:
            repo = out / f"shard-repo-{kind}"
            _fresh(repo, chunker)
            cmd = [*BCDR, "backup", "-q", "--repo", str(repo), "--job", "b", str(corpus)]
            if kind != "unsharded":
                cmd += ["--shards", kind.split("=")[1]]
            os.sync()
            wall, cpu, _ = _run(cmd)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
            files = _files(repo, corpus)
            if reference is None:
                reference = files
            same[kind].append(files == reference and len(files) > 0)
            shutil.rmtree(repo, ignore_errors=True)
    base_cpu = statistics.median(cpus["unsharded"])
    base_wall = statistics.median(walls["unsharded"])
    shutil.rmtree(chunker, ignore_errors=True)
    return {
        "shape": shape,
        "corpus_bytes": sum(f.stat().st_size for f in corpus.rglob("*") if f.is_file()),
        "rounds": rounds,
        "rows": [
            {
                "kind": k,
                "wall_s": round(statistics.median(walls[k]), 2),
                "cpu_s": round(statistics.median(cpus[k]), 2),
                # medians of each round's ratio: a round's backups ran side by side, so a
                # slower spell of the VM weighs on both sides of its ratio
                "cpu_ratio": _round_ratio(cpus[k], cpus["unsharded"]),
                "wall_ratio": _round_ratio(walls[k], walls["unsharded"]),
                "cpu_ratio_of_medians": round(statistics.median(cpus[k]) / base_cpu, 3),
                "wall_ratio_of_medians": round(statistics.median(walls[k]) / base_wall, 3),
                "same_tree": all(same[k]),
            }
            for k in kinds
        ],
    }


def _round_ratio(values: list[float], bases: list[float]) -> float:
    return round(statistics.median(v / b for v, b in zip(values, bases, strict=True)), 3)


def _many_files(root: Path, count: int) -> None:
    if (root / ".complete").exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    for i in range(count):
        folder = root / f"d{i // 1000:05d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i % 1000:03d}").write_bytes(i.to_bytes(8, "little") * 12 + b"bcdr")
    (root / ".complete").write_bytes(b"")


def bench_commit_cost(out: Path) -> list[dict[str, float]]:
    rows = []
    for files in COMMIT_FILES:
        source = out / f"shard-files-{files}"
        _many_files(source, files)
        for shards in COMMIT_SHARDS:
            repo = out / "shard-commit-repo"
            _fresh(repo)
            base = ["--repo", str(repo)]
            wall_plan, _, text = _run(
                [
                    *BCDR,
                    "shard",
                    "plan",
                    *base,
                    "--job",
                    "f",
                    "--shards",
                    str(shards),
                    "--json",
                    str(source),
                ]
            )
            import json

            run = json.loads(text)["run"]
            started = time.monotonic()
            procs = []
            for i in range(shards):  # two at a time: this machine's cores
                procs.append(
                    subprocess.Popen(
                        [*BCDR, "shard", "run", "-q", *base, "--run", run, "--index", str(i)],
                        env=ENV,
                    )
                )
                if len(procs) == 2:
                    procs.pop(0).wait()
            for p in procs:
                p.wait()
            wall_shards = time.monotonic() - started
            wall_commit, cpu_commit, _ = _run([*BCDR, "shard", "commit", "-q", *base, "--run", run])
            rows.append(
                {
                    "files": files,
                    "shards": shards,
                    "plan_s": round(wall_plan, 2),
                    "shards_s": round(wall_shards, 2),
                    "commit_s": round(wall_commit, 2),
                    "commit_cpu_s": round(cpu_commit, 2),
                    "commit_us_per_file": round(wall_commit / files * 1e6, 1),
                }
            )
            shutil.rmtree(repo, ignore_errors=True)
            print(f"  {rows[-1]}", flush=True)
    return rows


#: The slow-metadata walk: files (100 per folder) and the wait of each stat (seconds).
SLOW_FILES = int(os.environ.get("BENCH_SLOW_FILES", "2000"))
SLOW_DELAY = float(os.environ.get("BENCH_SLOW_DELAY", "0.0005"))
SLOWFS = Path(__file__).resolve().parent.parent / "tests" / "slowfs.py"


def bench_slow_metadata(out: Path, rounds: int) -> dict[str, object]:
    """Walks over a filesystem whose every stat waits SLOW_DELAY (tests/slowfs.py through the
    real FUSE, as an NFS or Lustre client waits for its server): the plan of a sharded run
    and a no-change backup (nothing read, every file stat'ed), each with the stats taken
    one at a time (``BCDR_STAT_AHEAD=0``) and ahead (bcdr/archive/statahead.py), alternating;
    the ratio of each round's two times, and its median."""
    source = out / f"slow-source-{SLOW_FILES}"
    if not (source / ".complete").exists():
        shutil.rmtree(source, ignore_errors=True)
        for i in range(SLOW_FILES):
            folder = source / f"d{i // 100:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"f{i % 100:02d}").write_bytes(i.to_bytes(8, "little") * 12)
        (source / ".complete").write_bytes(b"")
    mnt = out / "slow-mnt"
    subprocess.run(["fusermount", "-u", "-z", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    mnt.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(SLOWFS), str(source), str(mnt), str(SLOW_DELAY)])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tests/slowfs.py did not mount (is Debian's fuse installed?)")
            time.sleep(0.05)
        repo = out / "slow-repo"
        _fresh(repo)
        base = [*BCDR, "backup", "-q", "--repo", str(repo), "--job", "j", str(mnt)]
        _run(base)  # the parent: the timed backups find every file unchanged
        plan = [
            *BCDR,
            "shard",
            "plan",
            "-q",
            "--repo",
            str(repo),
            "--job",
            "p",
            "--shards",
            "4",
            str(mnt),
        ]
        times: dict[str, list[float]] = {}
        for r in range(rounds):
            for what, cmd in (("plan", plan), ("no-change backup", base)):
                for ahead in ("0", "") if r % 2 == 0 else ("", "0"):
                    started = time.monotonic()
                    done = subprocess.run(
                        cmd, env={**ENV, "BCDR_STAT_AHEAD": ahead}, capture_output=True
                    )
                    if done.returncode != 0:
                        raise RuntimeError(f"{what} failed: {done.stderr.decode()[-2000:]}")
                    key = f"{what}, {'one at a time' if ahead == '0' else 'ahead'}"
                    times.setdefault(key, []).append(time.monotonic() - started)
        shutil.rmtree(repo, ignore_errors=True)
    finally:
        subprocess.run(["fusermount", "-u", "-z", str(mnt)], check=False)
        proc.wait(timeout=30)
    rows = {}
    for what in ("plan", "no-change backup"):
        serial, ahead = times[f"{what}, one at a time"], times[f"{what}, ahead"]
        rows[what] = {
            "one_at_a_time_s": round(statistics.median(serial), 2),
            "ahead_s": round(statistics.median(ahead), 2),
            "ratio": _round_ratio(ahead, serial),
        }
        print(f"  {what}: {rows[what]}", flush=True)
    return {"files": SLOW_FILES, "stat_wait_s": SLOW_DELAY, "rounds": rounds, "rows": rows}


def bench_shards(out: Path, rounds: int) -> dict[str, object]:
    counts = {}
    for shape in ("large", "small"):
        counts[shape] = bench_shard_counts(out, rounds, shape)
        for row in counts[shape]["rows"]:  # type: ignore[attr-defined]
            print(f"  {shape}: {row}", flush=True)
    print(f"  walks over a filesystem whose stats wait {SLOW_DELAY * 1000:g} ms:", flush=True)
    slow = bench_slow_metadata(out, rounds)
    return {"counts": counts, "commit": bench_commit_cost(out), "slow_metadata": slow}


if __name__ == "__main__":
    target = Path(sys.argv[1]) if sys.argv[1:] else Path("bench/out")
    target.mkdir(parents=True, exist_ok=True)
    print(bench_shards(target, int(os.environ.get("BENCH_ROUNDS", "2"))))
