"""Hooks after each scheduled job: a shell command (job facts in ``BCDR_*`` environment
variables) or an http(s) URL (POST of the facts as JSON). Bounded in time; a failing hook is
reported, never fails the job. Hook output is not echoed (it may hold what a command printed
of its environment); only its exit status or HTTP status is reported."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping

COMMAND_TIMEOUT_S = 60.0
URL_TIMEOUT_S = 10.0


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


#: Variables never handed to a hook command unless the plan's ``hooks.pass_env`` names them:
#: bcdr's password, and the credentials the Azure SDKs read from the environment.
SECRET_PREFIXES = (
    "BCDR_PASSWORD",
    "AZURE_STORAGE_",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN",
    "IDENTITY_HEADER",
    "MSI_SECRET",
)


def hook_base_env(
    environ: Mapping[str, str], secret_names: set[str], pass_env: tuple[str, ...] = ()
) -> dict[str, str]:
    """The environment a hook command inherits: ``environ`` without the variables a plan
    names as secrets (``secret_names``) and those of :data:`SECRET_PREFIXES`, except the ones
    ``pass_env`` lets through."""
    return {
        name: value
        for name, value in environ.items()
        if name in pass_env or (name not in secret_names and not name.startswith(SECRET_PREFIXES))
    }


def hook_env(facts: Mapping[str, object]) -> dict[str, str]:
    """``{"job": "ck"}`` -> ``{"BCDR_JOB": "ck"}`` (None becomes empty)."""
    return {f"BCDR_{k.upper()}": "" if v is None else str(v) for k, v in facts.items()}


def run_hook(
    spec: str,
    facts: Mapping[str, object],
    *,
    base_env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    command_timeout: float = COMMAND_TIMEOUT_S,
    url_timeout: float = URL_TIMEOUT_S,
) -> str | None:
    """Run the hook; None when it worked, else what went wrong (one line, no secrets).
    ``base_env``: what a command inherits (:func:`hook_base_env`; default: nothing secret
    bcdr knows of)."""
    if is_url(spec):
        body = json.dumps(dict(facts), default=str).encode()
        req = urllib.request.Request(
            spec, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=url_timeout) as resp:  # noqa: S310
                resp.read(65536)
            return None
        except urllib.error.HTTPError as exc:
            return f"POST returned HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return (
                f"POST failed: {type(reason).__name__ if not isinstance(reason, str) else reason}"
            )
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", spec],
            env={
                **(hook_base_env(os.environ, set()) if base_env is None else base_env),
                **hook_env(facts),
            },
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=command_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"command did not finish within {command_timeout:g}s and was stopped"
    except OSError as exc:
        return f"command could not start: {exc.strerror}"
    if proc.returncode != 0:
        return f"command exited with status {proc.returncode}"
    return None
