"""The password's key derivation started ahead: the CLI begins scrypt in a thread as soon as it
knows a local repository, and opening the repository takes that result. These tests hold that
it is taken (derived once, in the thread), only for the same password and parameters, and that
nothing about a command's errors changes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from bcdr.actions.keyahead import derive_key_ahead
from bcdr.cli.main import main, parse
from bcdr.cli.repoargs import named_repo
from bcdr.repository import kdf
from tests.conftest import Cli, write_tree

N, R, P = 2**10, 8, 1  # small: these tests are about who derives, not how long it takes


def ahead(*argv: str) -> bool:
    """What the CLI does right after parsing ``bcdr ARGV``: start deriving ahead."""
    repo = named_repo(parse(list(argv)))
    return repo is not None and derive_key_ahead(repo)


def key_file(salt: bytes, kdf_name: str = "scrypt") -> bytes:
    doc = {"kdf": kdf_name, "n": N, "r": R, "p": P, "salt": base64.b64encode(salt).decode()}
    return json.dumps({**doc, "data": ""}).encode()


def expected(password: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=N, r=R, p=P, maxmem=kdf.MAXMEM, dklen=32)


@pytest.fixture
def derivations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each scrypt run, in order."""
    calls: list[str] = []
    real = kdf._scrypt

    def counting(password: bytes, params: kdf.Params) -> bytes:
        calls.append(threading.current_thread().name)
        return real(password, params)

    monkeypatch.setattr(kdf, "_scrypt", counting)
    monkeypatch.setattr(kdf, "_pending", {})
    monkeypatch.setattr(kdf, "_derived", {})
    return calls


def test_started_ahead_is_taken_once(derivations: list[str]) -> None:
    salt = b"s" * 16
    assert kdf.derive_ahead(key_file(salt), b"pw")
    assert kdf.derive(b"pw", salt, N, R, P) == expected(b"pw", salt)
    assert derivations == ["bcdr-kdf"]
    # kept: the next open in this process (or a child forked from it) derives nothing
    assert kdf.derive(b"pw", salt, N, R, P) == expected(b"pw", salt)
    assert kdf.derive_ahead(key_file(salt), b"pw")
    assert kdf.derive(b"pw", salt, N, R, P) == expected(b"pw", salt)
    assert derivations == ["bcdr-kdf"]


def test_a_kept_key_is_given_only_for_its_password(derivations: list[str]) -> None:
    salt = b"k" * 16
    assert kdf.derive(b"right", salt, N, R, P) == expected(b"right", salt)
    assert kdf.derive(b"wrong", salt, N, R, P) == expected(b"wrong", salt)
    assert kdf.derive(b"right", b"o" * 16, N, R, P) == expected(b"right", b"o" * 16)
    assert derivations == ["MainThread"] * 3


def test_other_password_or_salt_is_not_given_the_key_started_ahead(
    derivations: list[str],
) -> None:
    salt = b"a" * 16
    assert kdf.derive_ahead(key_file(salt), b"right")
    assert kdf.derive(b"wrong", salt, N, R, P) == expected(b"wrong", salt)
    other = b"b" * 16
    assert kdf.derive_ahead(key_file(other), b"right")
    assert kdf.derive(b"right", salt, N, R, P) == expected(b"right", salt)
    assert kdf._pending  # the derivation for `other` was not taken by a different salt


@pytest.mark.parametrize(
    "blob", [b"not json", b"[1]", key_file(b"x" * 16, "none"), b'{"kdf": "scrypt", "n": 1}']
)
def test_nothing_starts_for_a_file_that_is_not_a_scrypt_key(
    derivations: list[str], blob: bytes
) -> None:
    assert not kdf.derive_ahead(blob, b"pw")
    assert not kdf._pending and derivations == []


def test_a_failed_derivation_fails_in_the_callers_thread(derivations: list[str]) -> None:
    doc = json.loads(key_file(b"c" * 16))
    doc["n"] = 3  # not a power of 2: scrypt refuses it
    assert kdf.derive_ahead(json.dumps(doc).encode(), b"pw")
    with pytest.raises(ValueError):
        kdf.derive(b"pw", b"c" * 16, 3, R, P)
    assert derivations == ["bcdr-kdf", "MainThread"]


def test_pending_derivations_are_bounded(derivations: list[str]) -> None:
    for i in range(kdf.MAX_PENDING + 3):
        assert kdf.derive_ahead(key_file(bytes([i]) * 16), b"pw")
    assert len(kdf._pending) == kdf.MAX_PENDING


def test_commands_on_a_local_repository_derive_while_loading(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, derivations: list[str]
) -> None:
    monkeypatch.setenv("BCDR_PASSWORD", "pw-ahead")
    repo = tmp_path / "repo"
    assert cli("init", "--repo", repo, "--encrypt").code == 0
    src = write_tree(tmp_path / "src", {"a.txt": b"hello"})
    derivations.clear()
    kdf._derived.clear()  # each command a new process
    assert cli("backup", "--repo", repo, src).code == 0
    kdf._derived.clear()
    assert cli("snapshots", "--repo", repo).code == 0
    assert derivations == ["bcdr-kdf", "bcdr-kdf"]
    # in the same process (a daemon's next job, a forked shard): the key is known
    assert cli("snapshots", "--repo", repo).code == 0
    assert derivations == ["bcdr-kdf", "bcdr-kdf"]

    monkeypatch.setenv("BCDR_PASSWORD", "wrong")
    derivations.clear()
    result = cli("snapshots", "--repo", repo)
    assert result.code != 0 and "wrong password" in result.err
    assert "Traceback" not in result.err and "wrong" not in result.err.replace("wrong password", "")
    assert derivations == ["bcdr-kdf"]


def test_only_local_repositories_with_a_password_are_read_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, derivations: list[str]
) -> None:
    monkeypatch.setenv("BCDR_PASSWORD", "pw")
    # Azure: never contacted here (no endpoint would be reachable anyway)
    assert not ahead("snapshots", "--repo", "azure://acct/container")
    # a folder that holds no repository: nothing read, nothing created
    missing = tmp_path / "none"
    assert not ahead("snapshots", "--repo", str(missing))
    assert not missing.exists()
    # no password in the environment
    monkeypatch.delenv("BCDR_PASSWORD")
    assert not ahead("snapshots", "--repo", str(tmp_path))
    # a command without a repository
    assert not ahead("plan", "docs")
    assert derivations == []


def test_a_password_pipe_is_left_for_the_command_to_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, derivations: list[str]
) -> None:
    """BCDR_PASSWORD_FILE=<(...) or a FIFO gives its content once: reading ahead would leave
    the command an empty password file. A regular file is read ahead as usual."""
    repo = tmp_path / "repo"
    monkeypatch.setenv("BCDR_PASSWORD", "pw")
    assert main(["init", "--repo", str(repo), "--encrypt", "-q"]) == 0
    kdf._pending.clear()
    monkeypatch.delenv("BCDR_PASSWORD")
    fifo = tmp_path / "pw.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("BCDR_PASSWORD_FILE", str(fifo))

    def write_once() -> None:
        with open(fifo, "wb") as f:  # blocks until someone opens the FIFO to read
            f.write(b"pw\n")

    writer = threading.Thread(target=write_once, daemon=True)
    writer.start()
    assert not ahead("snapshots", "--repo", str(repo))
    writer.join(0.2)
    assert writer.is_alive()  # nobody opened it: the command still can
    assert fifo.read_bytes() == b"pw\n"
    writer.join()

    regular = tmp_path / "pw.txt"
    regular.write_bytes(b"pw\n")
    monkeypatch.setenv("BCDR_PASSWORD_FILE", str(regular))
    assert ahead("snapshots", "--repo", str(repo))
