"""The paths given to a backup, nested by component: the folders above them become the
snapshot's folders, and every walk of the source (the backup's, a sharded run's plan, the
progress line's count) meets them in one order, each once."""

from __future__ import annotations

import os

#: A path's components, each to the layout below it; None for a path backed up whole.
Layout = dict[bytes, "Layout | None"]


def plan_layout(paths: list[bytes]) -> Layout:
    """Nest absolute paths by component; a path inside another given path is dropped."""
    root: Layout = {}
    for path in sorted(set(paths), key=len):
        parts = [p for p in path.split(b"/") if p]
        node: Layout | None = root
        for i, part in enumerate(parts):
            assert node is not None
            if part in node and node[part] is None:
                break  # an ancestor is already backed up whole
            if i == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})
    return root


def walk_roots(paths: list[bytes]) -> list[bytes]:
    """The paths a backup walks, in the order it meets them: each folder's names sorted,
    component by component (``/a/x`` before ``/a-b``, though ``-`` sorts before ``/``),
    and a path inside another one left out (the walk of the other one meets it)."""

    def below(prefix: bytes, layout: Layout) -> list[bytes]:
        out: list[bytes] = []
        for name, sub in sorted(layout.items()):
            full = os.path.join(prefix, name)
            out += [full] if sub is None else below(full, sub)
        return out

    return below(b"/", plan_layout(paths))
