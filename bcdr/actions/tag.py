"""``bcdr tag``: change the tags of snapshots.

A snapshot object is never rewritten in place: a tagged snapshot is written anew with its new
tags and ``original`` naming its recovery point (so drills, copies and reports still see the
same recovery point), then the old object is deleted. Its id changes; its data does not. A
snapshot under an immutability policy or a legal hold cannot be retagged (its old object
could not go) and is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from bcdr.actions.common import open_repo
from bcdr.clock import Clock
from bcdr.compliance.context import RunContext
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import TagFacts
from bcdr.errors import UsageError
from bcdr.repository import immutability
from bcdr.repository.locks import BACKUP
from bcdr.storage.url import StorageSpec


@dataclass
class Retagged:
    old: str
    new: str | None  # None: its tags were already those
    tags: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"old": self.old, "new": self.new, "tags": list(self.tags)}


def tag(
    where: StorageSpec | str,
    refs: tuple[str, ...],
    *,
    add: tuple[str, ...] = (),
    remove: tuple[str, ...] = (),
    set_to: tuple[str, ...] | None = None,
    job: str | None = None,
    clock: Clock | None = None,
    env: Mapping[str, str] | None = None,
) -> list[Retagged]:
    if set_to is None and not add and not remove:
        raise UsageError("say what to change: --add TAG, --remove TAG or --set TAG")
    if set_to is not None and (add or remove):
        raise UsageError("--set replaces every tag: give it without --add or --remove")
    repo = open_repo(where, clock=clock, env=env)
    try:
        with repo.lock(BACKUP):
            snaps = [repo.resolve_snapshot(ref, job) for ref in refs]
            plans = []
            for snap in snaps:
                wanted = set(set_to) if set_to is not None else (set(snap.tags) | set(add))
                plans.append((snap, tuple(sorted(wanted - set(remove)))))
            changing = [(s, t) for s, t in plans if t != tuple(sorted(s.tags))]
            if changing:
                repo.require_delete("tag")
                _, waiting = immutability.deletable(
                    repo, [f"snapshots/{s.id}" for s, _ in changing]
                )
                if waiting.count:
                    raise UsageError(
                        f"{waiting.count} of these snapshots are protected (immutability or a "
                        "legal hold): their tags cannot change; nothing was changed",
                        where=repo.storage.url,
                    )
            out = []
            for snap, new_tags in plans:
                if new_tags == tuple(sorted(snap.tags)):
                    out.append(Retagged(snap.id, None, new_tags))
                    continue
                new = repo.save_snapshot(
                    dataclasses.replace(snap, tags=new_tags, original=snap.recovery_point, id="")
                )
                repo.storage.delete(f"snapshots/{snap.id}")
                out.append(Retagged(snap.id, new.id, new_tags))
            if changing:
                write_record(
                    repo,
                    TagFacts(snapshots=[r.to_dict() for r in out if r.new]),
                    context=RunContext(job=job),
                )
            return out
    finally:
        repo.close()
