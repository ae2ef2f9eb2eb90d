"""At least 1,000 broken plans: every one gets exit 2 and a located message, none a traceback."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import Cli, run_process

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = (ROOT / "plans" / "quickstart.yaml").read_text()
LINES = QUICKSTART.splitlines()
KEY_LINE = re.compile(r"^(\s*)([a-z_-]+):(.*)$")
REQUIRED = ("version:", "name:", "url:", "paths:", "repository:", "schedule:", "backup:", "rto:")
WRONG_VALUES = ("{x: 1}", "[[1]]", "-7", "true")
SYNTAX = (
    "{i}key: [unclosed",
    "{i}key: 'unterminated",
    "\t{i}tabbed: 1",
    "{i}a: b: c",
    "{i}- item",
    "{i}? [complex, key]\n{i}: 1",
    "{i}key: *undefined_alias",
    "{i}key: !!python/object:os.system x",
    '{i}key: "bad \\q escape"',
)
ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
)


def _join(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def broken_plans(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    keyed = [i for i, line in enumerate(LINES) if KEY_LINE.match(line)]
    leaves = [i for i in keyed if KEY_LINE.match(LINES[i]).group(3).strip()]  # type: ignore[union-attr]
    for i in leaves:  # wrong types
        indent, key, _ = KEY_LINE.match(LINES[i]).groups()  # type: ignore[union-attr]
        for value in WRONG_VALUES:
            yield "wrong type", _join([*LINES[:i], f"{indent}{key}: {value}", *LINES[i + 1 :]])
    for i, line in enumerate(LINES):  # missing required fields
        if line.strip().startswith(REQUIRED):
            yield "missing field", _join(LINES[:i] + LINES[i + 1 :])
    for i in keyed:  # unknown fields, duplicate keys
        indent = KEY_LINE.match(LINES[i]).group(1)  # type: ignore[union-attr]
        for n in range(4):
            unknown = rng.choice(["bogus", "retension", "schedual", "pth", "extra"]) + str(n)
            yield "unknown field", _join([*LINES[:i], f"{indent}{unknown}: 1", *LINES[i:]])
        yield "duplicate key", _join([*LINES[: i + 1], LINES[i], *LINES[i + 1 :]])
    for i in keyed:  # YAML syntax errors
        indent = KEY_LINE.match(LINES[i]).group(1)  # type: ignore[union-attr]
        for pattern in SYNTAX:
            yield "syntax", _join([*LINES[:i], pattern.format(i=indent), *LINES[i:]])
    raw = QUICKSTART.encode()
    for _ in range(150):  # non-UTF-8
        pos = rng.randrange(len(raw))
        yield "non-utf8", raw[:pos] + bytes([rng.choice([0xFF, 0xC3, 0x80, 0xE2])]) + raw[pos:]
    for _ in range(60):  # binary
        yield "binary", rng.randbytes(rng.randrange(1, 4096)) + b"\0"
    for size in (1024 * 1024 + 1, 3 * 1024 * 1024):
        yield "huge", b"version: 1\n" + b"#" * size
    yield "huge list", b"version: 1\nname: x\nrepositories: [" + b"1, " * 400_000 + b"1]\n"
    for depth in (5, 8):
        yield "alias bomb", ("\n".join(ALIAS_BOMB.splitlines()[:depth]) + "\n").encode()
    yield "recursive alias", b"a: &a [*a]\n"
    yield "deep", b"x: " + b"[" * 200 + b"]" * 200 + b"\n"
    for depth in (2_000, 5_000):  # composing these recursed once per level, past the limit
        yield "deeper than recursion", b"x: " + b"[" * depth + b"]" * depth + b"\n"
        yield "deeper than recursion", b"x: " + b"{a: " * depth + b"1" + b"}" * depth + b"\n"
    for doc in (b"", b"# only a comment\n", b"- a list\n", b"just text\n", b"42\n", b"---\n---\n"):
        yield "not a mapping", doc
    for _ in range(300):  # random damage: several wrong values at once
        lines = list(LINES)
        for i in rng.sample(leaves, 3):
            indent, key, _ = KEY_LINE.match(lines[i]).groups()  # type: ignore[union-attr]
            lines[i] = f"{indent}{key}: {rng.choice(WRONG_VALUES)}"
        yield "several", _join(lines)


def test_a_thousand_broken_plans(cli: Cli, tmp_path: Path) -> None:
    cases = list(broken_plans(random.Random(1234)))
    assert len(cases) >= 1000
    plan_dir = tmp_path / "plans"
    plan_dir.mkdir()
    for n, (kind, data) in enumerate(cases):
        f = plan_dir / f"case{n}.yaml"
        f.write_bytes(data)
        r = cli("validate", f)
        assert r.code == 2, f"{kind} #{n} accepted:\n{data[:400]!r}\n{r.out}"
        assert re.search(rf"{re.escape(str(f))}:\d+:\d+: ", r.out), f"{kind} #{n}: {r.out}"
        assert "Traceback" not in r.out + r.err
        f.unlink()


def test_broken_plans_as_real_processes(tmp_path: Path) -> None:
    cases = {
        "bomb.yaml": ALIAS_BOMB.encode(),
        "binary.yaml": bytes(range(256)),
        "latin1.yaml": "version: 1\nname: caf\xe9\n".encode("latin-1"),
        "dup.yaml": QUICKSTART.encode() + b"name: again\n",
        "deep.yaml": b"version: 1\nname: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    }
    for name, data in cases.items():
        f = tmp_path / name
        f.write_bytes(data)
        for command in (["validate"], ["plan"], ["run"]):
            r = run_process(*command, f)
            assert r.code == 2, (name, command, r.out, r.err)
            assert "Traceback" not in r.err
            assert re.search(rf"{re.escape(str(f))}:\d+:\d+: ", r.out + r.err), (name, r.out, r.err)
