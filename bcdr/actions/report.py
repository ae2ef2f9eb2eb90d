"""``bcdr report``: read every repository of a plan (records and chain), evaluate the
controls, render."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bcdr import retrybudget
from bcdr.actions.common import open_plan_repo
from bcdr.atomicfile import write_atomic
from bcdr.clock import Clock, SystemClock
from bcdr.compliance.anchors import Anchor
from bcdr.compliance.controls import RepoEvidence, evaluate
from bcdr.compliance.evidence import ChainProblem, read_chain
from bcdr.compliance.render import to_html, to_markdown
from bcdr.errors import BcdrError, RepositoryNotFound, UsageError
from bcdr.plan.model import Plan


@dataclass
class Anchors:
    """Heads to check the chains against besides this host's: ``--head REPO=SEQ:ID`` (by the
    plan's repository name) and the heads of previous reports (name, head)."""

    by_name: dict[str, list[Anchor]] = field(default_factory=dict)
    previous: list[tuple[str, Anchor]] = field(default_factory=list)

    def for_repo(self, name: str, repository_id: str) -> tuple[list[Anchor], list[ChainProblem]]:
        """The heads that apply to repository ``name`` (id ``repository_id``), and a problem
        for each previous report that covered a repository of that name with another id
        (replaced, its evidence with it)."""
        given = list(self.by_name.get(name, []))
        problems = []
        for prev_name, a in self.previous:
            if a.repository_id == repository_id:
                given.append(a)
            elif prev_name == name:
                problems.append(
                    ChainProblem(
                        f"repository {name}",
                        f"{a.source} covered a repository {name} with id "
                        f"{str(a.repository_id)[:12]} (head #{a.seq}); the one there now has id "
                        f"{repository_id[:12]}: it was replaced, and the evidence with it",
                    )
                )
        return given, problems


def gather(
    plan: Plan, clock: Clock | None = None, given: Anchors | None = None
) -> list[RepoEvidence]:
    """Records, chain and encryption of each repository (a repository that cannot be read is
    reported, not fatal: its controls say NO EVIDENCE). Each chain is checked against this
    host's newest head and the ``given`` ones."""
    given = given or Anchors()
    out = []
    for name, declared in plan.repositories.items():
        ev = RepoEvidence(name, declared.url)
        ev.immutable_days = declared.immutability.days if declared.immutability else None
        try:
            repo = open_plan_repo(plan, name, clock)
            ev.url = repo.storage.url
        except RepositoryNotFound:
            ev.error = "it does not exist yet"
            out.append(ev)
            continue
        except BcdrError as exc:
            ev.error = str(exc)
            out.append(ev)
            continue
        try:
            ev.encryption = repo.config.encryption
            heads, replaced = given.for_repo(name, repo.config.id)
            ev.records, chain = read_chain(repo, heads)
            chain.problems += replaced + chain.unusable  # in the chain, yet not evidence
            ev.chain = chain.to_dict()
        except BcdrError as exc:
            ev.error = str(exc)
        finally:
            repo.close()
        out.append(ev)
    return out


def build_report(
    plan: Plan, since: timedelta, clock: Clock | None = None, given: Anchors | None = None
) -> dict[str, Any]:
    now = (clock or SystemClock()).now()
    retrybudget.set_from_plan(plan.retry_budget.seconds if plan.retry_budget else None)
    return evaluate(plan, gather(plan, clock, given), now, now - since)


def render(doc: dict[str, Any], fmt: str) -> str:
    """The report document as ``json``, ``html`` or Markdown (``md``)."""
    if fmt == "json":
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if fmt == "html":
        return to_html(doc)
    return to_markdown(doc)


def write_report(path: Path, text: str) -> None:
    """Write the report file atomically (mode 0640); UsageError naming the file when it
    cannot be written."""
    try:
        write_atomic(path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write the report: {exc.strerror}", where=str(path)) from None
