"""The ``--repo`` option and the options that say how to reach an Azure repository."""

from __future__ import annotations

import argparse
import os

from bcdr.errors import UsageError
from bcdr.storage.azureauth import AzureAuth
from bcdr.storage.url import TIERS, StorageSpec

REPO_ENV = "BCDR_REPO"
CREDENTIAL_FLAGS = (
    ("azure_connection_string_env", "connection_string"),
    ("azure_key_env", "account_key"),
    ("azure_sas_env", "sas"),
)


def add_repo_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repo",
        "-r",
        metavar="URL",
        help=f"repository: a path, file:///path or azure://ACCOUNT/CONTAINER[/PREFIX] "
        f"(default: ${REPO_ENV})",
    )
    p.add_argument(
        "--plan",
        metavar="PLAN",
        help="instead of --repo: the repository a plan declares, with its credential, "
        "endpoint, tier, immutability and password settings",
    )
    p.add_argument(
        "--repository",
        metavar="NAME",
        help="with --plan: which of its repositories (needed when it declares several)",
    )
    g = p.add_argument_group(
        "Azure repositories",
        "Without a credential option bcdr signs in with DefaultAzureCredential (managed "
        "identity, workload identity, Azure CLI). Secrets are read from the environment "
        "variable you name, never from arguments.",
    )
    cred = g.add_mutually_exclusive_group()
    cred.add_argument(
        "--azure-connection-string-env",
        metavar="VAR",
        help="environment variable holding a connection string",
    )
    cred.add_argument(
        "--azure-key-env", metavar="VAR", help="environment variable holding the account key"
    )
    cred.add_argument(
        "--azure-sas-env", metavar="VAR", help="environment variable holding a SAS token"
    )
    g.add_argument(
        "--azure-endpoint",
        metavar="URL",
        help="blob endpoint (Azurite: http://127.0.0.1:10000/devstoreaccount1; sovereign clouds)",
    )
    g.add_argument(
        "--data-tier",
        choices=TIERS,
        help="access tier for new data packs (metadata always goes to Hot); default: the "
        "account's default tier",
    )
    g.add_argument(
        "--connections",
        type=int,
        metavar="N",
        help="parallel uploads/downloads (default 8)",
    )
    g.add_argument(
        "--immutable-days",
        type=int,
        metavar="N",
        help="write every object a snapshot needs with a version-level immutability policy "
        "expiring N days later, and extend it while a snapshot needs it (the container needs "
        "version-level immutability support; docs/immutability.md)",
    )
    g.add_argument(
        "--immutable-mode",
        choices=("locked", "unlocked"),
        default="locked",
        help="locked (default): no one can shorten or remove the policy, not even the "
        "account's owner; unlocked: whoever may set policies can (for trying it out)",
    )


def storage_spec(args: argparse.Namespace) -> StorageSpec:
    """The StorageSpec the options describe; UsageError when no repository is given."""
    if getattr(args, "plan", None):
        if args.repo:
            raise UsageError(
                "give --repo or --plan, not both", hint="--plan takes the URL from the plan"
            )
        return plan_repository(args.plan, args.repository)
    if getattr(args, "repository", None):
        raise UsageError("--repository names a repository of a plan: give --plan too")
    url: str | None = args.repo or os.environ.get(REPO_ENV)
    if not url:
        raise UsageError(
            "no repository given",
            hint=f"pass --repo URL or set {REPO_ENV}, or --plan PLAN [--repository NAME]",
        )
    auth = AzureAuth()
    for attr, kind in CREDENTIAL_FLAGS:
        name = getattr(args, attr, None)
        if name:
            auth = AzureAuth(kind, name)  # type: ignore[arg-type]
    return StorageSpec(
        url,
        auth=auth,
        endpoint=args.azure_endpoint,
        tier=args.data_tier,
        connections=args.connections,
        immutable_days=getattr(args, "immutable_days", None),
        immutable_mode=getattr(args, "immutable_mode", "locked"),
    )


def plan_repository(path: str, name: str | None) -> StorageSpec:
    """The StorageSpec of repository ``name`` of the plan at ``path`` (the only one when
    None). Its password settings become this process's (``BCDR_PASSWORD`` or
    ``BCDR_PASSWORD_FILE``), so every later open of it reads them."""
    from bcdr.actions.common import password_env, plan_storage_spec
    from bcdr.plan.loader import load_plan

    plan = load_plan(path)
    names = sorted(plan.repositories)
    if name is None:
        if len(names) != 1:
            raise UsageError(
                f"{path} declares {len(names)} repositories ({', '.join(names)}): name one "
                "with --repository"
            )
        name = names[0]
    declared = plan.repositories.get(name)
    if declared is None:
        raise UsageError(
            f"{path} declares no repository {name!r}",
            hint=f"its repositories: {', '.join(names) or 'none'}",
        )
    for var in ("BCDR_PASSWORD", "BCDR_PASSWORD_FILE"):
        if declared.encryption is not None:
            os.environ.pop(var, None)
    os.environ.update(password_env(declared))
    return plan_storage_spec(declared)


def named_repo(args: argparse.Namespace) -> StorageSpec | None:
    """The repository the command names, or None when it takes none or none was given."""
    if "repo" not in vars(args):
        return None
    try:
        return storage_spec(args)
    except UsageError:
        return None


def add_from_repo_options(
    p: argparse.ArgumentParser, *, required: bool = True, help_text: str = "repository to copy from"
) -> None:
    """A source repository (``bcdr copy``, ``init --copy-chunker-params``): ``--from-repo``
    and how to reach it."""
    g = p.add_argument_group(
        "source repository",
        "Its password comes from BCDR_FROM_PASSWORD or BCDR_FROM_PASSWORD_FILE.",
    )
    g.add_argument("--from-repo", metavar="URL", required=required, help=help_text)
    cred = g.add_mutually_exclusive_group()
    for flag, what in (
        ("--from-azure-connection-string-env", "a connection string"),
        ("--from-azure-key-env", "the account key"),
        ("--from-azure-sas-env", "a SAS token"),
    ):
        cred.add_argument(flag, metavar="VAR", help=f"environment variable holding {what}")
    g.add_argument("--from-azure-endpoint", metavar="URL", help="the source's blob endpoint")
    g.add_argument(
        "--from-connections", type=int, metavar="N", help="parallel downloads (default 8)"
    )


def from_storage_spec(args: argparse.Namespace) -> StorageSpec:
    """The StorageSpec of ``--from-repo`` and its options."""
    auth = AzureAuth()
    for attr, kind in CREDENTIAL_FLAGS:
        name = getattr(args, f"from_{attr}", None)
        if name:
            auth = AzureAuth(kind, name)  # type: ignore[arg-type]
    return StorageSpec(
        args.from_repo,
        auth=auth,
        endpoint=args.from_azure_endpoint,
        connections=args.from_connections,
    )


def repo_argv(args: argparse.Namespace) -> list[str]:
    """The options that name and reach the repository ``args`` names, for a child bcdr
    (secrets stay in the environment variables they name)."""
    return storage_spec(args).argv()
