"""Open a Storage from a repository URL and its options.

``/path``, ``relative/path`` and ``file:///path`` open a local folder; ``azure://ACCOUNT/
CONTAINER[/PREFIX]`` opens Azure Blob Storage with the credential, endpoint, access tier and
connection count of a :class:`StorageSpec`. Every storage comes back metered (upload and
download rates); remote ones are retried (``wrap.RetryingStorage``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlparse

from bcdr.errors import UsageError
from bcdr.retrybudget import budget_seconds
from bcdr.storage.azureauth import AzureAuth
from bcdr.storage.base import Storage
from bcdr.storage.local import LocalStorage
from bcdr.storage.wrap import MeteredStorage, RetryingStorage, RetryPolicy

TIERS = ("hot", "cool", "cold")


@dataclass(frozen=True)
class StorageSpec:
    """A repository URL and how to reach it. Holds names of secrets, never secrets."""

    url: str
    auth: AzureAuth = field(default_factory=AzureAuth)
    endpoint: str | None = None
    tier: str | None = None
    connections: int | None = None
    base_dir: Path | None = None
    immutable_days: int | None = None  # Azure: every protected object's policy length
    immutable_mode: str = "locked"

    def with_url(self, url: str) -> StorageSpec:
        return replace(self, url=url)

    def argv(self) -> list[str]:
        """The command-line options that name and reach this repository, for a child bcdr
        (a shard, a restore's part); secrets stay in the environment variables named."""
        url = self.url
        if "://" not in url:  # the child may start elsewhere (a Slurm node's folder)
            url = os.path.abspath(os.path.join(self.base_dir, url) if self.base_dir else url)
        out = ["--repo", url]
        if self.auth.kind != "default" and self.auth.env:
            out += [CREDENTIAL_OPTIONS[self.auth.kind], self.auth.env]
        for option, value in (
            ("--azure-endpoint", self.endpoint),
            ("--data-tier", self.tier),
            ("--connections", self.connections),
            ("--immutable-days", self.immutable_days),
        ):
            if value is not None:
                out += [option, str(value)]
        if self.immutable_days is not None and self.immutable_mode != "locked":
            out += ["--immutable-mode", self.immutable_mode]
        return out


#: The option that names a credential's environment variable (bcdr/cli/repoargs.py).
CREDENTIAL_OPTIONS = {
    "connection_string": "--azure-connection-string-env",
    "account_key": "--azure-key-env",
    "sas": "--azure-sas-env",
}


def retry_policy(env: Mapping[str, str]) -> RetryPolicy:
    """The default policy, its total time the retry budget (``bcdr/retrybudget.py``)."""
    return RetryPolicy(max_elapsed=budget_seconds(env))


def open_storage(
    spec: StorageSpec | str,
    *,
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> MeteredStorage:
    """Return the Storage for ``spec``; relative paths resolve against ``base_dir`` (or cwd).

    Raises UsageError for an unknown scheme, a malformed URL or option, or a missing
    credential variable.
    """
    if isinstance(spec, str):
        spec = StorageSpec(spec, base_dir=base_dir)
    env = os.environ if env is None else env
    url = spec.url
    if not url:
        raise UsageError("no repository given", hint="pass --repo URL or set BCDR_REPO")
    parsed = urlparse(url)
    if spec.immutable_days is not None and parsed.scheme != "azure":
        raise UsageError(
            "immutability policies are an Azure Blob Storage feature; this repository is a "
            f"local folder ({url})",
            hint="drop --immutable-days (the plan's immutability:), or make the folder "
            "read-only to the backup host by other means",
        )
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UsageError(
                f"file URL with a host is not supported: {url}",
                hint="use file:///absolute/path",
            )
        return MeteredStorage(LocalStorage(Path(unquote(parsed.path))))
    if parsed.scheme in ("",) or (len(parsed.scheme) == 1 and url[1:2] == ":"):
        path = Path(url).expanduser()
        base = spec.base_dir or base_dir
        if not path.is_absolute() and base is not None:
            path = base / path
        return MeteredStorage(LocalStorage(path.absolute()))
    if parsed.scheme == "azure":
        return MeteredStorage(RetryingStorage(_open_azure(spec, env), retry_policy(env)))
    raise UsageError(
        f"unknown repository URL scheme {parsed.scheme!r} in {url!r}",
        hint="use a path, file:///path or azure://ACCOUNT/CONTAINER[/PREFIX]",
    )


def _open_azure(spec: StorageSpec, env: Mapping[str, str]) -> Storage:
    from bcdr.storage.azure import DEFAULT_CONNECTIONS, AzureBlobStorage
    from bcdr.storage.azureauth import resolve_access

    if spec.tier is not None and spec.tier not in TIERS:
        raise UsageError(f"unknown access tier {spec.tier!r}", hint="use hot, cool or cold")
    if spec.connections is not None and not 1 <= spec.connections <= 256:
        raise UsageError(f"connections must be between 1 and 256, not {spec.connections}")
    if spec.immutable_days is not None and not 1 <= spec.immutable_days <= MAX_IMMUTABLE_DAYS:
        raise UsageError(
            f"immutability must be from 1 to {MAX_IMMUTABLE_DAYS} days (Azure's range), "
            f"not {spec.immutable_days}"
        )
    if spec.immutable_mode not in ("locked", "unlocked"):
        raise UsageError(
            f"immutability mode must be locked or unlocked, not {spec.immutable_mode!r}"
        )
    access = resolve_access(spec.url, spec.auth, endpoint=spec.endpoint, env=env)
    return AzureBlobStorage(
        access,
        tier=spec.tier,
        connections=spec.connections or DEFAULT_CONNECTIONS,
        immutable_days=spec.immutable_days,
        immutable_mode=spec.immutable_mode,
    )


#: The longest time-based retention Azure allows.
MAX_IMMUTABLE_DAYS = 146_000
