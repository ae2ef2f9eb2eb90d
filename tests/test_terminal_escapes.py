"""Names from a snapshot or repository never reach a terminal raw: ESC, BEL, newlines and
bidi overrides in file, host and job names are escaped in text output (as `ls -b` and restic
do); --json keeps them exactly."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from bcdr.repository.repo import Repository
from bcdr.storage.local import LocalStorage
from bcdr.text import printable
from tests.conftest import run_process

EVIL = "x\x1b]0;pwned\x07\n-rw-r--r-- forged\u202egpj.exe\x9b"


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    assert printable("plain name.txt") == "plain name.txt"
    assert printable("a\nb\tc\x1b[31m\x07\\") == "a\\nb\\tc\\e[31m\\x07\\\\"
    assert printable(b"caf\xc3\xa9 \xff") == "café \\xff"
    assert printable("\u202eevil\x9b") == "\\u202eevil\\x9b"
    for ch in map(chr, range(0x110000)):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            continue
        assert printable(ch).isprintable()


def test_ls_and_snapshots_escape_names_and_json_keeps_them(tmp_path: Path, repo: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    name = os.fsencode(EVIL.replace("\u202e", "")) + b"\xff"
    (src / os.fsdecode(name)).write_bytes(b"data")
    os.symlink(b"\x1b[2J", os.path.join(os.fsencode(src), b"link\x07"))
    assert run_process("backup", "--repo", repo, src).code == 0
    # a hostile host and job name, as a repository someone else writes to could hold
    rp = Repository.open(LocalStorage(repo))
    snap = rp.list_snapshots()[-1]
    rp.save_snapshot(replace(snap, hostname=EVIL, job=EVIL, time="2026-12-02T00:00:00+00:00"))
    for args in (["ls", "latest"], ["snapshots"]):
        r = run_process(*args, "--repo", repo)
        assert r.code == 0, r.err
        for raw in ("\x1b", "\x07", "\u202e", "\x9b"):
            assert raw not in r.out, (args, r.out)
        assert "forged" not in "\n".join(line[:10] for line in r.out.splitlines())
    r = run_process("ls", "--repo", repo, "latest")
    assert "\\e]0;pwned\\x07\\n-rw-r--r-- forged" in r.out and "\\xff" in r.out
    assert "link\\x07 -> \\e[2J" in r.out
    r = run_process("ls", "--repo", repo, snap.id, "--json")
    paths = [e["path"] for e in json.loads(r.out)["entries"]]
    assert any(os.fsencode(p).endswith(name) for p in paths)
    r = run_process("snapshots", "--repo", repo, "--json")
    assert EVIL in [s["hostname"] for s in json.loads(r.out)]
