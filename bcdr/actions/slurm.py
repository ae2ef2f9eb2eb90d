"""The Slurm executor (docs/scale-out.md): a sharded run's steps as Slurm jobs.

``submit``: one job array whose task ``I`` runs ``bcdr shard run --index I`` (or a restore
part), and one job that runs the commit (or the restore's finish) with
``--dependency=afterok:ARRAY --kill-on-invalid-dep=yes``: it starts only when every task
succeeded, and Slurm removes it when one fails. ``wait``: follows both jobs with ``scontrol``
until they end.

Every Slurm command gets this process's environment (``SLURM_CONF`` included): without it a
client looks the controller up in DNS. The batch scripts hold the command lines only; the
repository's password and credentials reach the tasks as the environment variables this
process has (sbatch's default ``--export=ALL``), never in a script, so a script Slurm keeps
(``scontrol write batch_script``) holds no secret. Prefer ``BCDR_PASSWORD_FILE`` on a shared
filesystem: Slurm keeps a job's environment in its state folder.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bcdr.errors import BcdrError, UsageError

if TYPE_CHECKING:  # a shard's process does not load the plan model
    from bcdr.plan.model import SlurmSettings

#: States a Slurm job or array task ends in (scontrol's JobState).
ENDED = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "REVOKED",
    }
)


@dataclass(frozen=True)
class SlurmOptions:
    """What ``sbatch`` is given besides the script (plan: ``scale_out.slurm``)."""

    partition: str | None = None
    account: str | None = None
    time_limit: str | None = None
    cpus_per_task: int | None = None
    output: str | None = None  # sbatch --output; default: Slurm's (slurm-%A_%a.out here)
    extra_args: tuple[str, ...] = ()

    def sbatch_args(self) -> list[str]:
        out = []
        for flag, value in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--time", self.time_limit),
            ("--cpus-per-task", self.cpus_per_task),
            ("--output", self.output),
        ):
            if value is not None:
                out.append(f"{flag}={value}")
        return out + list(self.extra_args)


def options_of(settings: SlurmSettings | None) -> SlurmOptions:
    """SlurmOptions from a plan's ``scale_out.slurm``."""
    if settings is None:
        return SlurmOptions()
    return SlurmOptions(
        partition=settings.partition,
        account=settings.account,
        time_limit=settings.time_limit,
        cpus_per_task=settings.cpus_per_task,
        output=settings.output,
        extra_args=tuple(settings.extra_args),
    )


@dataclass(frozen=True)
class Submission:
    run: str
    array: str  # the array's job id ("" when no task was left to run)
    commit: str  # the job that runs after every task succeeded ("" when none was submitted)
    indexes: tuple[int, ...]

    @property
    def jobs(self) -> list[str]:
        return [j for j in (self.array, self.commit) if j]


def array_spec(indexes: Iterable[int]) -> str:
    """``0-3,7,9-10``: the indexes as sbatch's --array takes them."""
    spans: list[list[int]] = []
    for i in sorted(set(indexes)):
        if spans and i == spans[-1][1] + 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def bcdr_command(*argv: str) -> str:
    """The shell line that runs bcdr on a node: this Python, so bcdr must be installed at
    the same path there (a shared software folder, as clusters have)."""
    return shlex.join([sys.executable, "-m", "bcdr", *argv])


def _script(line: str) -> str:
    return f"#!/bin/sh\n# submitted by bcdr; see docs/scale-out.md\nexec {line}\n"


def sbatch(args: list[str], script: str, env: dict[str, str] | None = None) -> str:
    """Submit ``script`` (on stdin, never a file a node must see) and return the job id."""
    if shutil.which("sbatch") is None:
        raise UsageError(
            "sbatch was not found: --executor slurm needs Slurm's client commands on this "
            "host (Debian: slurm-client)",
            hint="submit from a login node, or use --executor local",
        )
    r = subprocess.run(
        ["sbatch", "--parsable", *args],
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},  # the tasks get it (sbatch's --export=ALL)
    )
    if r.returncode != 0:
        raise BcdrError(f"sbatch refused the job: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip().split(";")[0]  # "ID" or "ID;cluster"


def submit(
    run: str,
    indexes: Iterable[int],
    task_argv: list[str],
    commit_argv: list[str] | None,
    options: SlurmOptions,
    *,
    name: str,
    task_suffix: str = ' --index "$SLURM_ARRAY_TASK_ID"',
    env: dict[str, str] | None = None,
) -> Submission:
    """Submit ``task_argv`` (bcdr arguments, ``task_suffix`` added: the task's index) as an
    array over ``indexes``, and ``commit_argv`` (if given) as the job that runs after it
    succeeded."""
    chosen = tuple(sorted(set(indexes)))
    base = options.sbatch_args()
    commit_script = _script(bcdr_command(*commit_argv)) if commit_argv is not None else ""
    if not chosen:  # every task has run: the commit alone
        if not commit_script:
            raise UsageError("nothing to submit: no index was given")
        commit = sbatch([f"--job-name=bcdr-{name}-commit", *base], commit_script, env)
        return Submission(run, "", commit, chosen)
    task = bcdr_command(*task_argv) + task_suffix
    array = sbatch(
        [f"--job-name=bcdr-{name}", f"--array={array_spec(chosen)}", *base], _script(task), env
    )
    if not commit_script:
        return Submission(run, array, "", chosen)
    try:
        commit = sbatch(
            [
                f"--job-name=bcdr-{name}-commit",
                f"--dependency=afterok:{array}",
                "--kill-on-invalid-dep=yes",
                *base,
            ],
            commit_script,
            env,
        )
    except BcdrError:
        cancel([array])  # an array nothing would commit
        raise
    return Submission(run, array, commit, chosen)


def cancel(jobs: list[str]) -> None:
    subprocess.run(["scancel", *jobs], capture_output=True, timeout=60, env=os.environ.copy())


# -- following the jobs -----------------------------------------------------------------------

_FIELD = re.compile(r"(\w+)=(\S*)")


@dataclass
class JobState:
    """One line of ``scontrol -o show job``: a job, an array task, or a span of pending
    tasks (``task`` is then None and ``tasks`` names them)."""

    job: str
    state: str
    task: int | None = None
    tasks: str = ""
    node: str = ""
    exit_code: str = ""
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def show_job(job: str) -> list[JobState] | None:
    """The job's (or array's) records, or None when Slurm no longer knows it (it ended
    longer than MinJobAge ago)."""
    r = subprocess.run(
        ["scontrol", "-o", "show", "job", job],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    if r.returncode != 0:
        if "Invalid job id" in r.stderr:
            return None
        raise BcdrError(f"scontrol show job {job}: {r.stderr.strip()}")
    out = []
    for line in r.stdout.splitlines():
        f = dict(_FIELD.findall(line))
        if "JobId" not in f:
            continue
        task = f.get("ArrayTaskId", "")
        node = f.get("NodeList", "")
        out.append(
            JobState(
                job=f["JobId"],
                state=f.get("JobState", "UNKNOWN"),
                task=int(task) if task.isdigit() else None,
                tasks=task,
                node="" if node == "(null)" else node,
                exit_code=f.get("ExitCode", ""),
                reason=f.get("Reason", ""),
            )
        )
    return out


@dataclass
class Outcome:
    tasks: dict[int, JobState] = field(default_factory=dict)  # what Slurm said last, per task
    commit: JobState | None = None

    def failed_tasks(self) -> list[int]:
        return sorted(i for i, t in self.tasks.items() if t.ended and t.state != "COMPLETED")


def _vanished(sub: Submission, outcome: Outcome) -> None:
    """A task cancelled while pending leaves no record (it drops out of the array's pending
    span): one Slurm still knows the array for and has no record of never ran."""
    for i in sub.indexes:
        if i not in outcome.tasks:
            outcome.tasks[i] = JobState(
                job=f"{sub.array}_{i}",
                state="CANCELLED",
                task=i,
                reason="left the queue before it ran",
            )


def _observe(sub: Submission, outcome: Outcome) -> tuple[bool, bool]:
    """Ask Slurm about the array and the commit job once; (array ended, commit ended)."""
    array = show_job(sub.array) if sub.array else []  # None: Slurm forgot it (it ended)
    if array is not None:
        for rec in array:
            if rec.task is not None:
                outcome.tasks[rec.task] = rec
    commit = show_job(sub.commit) if sub.commit else []
    if commit:
        outcome.commit = commit[0]
    array_done = array is None or all(r.ended for r in array)
    if array is not None and array_done:
        _vanished(sub, outcome)
    return array_done, commit is None or not commit or commit[0].ended


def wait(sub: Submission, *, poll: float = 2.0, timeout: float | None = None) -> Outcome:
    """Follow the array and the commit job until both ended (or Slurm forgot them)."""
    outcome = Outcome()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        array_done, commit_done = _observe(sub, outcome)
        if array_done and commit_done:
            return outcome
        if array_done and outcome.failed_tasks():
            # --kill-on-invalid-dep removes the commit job soon; don't wait on Slurm for it
            if sub.commit:
                cancel([sub.commit])
            return outcome
        if deadline is not None and time.monotonic() > deadline:
            raise BcdrError(f"Slurm jobs {', '.join(sub.jobs)} did not end within {timeout:.0f}s")
        time.sleep(poll)
