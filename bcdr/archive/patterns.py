"""Path patterns for ``--exclude`` and ``--include`` (gitignore-like globs on absolute paths).

- A pattern without ``/`` matches the last path component: ``*.tmp``, ``.cache``.
- A pattern with ``/`` matches the whole absolute path; unless it starts with ``/`` it may
  match at any depth: ``**/.cache/**``, ``checkpoints/step-*``.
- ``*`` matches within one component, ``**`` across components, ``?`` one character,
  ``[...]`` a character class.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable


def glob_to_regex(pattern: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


class PathMatcher:
    """Matches absolute byte paths against a list of patterns."""

    def __init__(self, patterns: list[str] | tuple[str, ...]):
        self.patterns = tuple(patterns)
        names = [glob_to_regex(p) for p in patterns if "/" not in p.rstrip("/")]
        paths = []
        for p in patterns:
            p = p.rstrip("/")
            if "/" in p:
                rx = glob_to_regex(p)
                paths.append(rx if p.startswith("/") else "(?:.*/)?" + rx)
        self._name = re.compile(os.fsencode("|".join(names))) if names else None
        self._path = re.compile(os.fsencode("|".join(paths))) if paths else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, path: bytes) -> bool:
        if self._name is not None and self._name.fullmatch(os.path.basename(path)):
            return True
        return self._path is not None and self._path.fullmatch(path) is not None


class PathSet:
    """Matches exactly the given absolute byte paths (a drill's sample): the same interface as
    PathMatcher, with set lookups instead of patterns."""

    def __init__(self, paths: Iterable[bytes]):
        self.paths = frozenset(paths)

    def __bool__(self) -> bool:
        return bool(self.paths)

    def matches(self, path: bytes) -> bool:
        return path in self.paths
