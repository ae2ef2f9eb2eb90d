"""Azure Resource Manager access: one credential and client setup for every management-plane
call bcdr makes (storage account facts now, disk snapshots later).

The credential is an ARM access token from an environment variable the plan names, or the
default chain (``DefaultAzureCredential``). The token lives only in the credential object;
errors name the variable, never its value. ARM calls are HTTPS only (the SDK refuses to send a
bearer token over plain HTTP); a private CA is trusted through ``REQUESTS_CA_BUNDLE``.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from bcdr.errors import BcdrError, StoragePermission, TransientStorageError, UsageError
from bcdr.retrybudget import budget_seconds, cap, say_waiting

ARM_ENDPOINT = "https://management.azure.com"
TOKEN_LIFETIME_S = 3600  # a token from the environment: its real expiry is not ours to parse


@dataclass(frozen=True)
class ArmAccess:
    """Where and as whom to call ARM. Safe to print (holds a variable name, not a token)."""

    subscription_id: str
    resource_group: str
    token_env: str | None = None
    endpoint: str | None = None

    @property
    def base_url(self) -> str:
        return (self.endpoint or ARM_ENDPOINT).rstrip("/")

    def who(self) -> str:
        return f"the token in ${self.token_env}" if self.token_env else "DefaultAzureCredential"


class EnvTokenCredential:
    """An ARM access token taken once from an environment variable (``az account
    get-access-token``): the azure-core TokenCredential protocol, for pipelines and CI."""

    def __init__(self, name: str, env: Mapping[str, str]):
        value = env.get(name, "").strip()
        if not value:
            raise UsageError(
                f"environment variable {name} is not set or empty",
                where=f"management.token_env {name}",
                hint="set it to an ARM access token (`az account get-access-token --query "
                "accessToken -o tsv`), or remove token_env to use the default credential chain",
            )
        self._token = value
        self._expires = int(time.time()) + TOKEN_LIFETIME_S

    def __repr__(self) -> str:
        return "EnvTokenCredential(<token>)"

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, self._expires)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(self._token, self._expires)


def check_arm_endpoint(endpoint: str, where: str = "management.endpoint") -> str:
    """``https://host[:port]`` with nothing after it, or UsageError."""
    parsed = urlparse(endpoint)
    if parsed.scheme != "https" or not parsed.hostname or parsed.path.strip("/") or parsed.query:
        raise UsageError(
            f"invalid Resource Manager endpoint {parsed.scheme or '?'}://{parsed.hostname or '?'}"
            "...: it must be https://HOST[:PORT] with no path or query",
            where=where,
            hint=f"leave it out for public Azure ({ARM_ENDPOINT}); ARM tokens are sent over "
            "HTTPS only",
        )
    return endpoint


def arm_client(
    cls: type,
    access: ArmAccess,
    env: Mapping[str, str] | None = None,
    polling_interval: float = 30.0,
) -> Any:
    """An azure-mgmt ``cls`` client (StorageManagementClient, ComputeManagementClient) for
    ``access``, with few quick retries: bcdr's own retry policy is the outer loop.
    ``polling_interval``: seconds between polls of a long-running operation whose answer has no
    Retry-After."""
    env = os.environ if env is None else env
    if access.endpoint:
        check_arm_endpoint(access.endpoint)
    credential: Any
    if access.token_env:
        credential = EnvTokenCredential(access.token_env, env)
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return cls(
        credential,
        access.subscription_id,
        base_url=access.base_url,
        credential_scopes=[f"{access.base_url}/.default"],
        retry_policy=budgeted_retry_policy(),
        connection_timeout=15,
        read_timeout=60,
        polling_interval=polling_interval,
    )


def budgeted_retry_policy() -> Any:
    """azure-core's retry policy, bounded by the retry budget (``bcdr/retrybudget.py``) instead
    of a count: every ARM request, the polls of long-running operations included, retries
    connection errors, timeouts, 408, 429 and 5xx with exponential backoff and jitter (or the
    answer's Retry-After) until the budget is spent, and says so while it waits."""
    from azure.core.pipeline.policies import RetryPolicy

    budget = budget_seconds()

    class BudgetedRetry(RetryPolicy):  # type: ignore[type-arg]
        def increment(
            self, settings: dict[str, Any], response: Any = None, error: Any = None
        ) -> bool:
            started = settings.setdefault("bcdr_started", time.monotonic())
            if time.monotonic() - started >= cap(budget):
                return False
            return bool(super().increment(settings, response=response, error=error))

        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            ceiling = float(super().get_backoff_time(settings))
            return random.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0

        def sleep(self, settings: dict[str, Any], transport: Any, response: Any = None) -> None:
            delay = self.get_retry_after(response) if response is not None else None
            if not delay:
                delay = self.get_backoff_time(settings)
            started = settings.get("bcdr_started", time.monotonic())
            delay = max(0.0, min(delay, cap(budget) - (time.monotonic() - started)))
            http = getattr(response, "http_response", None)
            request = getattr(response, "http_request", None) or getattr(http, "request", None)
            what = f"{getattr(request, 'method', '')} {_resource(getattr(request, 'url', ''))}"
            status = getattr(http, "status_code", None)
            problem = f"answered {status}" if status else "no answer (connection or timeout)"
            say_waiting(
                "Resource Manager",
                what.strip(),
                problem,
                len(settings.get("history") or ()),
                delay,
                time.monotonic() - started,
            )
            if delay > 0:
                transport.sleep(delay)

    return BudgetedRetry(
        retry_total=1_000_000,
        retry_connect=1_000_000,
        retry_read=1_000_000,
        retry_status=1_000_000,
        retry_backoff_factor=0.5,
        retry_backoff_max=30,
        timeout=budget + 3600,  # the budget above decides; this only bounds one request
    )


def _resource(url: str) -> str:
    """The last resource type and name of an ARM URL, for a progress line."""
    path = urlparse(url).path.strip("/").split("/")
    return "/".join(path[-2:]) if len(path) >= 2 else url


def arm_error_code(exc: Exception) -> tuple[str, str]:
    """ARM's error code and message from an azure-core error (both may be empty)."""
    error = getattr(exc, "error", None)
    code = (getattr(error, "code", "") or "") if error is not None else ""
    message = (getattr(error, "message", "") or "") if error is not None else ""
    if not code:  # a failed long-running operation: the error is in the status body
        response = getattr(exc, "response", None)
        try:
            body = json.loads(response.text()) if response is not None else {}
        except (ValueError, TypeError, AttributeError):
            body = {}
        found = body.get("error") if isinstance(body, dict) else None
        if isinstance(found, dict):
            code, message = str(found.get("code") or ""), str(found.get("message") or "")
    return code, message.strip()


def retry_after_s(exc: Exception) -> float | None:
    """The Retry-After (seconds) of a throttled response, if it gave one."""
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def translate_arm_error(
    exc: Exception,
    what: str,
    access: ArmAccess,
    *,
    action: str = "read",
    role: str = "Reader",
    not_found_hint: str = "check the resource ids in the plan (`az resource show --ids ID`)",
) -> BcdrError:
    """An azure-core error from an ARM call as a BcdrError with a hint; never the token.
    ``action`` is what bcdr tried to do with ``what`` (read, create, delete); ``role`` the
    built-in role that allows it."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    status = getattr(exc, "status_code", None)
    code, message = arm_error_code(exc)
    said = f": {message}" if message else ""
    where = f"{access.base_url}, subscription {access.subscription_id}"
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return UsageError(
            f"{what} was not found ({code or 'not found'})",
            where=f"{where}, resource group {access.resource_group}",
            hint=not_found_hint,
        )
    if isinstance(exc, ClientAuthenticationError) and getattr(exc, "response", None) is None:
        # raised by the credential itself: nothing reached Resource Manager
        return StoragePermission(
            f"no Azure identity could get a Resource Manager token to {action} {what} "
            f"({access.who()})",
            where=access.base_url,
            hint="sign in with `az login`, give the VM or pod a managed or workload identity, "
            "or name a token variable (management.token_env); the role comes after sign-in",
        )
    if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
        return StoragePermission(
            f"Resource Manager refused to {action} {what} ({code or status})",
            where=where,
            hint=f"signed in with {access.who()}; it needs the {role} "
            "role on the resource (or a fresh token)",
        )
    if isinstance(exc, ServiceRequestError):
        return TransientStorageError(
            f"cannot reach Resource Manager to {action} {what}: {type(exc).__name__}",
            where=access.base_url,
            hint="check the network path to the management endpoint (proxy, firewall, TLS "
            "trust: REQUESTS_CA_BUNDLE for a private CA)",
        )
    if isinstance(exc, HttpResponseError):
        failure = f"Resource Manager failed to {action} {what} ({code or status}){said}"
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return BcdrError(failure, where=where)
        return TransientStorageError(failure, where=where)
    return BcdrError(f"{action} {what} failed: {type(exc).__name__}", where=where)
