"""``bench_copy``: ``bcdr copy`` of a repository's snapshots against rclone copying the same
repository folder, local to local and local to Azurite, in the same run.

The source is an encrypted bcdr repository holding two snapshots of the 648 MB tree of the
Azure bench (one checkpoint, four shards, 5,000 small files), the second after the corpus's
day-1 change. bcdr opens, verifies and seals again every chunk (the destination has its own
key), where rclone moves the repository's files as they are: rclone is the floor for bytes
moved, and bcdr's extra work is the price of a copy that is checked and owned by another key.
Each round makes fresh destinations; each command is timed until ``sync`` returns. A rerun of
``bcdr copy`` (nothing new to copy) is timed too.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from azure_rates import (  # beside this file; it puts the repository on sys.path
    ACCOUNT,
    BCDR,
    CORPUS,
    CS,
    PASSWORD,
    Azurite,
    _container_sas_url,
    _timed,
)


def _source(out: Path) -> tuple[Path, int]:
    """The source repository (made once per bench directory) and its size in bytes."""
    repo, tree = out / "copy-src", out / "copy-tree"
    if not (repo / "config").exists():
        shutil.rmtree(repo, ignore_errors=True)
        shutil.rmtree(tree, ignore_errors=True)
        subprocess.run([*CORPUS, "make", str(tree), "1.0", "azure"], check=True)
        env = {**os.environ, "BCDR_PASSWORD": PASSWORD}
        subprocess.run([*BCDR, "init", "-q", "--repo", str(repo), "--encrypt"], env=env, check=True)
        backup = [*BCDR, "backup", "-q", "--repo", str(repo), "--job", "ckpt", str(tree)]
        subprocess.run(backup, env=env, check=True)
        subprocess.run([*CORPUS, "change", str(tree)], check=True)
        subprocess.run(backup, env=env, check=True)
    size = sum(f.stat().st_size for f in repo.rglob("*") if f.is_file())
    return repo, size


def bench_copy(out: Path, rounds: int = 2) -> dict[str, object]:
    if shutil.which("rclone") is None:
        return {"skipped": "rclone not installed (Debian's rclone; `make bench` installs it)"}
    src, size = _source(out)
    server = Azurite(out / "azurite-copy").start()
    per_round: list[dict[str, float]] = []
    env = {
        CS: server.connection_string,
        "BCDR_FROM_PASSWORD": PASSWORD,
        "BCDR_PASSWORD": PASSWORD,
    }
    try:
        for k in range(rounds):
            row: dict[str, float] = {}
            local_dst, rclone_dst = out / f"copy-dst-{k}", out / f"copy-rclone-{k}"
            for path in (local_dst, rclone_dst):
                shutil.rmtree(path, ignore_errors=True)
            az_repo = ["--repo", f"azure://{ACCOUNT}/copy-{k}", "--azure-connection-string-env", CS]
            sas_url = _container_sas_url(server, f"rclone-copy-{k}")
            rc_env = {"RCLONE_CONFIG_AZ_TYPE": "azureblob", "RCLONE_CONFIG_AZ_SAS_URL": sas_url}
            rc = ["rclone", "--transfers", "8", "--checkers", "8"]
            same = ["--from-repo", str(src), "--copy-chunker-params"]
            _timed([*BCDR, "init", "-q", "--repo", str(local_dst), "--encrypt", *same], env)
            _timed([*BCDR, "init", "-q", *az_repo, "--encrypt", *same], env)
            copy = [*BCDR, "copy", "-q", "--from-repo", str(src)]
            order = ["bcdr", "rclone"] if k % 2 == 0 else ["rclone", "bcdr"]
            for tool in order:
                if tool == "bcdr":
                    cmd = [*copy, "--repo", str(local_dst), "all"]
                    row["bcdr_local_s"] = _timed(cmd, env, durable=True)
                    row["bcdr_rerun_s"] = _timed(cmd, env, durable=True)
                else:
                    cmd = [*rc, "copy", str(src), str(rclone_dst)]
                    row["rclone_local_s"] = _timed(cmd, rc_env, durable=True)
            for tool in order:
                if tool == "bcdr":
                    row["bcdr_azure_s"] = _timed([*copy, *az_repo, "all"], env)
                else:
                    cmd = [*rc, "copy", str(src), f"az:rclone-copy-{k}/repo"]
                    row["rclone_azure_s"] = _timed(cmd, rc_env)
            row["local_ratio"] = row["bcdr_local_s"] / row["rclone_local_s"]
            row["azure_ratio"] = row["bcdr_azure_s"] / row["rclone_azure_s"]
            print(
                f"  round {k + 1}: local {row['bcdr_local_s']:.2f} s vs rclone "
                f"{row['rclone_local_s']:.2f} s ({row['local_ratio']:.2f}), rerun "
                f"{row['bcdr_rerun_s']:.2f} s; into Azurite {row['bcdr_azure_s']:.2f} s vs "
                f"rclone {row['rclone_azure_s']:.2f} s ({row['azure_ratio']:.2f})",
                flush=True,
            )
            per_round.append(row)
            for path in (local_dst, rclone_dst):
                shutil.rmtree(path, ignore_errors=True)
    finally:
        server.stop()
    return {
        "repository_bytes": size,
        "rounds": per_round,
        "local_ratio": statistics.median(r["local_ratio"] for r in per_round),
        "azure_ratio": statistics.median(r["azure_ratio"] for r in per_round),
        "rerun_s": statistics.median(r["bcdr_rerun_s"] for r in per_round),
    }


if __name__ == "__main__":
    print(bench_copy(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("bench/out")))
