"""Reading a plan file: bytes -> YAML nodes -> plain values, each with its line and column.

Refused with a located problem, never a traceback: files over ``MAX_BYTES``, binary files,
invalid UTF-8, YAML syntax errors, several documents, duplicate keys, keys that are not plain
strings, nesting deeper than ``MAX_DEPTH`` and documents that expand (through aliases) to more
than ``MAX_NODES`` values. Messages never quote the file's text: a plan line may hold a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from bcdr.errors import PlanProblem

MAX_BYTES = 1024 * 1024
MAX_NODES = 50_000
MAX_DEPTH = 32

Path_ = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed plan: ``data`` as plain values, with the position of every value and key."""

    file: str
    data: object = None
    value_at: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_at: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    problems: list[PlanProblem] = field(default_factory=list)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value (or key) at ``path``, else its nearest parent."""
        marks = self.key_at if key else self.value_at
        while path:
            if path in marks:
                return marks[path]
            if path in self.value_at:
                return self.value_at[path]
            path = path[:-1]
        return self.value_at.get((), (1, 1))

    def problem(
        self, path: Path_, message: str, hint: str | None = None, *, key: bool = False
    ) -> None:
        line, col = self.where(path, key=key)
        self.problems.append(PlanProblem(self.file, line, col, dotted(path), message, hint))


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Budget(Exception):
    pass


class _Loader(yaml.SafeLoader):
    pass


def read_source(file: str, raw: bytes) -> Source:
    src = Source(file)
    if len(raw) > MAX_BYTES:
        src.problem(
            (),
            f"the file is {len(raw):,} bytes; a plan is at most {MAX_BYTES:,}",
            "is this the right file? plans are short YAML documents",
        )
        return src
    if b"\0" in raw:
        src.problem((), "this is a binary file, not a YAML plan", "is this the right file?")
        return src
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        src.problems.append(
            PlanProblem(
                file, line, col, "", "the file is not valid UTF-8", "save the plan as UTF-8"
            )
        )
        return src
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        deep = _nesting_beyond(text, MAX_DEPTH + 1)  # the root is level 0 of a path
        if deep is not None:  # composing it would recurse once per level, past Python's limit
            src.problems.append(
                PlanProblem(
                    file,
                    *deep,
                    "",
                    f"the document nests deeper than {MAX_DEPTH} levels",
                    "plans do not need deep nesting or aliases that expand",
                )
            )
            return src
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        src.problems.append(
            PlanProblem(
                file,
                line,
                col,
                "",
                f"YAML syntax error: {what}",
                "check indentation, colons and quotes on this line and the one above",
            )
        )
        return src
    except yaml.YAMLError as exc:
        src.problems.append(PlanProblem(file, 1, 1, "", f"YAML error: {type(exc).__name__}"))
        return src
    if node is None:
        src.problem((), "the plan is empty", "`bcdr plan init` writes a commented example")
        return src
    constructor = yaml.SafeLoader("")
    budget = [MAX_NODES]
    try:
        src.data = _convert(src, constructor, node, (), budget)
    except _Budget as exc:
        src.problem((), str(exc), "plans do not need deep nesting or aliases that expand")
        src.data = None
    return src


def _nesting_beyond(text: str, limit: int) -> tuple[int, int] | None:
    """Where (line, column) the document's mappings and sequences first nest deeper than
    ``limit``, or None; from the parser's events, which come without recursion."""
    depth = 0
    loader = _Loader(text)
    try:
        while loader.check_event():
            event = loader.get_event()  # type: ignore[no-untyped-call]
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > limit:
                    mark = event.start_mark
                    return (mark.line + 1, mark.column + 1) if mark else (1, 1)
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
    finally:
        loader.dispose()
    return None


def _convert(
    src: Source, constructor: yaml.SafeLoader, node: yaml.Node, path: Path_, budget: list[int]
) -> object:
    budget[0] -= 1
    if budget[0] < 0:
        raise _Budget(f"the document expands to more than {MAX_NODES:,} values (alias bomb?)")
    if len(path) > MAX_DEPTH:
        raise _Budget(f"the document nests deeper than {MAX_DEPTH} levels")
    src.value_at.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, object] = {}
        constructor.flatten_mapping(node)  # merge keys (<<)
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in (
                "tag:yaml.org,2002:str",
                "tag:yaml.org,2002:bool",
                "tag:yaml.org,2002:int",
                "tag:yaml.org,2002:null",
                "tag:yaml.org,2002:float",
            ):
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                src.problems.append(
                    PlanProblem(src.file, line, col, dotted(path), "a key must be a plain name")
                )
                continue
            key = str(key_node.value)  # the text as written: `on:` is "on", not True
            child = (*path, key)
            kpos = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                first = src.key_at[child]
                src.problems.append(
                    PlanProblem(
                        src.file,
                        *kpos,
                        dotted(child),
                        f"duplicate key (first at line {first[0]})",
                        "remove one of the two",
                    )
                )
                continue
            src.key_at[child] = kpos
            out[key] = _convert(src, constructor, value_node, child, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _convert(src, constructor, item, (*path, i), budget)
            for i, item in enumerate(node.value)
        ]
    try:
        return constructor.construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        src.problem(
            path,
            f"cannot read this value as {node.tag.rsplit(':', 1)[-1]}",
            "quote it to make it a string",
        )
        return None
