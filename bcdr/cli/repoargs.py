"""The ``--repo`` option and the options that say how to reach an Azure repository."""

from __future__ import annotations

import argparse
import os
import stat
from urllib.parse import urlparse

from bcdr.errors import BcdrError, UsageError
from bcdr.password import PASSWORD_ENV, PASSWORD_FILE_ENV, read_password
from bcdr.repository.kdf import derive_ahead
from bcdr.storage.azureauth import AzureAuth
from bcdr.storage.url import TIERS, StorageSpec, open_storage

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


def storage_spec(args: argparse.Namespace) -> StorageSpec:
    """The StorageSpec the options describe; UsageError when no repository is given."""
    url: str | None = args.repo or os.environ.get(REPO_ENV)
    if not url:
        raise UsageError("no repository given", hint=f"pass --repo URL or set {REPO_ENV}")
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
    )


def derive_key_ahead(args: argparse.Namespace) -> bool:
    """For a command on a local repository with the password in the environment: read its
    key file and start deriving the key now (scrypt, 0.15 s, in a thread), so that the
    command's modules load meanwhile (bcdr/repository/kdf.py). True when started.

    Azure repositories are left to the command: reading their key file here would cost
    requests, and retries on an unreachable endpoint, before the command even starts. Never
    fails: opening the repository reports whatever is wrong."""
    if "repo" not in vars(args):
        return False  # the command takes no repository
    try:
        spec = storage_spec(args)
        if urlparse(spec.url).scheme == "azure":
            return False
        if not os.environ.get(PASSWORD_ENV):
            # Read ahead only from a regular file: a pipe (BCDR_PASSWORD_FILE=<(...)) or FIFO
            # gives its content once, and opening the repository must read it then.
            path = os.environ.get(PASSWORD_FILE_ENV)
            if not path or not stat.S_ISREG(os.stat(path).st_mode):
                return False
        password = read_password()
        if password is None:
            return False
        storage = open_storage(spec)
        try:
            keys = sorted(info.key for info in storage.list("keys/"))
            return bool(keys) and derive_ahead(storage.get(keys[0]), password)
        finally:
            storage.close()
    except (BcdrError, OSError, ValueError):
        return False
