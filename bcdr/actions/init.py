"""``bcdr init``: create a repository."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from bcdr.clock import Clock
from bcdr.errors import PasswordRequired, UsageError
from bcdr.password import read_password
from bcdr.repository import immutability
from bcdr.repository.chunker import ChunkerParams
from bcdr.repository.config import MAX_PACK_SIZE, MIN_PACK_SIZE
from bcdr.repository.repo import Repository
from bcdr.storage.url import StorageSpec, open_storage


@dataclass(frozen=True)
class InitResult:
    url: str
    id: str
    encryption: str
    chunker: dict[str, object]
    pack_size: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def init_repository(
    where: StorageSpec | str,
    *,
    encrypt: bool,
    chunker: ChunkerParams | None = None,
    pack_size: int | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> InitResult:
    if pack_size is not None and not MIN_PACK_SIZE <= pack_size <= MAX_PACK_SIZE:
        raise UsageError(
            f"--pack-size must be between {MIN_PACK_SIZE} and {MAX_PACK_SIZE} bytes",
            hint="the default, 16777216 (16 MiB), suits most repositories",
        )
    password = read_password(env) if encrypt else None
    if encrypt and password is None:
        raise PasswordRequired(
            "--encrypt needs a password",
            hint="set BCDR_PASSWORD, or BCDR_PASSWORD_FILE to a file holding it "
            "(never on the command line)",
        )
    storage = open_storage(where, env=env)
    immutability.require_support(storage)
    repo = Repository.init(
        storage, password=password, chunker=chunker, pack_size=pack_size, clock=clock
    )
    cfg = repo.config
    return InitResult(storage.url, cfg.id, cfg.encryption, cfg.chunker.to_dict(), cfg.pack_size)


def chunker_of(where: StorageSpec | str, env: Mapping[str, str] | None = None) -> ChunkerParams:
    """The chunker parameters of the repository at ``where`` (opened with the password in
    ``env``): a repository made with them cuts files as it does (``bcdr copy``)."""
    from bcdr.actions.common import open_repo

    repo = open_repo(where, env=env)
    return repo.config.chunker
