"""The plan model: frozen dataclasses whose fields carry their documentation and an example.

This is the single source: ``schema`` validates YAML against these classes, ``docs`` generates
``docs/plans.md`` and the sample plan of ``bcdr plan init`` from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bcdr.plan.types import (
    DiskId,
    Duration,
    EnvName,
    Percent,
    Schedule,
    SubscriptionId,
    TimeOfDay,
    Timezone,
    Weekday,
)
from bcdr.retention import Policy

Redundancy = Literal["LRS", "ZRS", "GRS", "RAGRS", "GZRS", "RAGZRS"]
Tier = Literal["hot", "cool", "cold"]


def spec(doc: str, *, example: Any = None, default: Any = MISSING, **rules: Any) -> Any:
    """A field with its reference text, an example for the sample plan, and rules (min, max,
    min_items) the validator enforces. Without a default the field is required."""
    meta = {"doc": doc, "example": example, **rules}
    if isinstance(default, (list, dict, tuple)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Credential:
    """How bcdr authenticates to Azure Storage. Give at most one; none means the default
    chain (managed identity, workload identity, Azure CLI)."""

    connection_string_env: EnvName | None = spec(
        "Environment variable holding a connection string.", default=None
    )
    account_key_env: EnvName | None = spec(
        "Environment variable holding the storage account key.", default=None
    )
    sas_env: EnvName | None = spec("Environment variable holding a SAS token.", default=None)


@dataclass(frozen=True, kw_only=True)
class Encryption:
    """Where the repository password comes from (one of the two). Never the password itself."""

    password_env: EnvName | None = spec(
        "Environment variable holding the password.", example="BCDR_PASSWORD", default=None
    )
    password_file: str | None = spec(
        "File holding the password (relative to the plan's folder).", default=None
    )


@dataclass(frozen=True, kw_only=True)
class Immutability:
    """Write-once protection, on Azure, of everything a snapshot needs (docs/immutability.md):
    each object gets a version-level immutability policy when written, extended while a
    snapshot needs it. The container must have version-level immutability support."""

    days: int = spec(
        "How long each object stays protected after it is written or last extended; forget and "
        "prune wait for it to expire.",
        example=30,
        min=1,
        max=146000,
    )
    mode: Literal["locked", "unlocked"] = spec(
        "`locked`: no one can shorten or remove a policy, not even the account's owner. "
        "`unlocked`: whoever may set policies can (to try it out first).",
        default="locked",
    )


ARM_TOKEN_DOC = (
    "Environment variable holding an ARM access token "
    "(`az account get-access-token --query accessToken`); default: the default credential "
    "chain (managed identity, workload identity, environment, Azure CLI)."
)
ARM_ENDPOINT_DOC = (
    "Resource Manager endpoint, for a sovereign cloud (default `https://management.azure.com`)."
)


@dataclass(frozen=True, kw_only=True)
class Management:
    """Read access to Azure Resource Manager, so each run checks the storage account's real
    region, redundancy and secondary region against the plan (role: Reader on the account)."""

    subscription_id: SubscriptionId = spec("Subscription of the storage account.")
    resource_group: str = spec("Resource group of the storage account.")
    token_env: EnvName | None = spec(ARM_TOKEN_DOC, default=None)
    endpoint: str | None = spec(ARM_ENDPOINT_DOC, default=None)


@dataclass(frozen=True, kw_only=True)
class Repository:
    """Where backups are stored."""

    url: str = spec(
        "A folder (relative to the plan's folder), `file:///path`, or "
        "`azure://ACCOUNT/CONTAINER[/PREFIX]`.",
        example="../.bcdr/repo",
    )
    region: str | None = spec(
        "Azure region the repository lives in (`westeurope`); checked against `residency`. "
        "Required under a `residency` rule; for a local repository, the region of the machine "
        "or disk it is on.",
        example="westeurope",
        default=None,
    )
    redundancy: Redundancy = spec(
        "Azure storage redundancy; geo-redundant kinds also place data in the paired region.",
        default="LRS",
    )
    tier: Tier = spec("Access tier for data packs (Azure).", default="hot")
    credential: Literal["default"] | Credential = spec(
        "`default`, or one of `connection_string_env`, `account_key_env`, `sas_env` (Azure).",
        default="default",
    )
    endpoint: str | None = spec(
        "Blob endpoint override, for an emulator or a sovereign cloud (Azure).", default=None
    )
    connections: int | None = spec(
        "Parallel connections for uploads and downloads (Azure; default 8).",
        default=None,
        min=1,
        max=256,
    )
    management: Management | None = spec(
        "Verify the account's region and redundancy through Resource Manager before each run "
        "(Azure); without it the region is recorded as declared, not verified.",
        default=None,
    )
    encryption: Encryption | None = spec(
        "Encrypt the repository (AES-256-GCM) with a password from the environment or a file.",
        default=None,
    )
    immutability: Immutability | None = spec(
        "Protect what snapshots need from deletion and overwriting for a number of days "
        "(Azure version-level immutability).",
        default=None,
    )


@dataclass(frozen=True, kw_only=True)
class Residency:
    """Where data may live. Every repository, snapshot copy and drill scratch region must be
    inside, including geo-redundant secondaries."""

    allowed_regions: tuple[str, ...] | None = spec("Azure regions data may live in.", default=None)
    allowed_geographies: tuple[str, ...] | None = spec(
        "Azure geographies data may live in (`Europe`, `United States`).",
        example=["Europe"],
        default=None,
    )


@dataclass(frozen=True, kw_only=True)
class Retention:
    """Which recovery points to keep; the rest are forgotten after each run."""

    keep_last: int | None = spec("Keep the newest N.", default=None, min=0, max=100000)
    keep_hourly: int | None = spec("Keep the newest of each of N hours.", default=None, min=0)
    keep_daily: int | None = spec(
        "Keep the newest of each of N days.", example=7, default=None, min=0
    )
    keep_weekly: int | None = spec(
        "Keep the newest of each of N ISO weeks.", example=4, default=None, min=0
    )
    keep_monthly: int | None = spec(
        "Keep the newest of each of N months.", example=6, default=None, min=0
    )
    keep_yearly: int | None = spec("Keep the newest of each of N years.", default=None, min=0)
    keep_within: Duration | None = spec("Keep everything newer than this.", default=None)

    def keeps_something(self) -> bool:
        return self.policy().keeps_something()

    def policy(self) -> Policy:
        within = self.keep_within
        return Policy(
            last=self.keep_last or 0,
            hourly=self.keep_hourly or 0,
            daily=self.keep_daily or 0,
            weekly=self.keep_weekly or 0,
            monthly=self.keep_monthly or 0,
            yearly=self.keep_yearly or 0,
            within=within.delta if within else None,
            within_text=within.text if within else "",
        )


@dataclass(frozen=True, kw_only=True)
class Timing:
    """When a job runs (shared by every kind of job)."""

    schedule: Schedule = spec(
        "When the job runs. Shorthands fire at a time spread per job inside 01:00-05:00 "
        "so a fleet does not hit storage at once; `at` and `on` pin it.",
        example="daily",
    )
    at: TimeOfDay | None = spec("Pin the time of day of a shorthand schedule.", default=None)
    on: Weekday | None = spec("Pin the day of a `weekly` schedule.", default=None)


@dataclass(frozen=True, kw_only=True)
class SlurmSettings:
    """What ``sbatch`` is given for the job array and the job after it."""

    partition: str | None = spec("Slurm partition (sbatch --partition).", default=None)
    account: str | None = spec("Slurm account (sbatch --account).", default=None)
    time_limit: str | None = spec(
        "Time limit of each task (sbatch --time), e.g. `4:00:00`.", example="4:00:00", default=None
    )
    cpus_per_task: int | None = spec(
        "CPUs of each task (sbatch --cpus-per-task).", default=None, min=1, max=4096
    )
    output: str | None = spec(
        "Where each task's output goes (sbatch --output), on a filesystem the nodes share.",
        example="/shared/logs/bcdr-%x-%A_%a.out",
        default=None,
    )
    extra_args: tuple[str, ...] = spec(
        "Other sbatch arguments, e.g. `--qos=backup`.", example=["--qos=backup"], default=()
    )


@dataclass(frozen=True, kw_only=True)
class ScaleOut:
    """One backup or restore spread over several processes or Slurm nodes
    (docs/scale-out.md). The source, a restore's target and a local repository must be on a
    filesystem every node mounts, at the same paths."""

    shards: int = spec(
        "How many parts: shards of a backup, parts of a restore.", example=8, min=1, max=1000
    )
    executor: Literal["local", "slurm"] = spec(
        "`local`: processes on this machine; `slurm`: a job array submitted with sbatch.",
        default="local",
    )
    slurm: SlurmSettings | None = spec("sbatch settings (executor slurm).", default=None)


@dataclass(frozen=True, kw_only=True)
class BackupJob(Timing):
    """File trees backed up incrementally into a repository."""

    paths: tuple[str, ...] = spec(
        "Folders or files to back up (relative to the plan's folder).",
        example=["../demo/checkpoints"],
        min_items=1,
    )
    repository: str = spec("Name of a repository of this plan.", example="local")
    exclude: tuple[str, ...] = spec(
        "Glob patterns to leave out (`*.tmp`, `**/.cache/**`).", example=["*.tmp"], default=()
    )
    rpo: Duration | None = spec(
        "Recovery point objective: the newest good backup is never older than this.",
        example="26h",
        default=None,
    )
    retention: Retention | None = spec("What to keep.", default=None)
    copy_to: tuple[str | CopyTarget, ...] = spec(
        "Repositories (names) each new snapshot is copied to after the backup (3-2-1: "
        "another region or account), with the snapshots a failed copy missed; or "
        "`{repository: NAME, retention: {...}}` to keep another set there.",
        default=(),
    )
    scale_out: ScaleOut | None = spec(
        "Read the backup with several processes or Slurm tasks, committed as one snapshot "
        "(`bcdr backup --shards`). `bcdr run` waits for the shards (with `executor: slurm`, "
        "by asking Slurm about the job array), commits here, then applies retention and "
        "copies as after any backup.",
        default=None,
    )

    def copy_targets(self) -> list[CopyTarget]:
        """``copy_to`` with every entry as a CopyTarget (a bare name keeps the job's
        retention)."""
        return [CopyTarget(repository=t) if isinstance(t, str) else t for t in self.copy_to]


@dataclass(frozen=True, kw_only=True)
class CopyTarget:
    """A repository a backup job's snapshots are copied to."""

    repository: str = spec("Name of a repository of this plan.", example="offsite")
    retention: Retention | None = spec(
        "What to keep there (default: the job's own retention).", default=None
    )


@dataclass(frozen=True, kw_only=True)
class CopyJob(Timing):
    """A repository's snapshots copied to others on a schedule of its own (3-2-1), whoever
    made them: the new ones each run, and those an earlier run missed. For snapshots this
    plan's backup jobs make, their `copy_to` copies each one right after it is made."""

    repository: str = spec("Name of the repository to copy from.", example="local")
    to: tuple[str | CopyTarget, ...] = spec(
        "Repositories to copy to: names, or `{repository: NAME, retention: {...}}` to keep "
        "a set of their own there.",
        example=["offsite"],
        min_items=1,
    )
    jobs: tuple[str, ...] = spec(
        "Copy only the snapshots of these jobs (the names snapshots carry); default: all.",
        default=(),
    )
    rpo: Duration | None = spec(
        "Each snapshot must reach every destination within this of its time.", default=None
    )

    def copy_targets(self) -> list[CopyTarget]:
        return [CopyTarget(repository=t) if isinstance(t, str) else t for t in self.to]


@dataclass(frozen=True, kw_only=True)
class DiskSnapshotJob(Timing):
    """Incremental snapshots of Azure managed disks, optionally copied to other regions."""

    disks: tuple[DiskId, ...] = spec("Managed-disk resource ids.", min_items=1)
    region: str = spec("Region of the disks.")
    copy_to: tuple[str, ...] = spec("Regions to copy each new snapshot to.", default=())
    consistency: Literal["crash", "application"] = spec(
        "`application` takes a VM restore point covering the VM's disks at once.",
        default="crash",
    )
    rpo: Duration | None = spec("Recovery point objective.", default=None)
    retention: Retention | None = spec(
        "What to keep, per disk and region (at most 500 snapshots per disk, Azure's limit).",
        default=None,
    )
    resource_group: str | None = spec(
        "Resource group the snapshots (and copies, restore points) go in; default: each "
        "disk's own.",
        default=None,
    )
    evidence: str | None = spec(
        "Repository (name) that keeps this job's evidence records; default: the plan's only "
        "repository.",
        default=None,
    )
    timeout: Duration = spec(
        "Longest wait for one Azure operation (a snapshot, a restore point, a copy); a copy "
        "still running then is awaited by the next run.",
        default=Duration(6 * 3600, "6h"),
    )
    token_env: EnvName | None = spec(ARM_TOKEN_DOC, default=None)
    endpoint: str | None = spec(ARM_ENDPOINT_DOC, default=None)


@dataclass(frozen=True, kw_only=True)
class CheckJob(Timing):
    """A scheduled `bcdr check` of a repository: structure always, and a share of the data."""

    repository: str = spec("Name of a repository of this plan.", example="local")
    read_data: Percent = spec(
        "Share of the stored data read back and verified (`0%` checks structure only).",
        default=Percent(0.0),
    )


@dataclass(frozen=True, kw_only=True)
class PruneJob(Timing):
    """A scheduled `bcdr prune` of a repository: deletes data no snapshot needs, in two
    phases (mark, then sweep after `grace`), without stopping backups."""

    repository: str = spec("Name of a repository of this plan.", example="local")
    max_unused: Percent = spec(
        "Repack packs until at most this share of the stored bytes is unused.",
        default=Percent(10.0),
    )
    grace: Duration = spec(
        "How long marked data waits before a later prune deletes it.",
        default=Duration(3600, "1h"),
    )


@dataclass(frozen=True, kw_only=True)
class Drill(Timing):
    """A scheduled restore that verifies every byte and measures RTO and RPO."""

    backup: str | None = spec(
        "Name of the backup job to restore (or `snapshot`).", example="checkpoints", default=None
    )
    snapshot: str | None = spec("Name of the disk snapshot job to restore.", default=None)
    rto: Duration = spec(
        "Recovery time objective: the restore must finish within this.",
        example="15m",
    )
    sample: Percent = spec(
        "Share of files restored: `100%`, or a random sample with a recorded seed.",
        default=Percent(100.0),
    )
    scratch: str | None = spec(
        "Folder to restore into (default: a temporary folder).", default=None
    )
    scratch_region: str | None = spec("Region for cloud restores (disk drills).", default=None)
    repository: str | None = spec(
        "Restore from this repository (a name): one the backup job copies to (`copy_to`), "
        "for the region-loss drill. Default: the backup job's own.",
        default=None,
    )
    keep: bool = spec("Keep what the drill restored.", default=False)
    compare_source: bool = spec(
        "Compare unchanged source files with the restored bytes; drift is reported.",
        default=False,
    )
    scale_out: ScaleOut | None = spec(
        "Restore with several processes or Slurm tasks (`bcdr restore --shards`): the RTO "
        "of the whole array, from the first part's start until every file is verified in "
        "place. Restores the whole snapshot (no `sample`); the drill waits for Slurm.",
        default=None,
    )


@dataclass(frozen=True, kw_only=True)
class Hooks:
    """Commands run or URLs called (POST) after each job."""

    on_success: str | None = spec("A command, or an http(s) URL.", default=None)
    on_failure: str | None = spec("A command, or an http(s) URL.", default=None)
    pass_env: tuple[EnvName, ...] = spec(
        "Variables a hook command gets although they may hold secrets. Without them, hook "
        "commands run without the variables this plan names (`*_env`), `BCDR_PASSWORD*` "
        "and Azure's credential variables.",
        default=(),
    )


@dataclass(frozen=True, kw_only=True)
class AzureMonitor:
    """Job results and evidence heads sent to Azure Monitor Logs through the Logs Ingestion
    API (docs/monitoring.md): a data collection endpoint, a data collection rule and its
    stream."""

    endpoint: str = spec(
        "The data collection endpoint's logs ingestion URL, "
        "`https://<name>.<region>-1.ingest.monitor.azure.com`.",
        example="https://bcdr-dce.westeurope-1.ingest.monitor.azure.com",
    )
    rule_id: str = spec(
        "The data collection rule's immutable id (`dcr-...`).",
        example="dcr-00000000000000000000000000000000",
    )
    stream: str = spec(
        "The rule's stream for bcdr's rows (`Custom-<table>`).", default="Custom-BcdrEvents"
    )
    token_env: EnvName | None = spec(
        "Environment variable holding an access token for `https://monitor.azure.com`; "
        "default: the default credential chain (managed identity, workload identity, "
        "environment, Azure CLI).",
        default=None,
    )


def secret_env_names(node: object) -> set[str]:
    """The environment variables a plan names as holding secrets: every ``*_env`` field
    anywhere in it (credentials, passwords, tokens)."""
    found: set[str] = set()
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name.endswith("_env") and isinstance(value, EnvName):
                found.add(value.name)
            elif f.name != "pass_env":
                found |= secret_env_names(value)
    elif isinstance(node, dict):
        for value in node.values():
            found |= secret_env_names(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= secret_env_names(value)
    return found


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A backup and recovery plan."""

    version: Literal[1] = spec("Plan format version.", example=1)
    name: str = spec("Name of the plan (letters, digits, `-`, `_`).", example="quickstart")
    repositories: dict[str, Repository] = spec(
        "Repositories by name.", example_name="local", min_items=1, default={}
    )
    timezone: Timezone = spec("Time zone of schedules.", example="UTC", default=Timezone("UTC"))
    residency: Residency | None = spec("Where data may live.", default=None)
    backups: dict[str, BackupJob] = spec(
        "File backup jobs by name.", example_name="checkpoints", default={}
    )
    snapshots: dict[str, DiskSnapshotJob] = spec("Managed-disk snapshot jobs by name.", default={})
    drills: dict[str, Drill] = spec(
        "Restore drills by name.", example_name="restore-checkpoints", default={}
    )
    checks: dict[str, CheckJob] = spec("Repository check jobs by name.", default={})
    prunes: dict[str, PruneJob] = spec("Repository prune jobs by name.", default={})
    copies: dict[str, CopyJob] = spec(
        "Copy jobs by name: a repository's snapshots copied to others on a schedule.",
        default={},
    )
    hooks: Hooks | None = spec("Notifications after each job.", default=None)
    retries: int = spec("Retries of a job after a transient failure.", default=0, min=0, max=20)
    retry_wait: Duration = spec(
        "Wait before the first retry (doubles each time, with jitter).",
        default=Duration(30, "30s"),
    )
    retry_budget: Duration | None = spec(
        "How long one call to Azure Storage or Resource Manager keeps retrying outages and "
        "throttling (backoff with jitter, honouring Retry-After) before the job fails; "
        "default `$BCDR_RETRY_SECONDS`, else 10m. `--retry-budget` overrides it.",
        example="10m",
        default=None,
    )
    catch_up: bool = spec(
        "After missed slots (machine off), run a job once when the scheduler is back; "
        "`false` waits for the next slot.",
        default=True,
    )
    max_parallel: int = spec(
        "Jobs of this plan that may run at once (across processes).", default=1, min=1, max=16
    )
    metrics_textfile: str | None = spec(
        "Write Prometheus textfile-collector metrics here after each scheduled run "
        "(relative to the plan's folder).",
        default=None,
    )
    azure_monitor: AzureMonitor | None = spec(
        "Send each job's result and the evidence heads to Azure Monitor Logs after each "
        "run (rows that cannot be sent are kept and sent with the next).",
        default=None,
    )
    file: Path = field(default=Path("plan.yaml"), metadata={"internal": True})
    digest: str = field(default="", metadata={"internal": True})  # SHA-256 of the file

    @property
    def folder(self) -> Path:
        return self.file.parent

    def job_names(self) -> list[str]:
        """Every job of the plan, kind by kind (``plan/kinds.py``), in plan order."""
        from bcdr.plan.kinds import KINDS

        return [name for k in KINDS for name in getattr(self, k.section)]

    def job(self, name: str) -> tuple[str, Timing]:
        """(kind, job) of the job called ``name``; KeyError if there is none."""
        from bcdr.plan.kinds import kind_of

        k, job = kind_of(self, name)
        return k.name, job
