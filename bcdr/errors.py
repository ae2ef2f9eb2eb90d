"""The one error tree of bcdr.

Every error a user can cause or meet is a :class:`BcdrError`: it carries a message (what went
wrong), an optional ``where`` (file:line, field, key or path) and a ``hint`` (what to do), and a
stable exit code. Third-party errors (OS, Azure SDK) are translated where they arise; the CLI is
the only place that turns a ``BcdrError`` into an exit code and never prints a traceback for one.

::

    BcdrError (exit 1)
    ├── UsageError (exit 2)                 bad arguments, bad plan, bad URL
    │   └── PlanInvalid                     a plan has problems (each located file:line:col)
    ├── SourceError                         a path to back up is missing or unreadable
    ├── StorageError                        the storage failed
    │   ├── ObjectNotFound                  a key does not exist
    │   ├── StorageFull                     no space left (nothing half-written is committed)
    │   ├── StoragePermission               permission denied / authentication failed
    │   ├── ObjectOffline                   in the Archive tier: rehydrate before reading
    │   └── TransientStorageError           worth retrying (throttled, unreachable)
    ├── RepositoryError                     the repository cannot be used
    │   ├── RepositoryNotFound              nothing at the URL
    │   ├── NotARepository                  something at the URL, but no bcdr repository
    │   ├── RepositoryExists                init over an existing repository
    │   ├── UnsupportedFormat               a format version this bcdr does not know
    │   ├── WrongPassword                   no key opens with the password
    │   ├── PasswordRequired                encrypted, and no password was given
    │   ├── CorruptObject                   stored bytes fail their hash or do not parse
    │   ├── SnapshotNotFound                no snapshot matches an id/prefix/latest
    │   └── LockConflict                    another process holds a conflicting lock
    ├── RestoreError                        a restore could not write or verify files
    ├── CheckFailed                         check found problems (listed)
    ├── Interrupted (exit 130)              SIGINT/SIGTERM; says what was committed
    └── PartialFailure (exit 3)             finished, but some files were skipped
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_TARGET_MISSED = 4
EXIT_INTERRUPTED = 130


class BcdrError(Exception):
    """Base of all bcdr errors: message, where it happened, and what to do."""

    exit_code = EXIT_FAILED

    #: The id of the evidence record that says this failure happened, once one was written.
    evidence: str | None = None

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "where": self.where,
            "hint": self.hint,
            "exit_code": self.exit_code,
        }


class UsageError(BcdrError):
    exit_code = EXIT_USAGE


def env_seconds(
    name: str, default: float, most: float, env: Mapping[str, str] | None = None
) -> float:
    """Seconds from the environment variable ``name`` (``default`` when unset or empty) of
    ``env`` (default: this process's); a value that is not a number from 0 to ``most`` is a
    UsageError naming it."""
    raw = (os.environ if env is None else env).get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 <= value <= most:
        raise UsageError(
            f"{name}={raw!r} is not a number of seconds between 0 and {most:g}",
            hint=f"unset {name} for the default of {default:g} seconds",
        )
    return value


@dataclass(frozen=True)
class PlanProblem:
    """One problem in a plan: file, 1-based line and column, the field path, what, what to do."""

    file: str
    line: int
    column: int
    field: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class PlanInvalid(UsageError):
    """A plan failed validation; ``problems`` lists every problem found, in file order."""

    def __init__(self, problems: list[PlanProblem]):
        files = sorted({p.file for p in problems})
        super().__init__(
            f"{len(problems)} problem{'s' if len(problems) != 1 else ''} in {', '.join(files)}",
            hint="fix the problems above; `bcdr plan init` writes a commented example",
        )
        self.problems = problems

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "problems": [asdict(p) for p in self.problems]}


class SourceError(BcdrError):
    """A path given to back up does not exist or cannot be read at all."""


class StorageError(BcdrError):
    pass


class ObjectNotFound(StorageError):
    pass


class StorageFull(StorageError):
    pass


class StoragePermission(StorageError):
    pass


class MissingPermission(UsageError):
    """A command that must delete, given a credential that may not (append-only): refused
    before it changed anything."""


class ObjectOffline(StorageError):
    """The object exists but cannot be read until it is rehydrated (Azure Archive tier)."""


class ObjectImmutable(StorageError):
    """The object may not be deleted or overwritten: an immutability policy that has not
    expired, or a legal hold (Azure 409 BlobImmutableDueToPolicy / ...DueToLegalHold)."""


class TransientStorageError(StorageError):
    """Worth retrying: throttled, timed out, unreachable. ``retry_after`` is the server's
    Retry-After in seconds, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message, where=where, hint=hint)
        self.retry_after = retry_after


class RepositoryError(BcdrError):
    pass


class RepositoryNotFound(RepositoryError):
    pass


class NotARepository(RepositoryError):
    pass


class RepositoryExists(RepositoryError):
    pass


class UnsupportedFormat(RepositoryError):
    pass


class WrongPassword(RepositoryError):
    pass


class PasswordRequired(RepositoryError):
    exit_code = EXIT_USAGE


class CorruptObject(RepositoryError):
    pass


class SnapshotNotFound(RepositoryError):
    pass


class LockConflict(RepositoryError):
    pass


class LockLost(RepositoryError):
    """A holder's lock expired unrefreshed; it must not commit."""


class RestoreError(BcdrError):
    pass


class CheckFailed(BcdrError):
    pass


class Interrupted(BcdrError):
    """SIGINT or SIGTERM stopped a command; the message says what it committed."""

    exit_code = EXIT_INTERRUPTED


class PartialFailure(BcdrError):
    exit_code = EXIT_PARTIAL


class DiskOperationFailed(BcdrError):
    """An Azure operation on a disk, snapshot or restore point ended Failed."""


class OperationTimedOut(BcdrError):
    """An Azure operation did not finish within the job's timeout; it may still finish."""
