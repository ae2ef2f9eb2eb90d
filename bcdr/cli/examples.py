"""The examples that end each subcommand's ``--help`` (those without their own ``epilog``)."""

from __future__ import annotations

EXAMPLES: dict[str, list[str]] = {
    "init": [
        "BCDR_PASSWORD_FILE=/etc/bcdr/pw bcdr init --repo /backups/main --encrypt",
        "bcdr init --repo azure://acct/backups/team --azure-sas-env BCDR_SAS --encrypt",
        "bcdr init --plan plans/quickstart.yaml              # the repository a plan declares",
    ],
    "snapshots": [
        "bcdr snapshots --repo /backups/main",
        "bcdr snapshots --repo /backups/main --job ckpt --json",
        "bcdr snapshots --plan plans/quickstart.yaml",
    ],
    "ls": [
        "bcdr ls --repo /backups/main latest",
        "bcdr ls --repo /backups/main 1c48b7aa /data/ckpt --json",
    ],
    "check": [
        "bcdr check --repo /backups/main                     # structure: trees, index, packs",
        "bcdr check --repo /backups/main --read-data         # and every byte",
        "bcdr check --repo /backups/main --read-data-subset 5  # a random 5% of the data",
    ],
    "forget": [
        "bcdr forget --repo /backups/main --job ckpt --keep-daily 7 --keep-weekly 4 --dry-run",
        "bcdr forget --repo /backups/main --keep-last 10 && bcdr prune --repo /backups/main",
    ],
    "prune": [
        "bcdr prune --repo /backups/main --dry-run",
        "bcdr prune --repo /backups/main --max-unused 5 --grace 1h",
    ],
    "unlock": [
        "bcdr unlock --repo /backups/main                    # stale locks only",
        "bcdr unlock --repo /backups/main --remove-all       # when certain nothing runs",
    ],
    "validate": [
        "bcdr validate plans/quickstart.yaml",
        "bcdr validate plans/*.yaml",
    ],
    "plan": [
        "bcdr plan init > plans/mine.yaml                    # a commented sample plan",
        "bcdr plan plans/quickstart.yaml                     # what it will do, and when",
    ],
    "run": [
        "bcdr run plans/quickstart.yaml                      # every job, now",
        "bcdr run plans/quickstart.yaml --job checkpoints --dry-run",
    ],
    "disk-snapshots": [
        "bcdr disk-snapshots plans/examples/ml-team-azure.yaml --job training-vm-disks",
        "bcdr disk-snapshots plans/examples/ml-team-azure.yaml --json",
    ],
    "drill": [
        "bcdr drill plans/quickstart.yaml",
        "bcdr drill plans/quickstart.yaml --drill restore-checkpoints --json",
    ],
    "repair": [
        "bcdr check --repo /backups/main                     # says what to repair",
        "bcdr repair index --repo /backups/main --dry-run",
        "bcdr repair index --repo /backups/main && bcdr repair snapshots --repo /backups/main",
    ],
    "tick": [
        "bcdr tick plans/quickstart.yaml                     # from cron or a timer",
        "bcdr tick plans/*.yaml --quiet --log-format json",
    ],
    "status": [
        "bcdr status plans/quickstart.yaml                   # exit 4 when an RPO is missed",
        "bcdr status plans/quickstart.yaml --json",
    ],
    "metrics": [
        "bcdr metrics plans/quickstart.yaml                  # print them",
        "bcdr metrics plans/*.yaml -o /var/lib/node_exporter/textfile/bcdr.prom",
        "bcdr metrics plans/quickstart.yaml --write          # to the plan's metrics_textfile",
    ],
    "schedule": [
        "bcdr schedule install plans/quickstart.yaml --systemd --user",
        "bcdr schedule install plans/quickstart.yaml --cron --every 5",
        "bcdr schedule run plans/quickstart.yaml             # as a daemon",
        "bcdr schedule rebuild plans/quickstart.yaml         # a new host takes over",
    ],
}


def epilog(name: str) -> str | None:
    lines = EXAMPLES.get(name)
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None
