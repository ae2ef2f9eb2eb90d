"""Where an Azure repository lives and how bcdr signs in to it.

``azure://ACCOUNT/CONTAINER[/PREFIX]`` names the account, container and key prefix. The
credential is :class:`AzureAuth`: the default chain (``DefaultAzureCredential``: environment,
workload identity on AKS, managed identity on VMs, Azure CLI on a laptop), or a connection
string, account key or SAS token read from an environment variable the plan or a flag names.
With neither, Azure's own variables (``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_KEY``,
``AZURE_STORAGE_SAS_TOKEN``) come before the default chain, as they do for ``az``.
Secrets are read here and live only inside the SDK credential object; nothing printable (repr,
errors, ``url``) holds them.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from bcdr.errors import UsageError

AuthKind = Literal["default", "connection_string", "account_key", "sas"]
ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
CONTAINER_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
STORAGE_SCOPE = "https://storage.azure.com/.default"
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (  # Azurite's published development key, not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
KIND_TEXT = {
    "connection_string": "connection string",
    "account_key": "account key",
    "sas": "SAS token",
}
URL_HINT = "write azure://ACCOUNT/CONTAINER[/PREFIX], e.g. azure://mlbackups/checkpoints/team-a"
#: Azure's own variables (the az CLI's, the SDK samples'), in the order they are taken when no
#: credential option (nor a plan's ``credential:``) names one: docs/environment.md.
STANDARD_VARIABLES: tuple[tuple[str, AuthKind], ...] = (
    ("AZURE_STORAGE_CONNECTION_STRING", "connection_string"),
    ("AZURE_STORAGE_KEY", "account_key"),
    ("AZURE_STORAGE_SAS_TOKEN", "sas"),
)
ACCOUNT_VARIABLE = "AZURE_STORAGE_ACCOUNT"
log = logging.getLogger("bcdr.azure")
_announced: set[str] = set()  # standard variables said to be in use, once per process


def standard_auth(env: Mapping[str, str], account: str) -> AzureAuth | None:
    """The credential of the first of Azure's standard variables that is set, or None (the
    default chain). ``AZURE_STORAGE_KEY`` is the key of the URL's account: with
    ``AZURE_STORAGE_ACCOUNT`` naming another account it is refused, not sent elsewhere."""
    for var, kind in STANDARD_VARIABLES:
        if not env.get(var):
            continue
        named = env.get(ACCOUNT_VARIABLE)
        if kind == "account_key" and named and named != account:
            raise UsageError(
                f"${var} is set with ${ACCOUNT_VARIABLE}={named}, but the repository URL names "
                f"account {account!r}",
                where=var,
                hint="use the repository's account, or name its credential with an "
                "--azure-*-env option",
            )
        if var not in _announced:
            _announced.add(var)
            log.info("using the %s in $%s (no credential option given)", KIND_TEXT[kind], var)
        return AzureAuth(kind, var)
    return None


@dataclass(frozen=True)
class AzureAuth:
    """How to sign in: ``default``, or a secret of ``kind`` in the environment variable ``env``."""

    kind: AuthKind = "default"
    env: str | None = None

    def describe(self) -> str:
        if self.kind == "default":
            return (
                "DefaultAzureCredential (environment, workload identity, managed identity, "
                "Azure CLI)"
            )
        return f"the {KIND_TEXT[self.kind]} in ${self.env}"


@dataclass(frozen=True)
class AzureAccess:
    """Account, container, prefix, endpoint and a ready SDK credential. Safe to print."""

    account: str
    container: str
    prefix: str
    endpoint: str
    auth: AzureAuth
    credential: Any = field(repr=False, compare=False)

    @property
    def url(self) -> str:
        tail = f"/{self.prefix}" if self.prefix else ""
        return f"azure://{self.account}/{self.container}{tail}"

    def identity(self, *, ask_token: bool = False) -> str:
        """The identity that was tried, for error messages. With ``ask_token`` and the default
        chain, the signed-in principal's ids are read from its (already cached) token."""
        text = self.auth.describe()
        if ask_token and self.auth.kind == "default":
            who = token_principal(self.credential)
            if who:
                text = f"{who} via DefaultAzureCredential"
        return f"{text} on account {self.account}"

    def sas_permissions(self) -> str | None:
        """The permissions (``sp=``) of the SAS in use, or None when not signed by a SAS. The
        token itself is never returned."""
        from azure.core.credentials import AzureSasCredential

        if not isinstance(self.credential, AzureSasCredential):
            return None
        for part in self.credential.signature.split("&"):
            name, _, value = part.partition("=")
            if name == "sp":
                return value
        return ""

    def auth_hint(self, code: str = "", what: str = "") -> str:
        """What to do about a refused request, for the kind of credential used: a SAS names
        the permission the operation needs and those it has; an identity the role; a key or
        connection string to check it. ``what``: the operation (``put data/...``)."""
        verb = what.split(" ", 1)[0]
        needed = NEEDED_PERMISSION.get(verb)
        sp = self.sas_permissions()
        if sp is not None:
            where = (
                f"the SAS token in ${self.auth.env}"
                if self.auth.kind == "sas"
                else f"the SharedAccessSignature in the connection string in ${self.auth.env}"
            )
            need = f"{needed[0]} ({needed[1]})" if needed else "the operation"
            return (
                f"{where} must allow {need} for this: it allows {sp or 'nothing'!r}. bcdr "
                "needs racwdl (racwl for runs that never delete); also check that it is "
                "unexpired, and the account's firewall admits this network"
            )
        if self.auth.kind == "account_key":
            return f"check that ${self.auth.env} holds a current key of account {self.account}"
        if self.auth.kind == "connection_string":
            return f"check the account key inside the connection string in ${self.auth.env}"
        if code == "AuthorizationPermissionMismatch":
            return (
                "grant this identity the 'Storage Blob Data Contributor' role on the account or "
                "container (docs/azure.md); a role assignment takes a few minutes to apply"
            )
        return (
            "sign in with `az login`, or give the VM or pod a managed or workload identity with "
            "'Storage Blob Data Contributor'; also check the account's firewall admits this network"
        )


#: What each storage operation needs from a SAS: (in words, as ``sp`` letters).
NEEDED_PERMISSION = {
    "put": ("create and write", "cw"),
    "get": ("read", "r"),
    "size": ("read", "r"),
    "exists": ("read", "r"),
    "list": ("list", "l"),
    "delete": ("delete", "d"),
    "create": ("create", "c"),
}


def parse_azure_url(url: str) -> tuple[str, str, str]:
    """``azure://ACCOUNT/CONTAINER[/PREFIX]`` -> (account, container, prefix); UsageError if
    any part breaks Azure's naming rules."""
    parsed = urlparse(url)
    account = parsed.netloc
    parts = [p for p in parsed.path.split("/")]
    container = parts[1] if len(parts) > 1 else ""
    prefix = "/".join(parts[2:]).strip("/")
    if parsed.query or parsed.fragment or parsed.params:
        raise UsageError(
            "an azure:// URL takes no query string",
            where=url.split("?")[0],
            hint="name credentials through the plan or --azure-*-env flags, never in the URL",
        )
    if not ACCOUNT_RE.match(account):
        raise UsageError(
            f"invalid storage account name {account!r} (3-24 lowercase letters and digits)",
            where=url,
            hint=URL_HINT,
        )
    if not CONTAINER_RE.match(container):
        raise UsageError(
            f"invalid container name {container!r} (3-63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit)",
            where=url,
            hint=URL_HINT,
        )
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise UsageError(f"invalid prefix {prefix!r}", where=url, hint=URL_HINT)
    return account, container, prefix


def _secret(auth: AzureAuth, env: Mapping[str, str]) -> str:
    assert auth.env is not None
    value = env.get(auth.env, "").strip()
    if not value:
        raise UsageError(
            f"environment variable {auth.env} is not set or empty",
            where=auth.env,
            hint=f"export {auth.env} with the {KIND_TEXT[auth.kind]}, or name another variable",
        )
    return value


def _connection_string(text: str, name: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise UsageError(
                f"the connection string in ${name} is malformed",
                where=name,
                hint="expected Key=Value pairs separated by ';' (AccountName=...;AccountKey=...)",
            )
        fields[key.strip().lower()] = value.strip()
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        fields.setdefault("accountname", AZURITE_ACCOUNT)
        fields.setdefault("accountkey", AZURITE_KEY)
        fields.setdefault("blobendpoint", f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}")
    return fields


def check_endpoint(endpoint: str, where: str) -> str:
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UsageError(
            f"invalid blob endpoint {endpoint!r}",
            where=where,
            hint="give the account's blob endpoint, e.g. https://ACCOUNT.blob.core.windows.net "
            "or http://127.0.0.1:10000/devstoreaccount1 for Azurite",
        )
    return endpoint.rstrip("/")


def resolve_access(
    url: str,
    auth: AzureAuth,
    *,
    endpoint: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AzureAccess:
    """Parse ``url``, read the secret ``auth`` names from ``env`` and build the SDK credential.

    Raises UsageError for a bad URL, a missing variable, a malformed connection string, or a
    bearer-token credential over plain http (the SDK refuses to send a token without TLS).
    """
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

    env = os.environ if env is None else env
    account, container, prefix = parse_azure_url(url)
    if auth.kind == "default":
        auth = standard_auth(env, account) or auth
    credential: Any
    derived_endpoint = f"https://{account}.blob.core.windows.net"
    if auth.kind == "default":
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    elif auth.kind == "account_key":
        credential = AzureNamedKeyCredential(account, _secret(auth, env))
    elif auth.kind == "sas":
        credential = AzureSasCredential(_secret(auth, env).lstrip("?"))
    else:
        assert auth.env is not None
        fields = _connection_string(_secret(auth, env), auth.env)
        named = fields.get("accountname")
        if named and named != account:
            raise UsageError(
                f"the connection string in ${auth.env} is for account {named!r}, "
                f"but the repository URL names {account!r}",
                where=url,
                hint="use the connection string of the repository's account",
            )
        if "accountkey" in fields:
            credential = AzureNamedKeyCredential(account, fields["accountkey"])
        elif "sharedaccesssignature" in fields:
            credential = AzureSasCredential(fields["sharedaccesssignature"].lstrip("?"))
        else:
            raise UsageError(
                f"the connection string in ${auth.env} holds neither AccountKey nor "
                "SharedAccessSignature",
                where=auth.env,
            )
        if "blobendpoint" in fields:
            derived_endpoint = fields["blobendpoint"]
        elif "endpointsuffix" in fields:
            proto = fields.get("defaultendpointsprotocol", "https")
            derived_endpoint = f"{proto}://{account}.blob.{fields['endpointsuffix']}"
    final = check_endpoint(endpoint or derived_endpoint, endpoint and "endpoint" or url)
    if auth.kind == "default" and final.startswith("http://"):
        raise UsageError(
            "the default Azure credential signs in with a bearer token, which Azure's SDK "
            f"sends only over https; the endpoint is {final}",
            where=url,
            hint="use an https endpoint, or for an emulator name a connection string, account "
            "key or SAS variable",
        )
    return AzureAccess(account, container, prefix, final, auth, credential)


def token_principal(credential: Any) -> str | None:
    """``object id ... (app ...)`` read from the claims of the credential's storage token, or
    None when there is no token to read. The token itself is never returned or printed."""
    from azure.core.exceptions import AzureError

    try:
        token = credential.get_token(STORAGE_SCOPE).token
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (AzureError, AttributeError, IndexError, ValueError):
        return None
    who = claims.get("upn") or claims.get("oid")
    app = claims.get("appid") or claims.get("azp")
    if not who:
        return None
    return f"principal {who}" + (f" (app {app})" if app else "")
