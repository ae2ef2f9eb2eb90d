"""What every action needs: the password from the environment, and an opened repository."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from bcdr import retrybudget
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.errors import BcdrError, PasswordRequired, RepositoryNotFound
from bcdr.password import PASSWORD_ENV, PASSWORD_FILE_ENV, read_password
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.repo import Repository
from bcdr.storage.azureauth import AzureAuth
from bcdr.storage.url import StorageSpec, open_storage
from bcdr.storage.wrap import MeteredStorage, Transfer

if TYPE_CHECKING:  # the plan model is loaded by plan commands; --repo ones never need it
    from bcdr.compliance.records import Facts
    from bcdr.plan.model import Plan
    from bcdr.plan.model import Repository as PlanRepository


def open_repo(
    where: StorageSpec | str, *, clock: Clock | None = None, env: Mapping[str, str] | None = None
) -> Repository:
    """Open the repository at ``where`` (credential variables are read from ``env`` too)."""
    storage = open_storage(where, env=env)
    return Repository.open(storage, password=lambda: read_password(env), clock=clock)


#: How long recording a failed run may retry: the storage may be the reason it failed.
FAILURE_RECORD_BUDGET_S = 30.0


def record_failure(repo: Repository, facts: Facts, context: RunContext) -> str | None:
    """A ``failed`` evidence record of a run that began (its id), or None when even that
    cannot be written within FAILURE_RECORD_BUDGET_S: the caller says the run failed anyway."""
    from bcdr.compliance.evidence import write_record  # only runs that write records need it

    try:
        with retrybudget.capped(FAILURE_RECORD_BUDGET_S):
            return write_record(repo, facts, context=context, result="failed")
    except BcdrError:
        return None


def transfer(repo: Repository, direction: Literal["up", "down"]) -> Transfer | None:
    """Bytes uploaded or downloaded since the repository was opened, with their rate."""
    storage = repo.storage
    if not isinstance(storage, MeteredStorage):
        return None
    return storage.uploaded if direction == "up" else storage.downloaded


def plan_storage_spec(declared: PlanRepository) -> StorageSpec:
    """How to reach a repository a plan declares (its url is already resolved to the plan's
    folder by the loader)."""
    from bcdr.plan.model import Credential

    cred = declared.credential
    auth = AzureAuth()
    if isinstance(cred, Credential):
        if cred.connection_string_env:
            auth = AzureAuth("connection_string", cred.connection_string_env.name)
        elif cred.account_key_env:
            auth = AzureAuth("account_key", cred.account_key_env.name)
        elif cred.sas_env:
            auth = AzureAuth("sas", cred.sas_env.name)
    return StorageSpec(
        declared.url,
        auth=auth,
        endpoint=declared.endpoint,
        tier=declared.tier,
        connections=declared.connections,
        immutable_days=declared.immutability.days if declared.immutability else None,
        immutable_mode=declared.immutability.mode if declared.immutability else "locked",
    )


def password_env(repo: PlanRepository) -> dict[str, str]:
    enc = repo.encryption
    if enc is None:
        return {}
    if enc.password_env is not None:
        value = os.environ.get(enc.password_env.name)
        if not value:
            raise PasswordRequired(
                f"environment variable {enc.password_env.name} is not set or empty",
                hint="the plan's encryption.password_env names it; set it to the password",
            )
        return {PASSWORD_ENV: value}
    return {PASSWORD_FILE_ENV: str(enc.password_file)}


def open_plan_repo(plan: Plan, name: str, clock: Clock | None = None) -> Repository:
    """Open the plan's repository ``name`` (RepositoryNotFound when it does not exist)."""
    declared = plan.repositories[name]
    env = password_env(declared)
    storage = open_storage(plan_storage_spec(declared))
    return Repository.open(storage, password=lambda: read_password(env), clock=clock)


def open_or_init(
    plan: Plan, name: str, clock: Clock | None = None, *, chunker: ChunkerParams | None = None
) -> tuple[Repository, str]:
    """Open the plan's repository ``name``, creating it when it does not exist yet (cutting
    files with ``chunker``, given for a copy's destination); the second value is a note
    saying it was created (empty otherwise)."""
    try:
        return open_plan_repo(plan, name, clock), ""
    except RepositoryNotFound:
        env = password_env(plan.repositories[name])
        storage = open_storage(plan_storage_spec(plan.repositories[name]))
        repo = Repository.init(
            storage, password=read_password(env) if env else None, chunker=chunker, clock=clock
        )
        return repo, f"created repository {name!r} at {storage.url}"


def run_context(plan: Plan, job: str, started: str | None = None) -> RunContext:
    """What an evidence record says about a run of ``job`` of ``plan``: the plan, its file's
    digest, the job, when it started, and its targets as the plan writes them."""
    targets: dict[str, str] = {}
    spec = plan.backups.get(job) or plan.snapshots.get(job)
    drill = plan.drills.get(job)
    if drill is not None:
        targets["rto"] = drill.rto.text
        spec = plan.backups.get(drill.backup or "") or plan.snapshots.get(drill.snapshot or "")
    if spec is not None and spec.rpo is not None:
        targets["rpo"] = spec.rpo.text
    return RunContext(plan.name, plan.digest or None, job, started, targets or None)
