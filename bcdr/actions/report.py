"""``bcdr report``: read every repository of a plan (records and chain), evaluate the
controls, render."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from bcdr.actions.common import open_plan_repo
from bcdr.clock import Clock, SystemClock
from bcdr.compliance.controls import RepoEvidence, evaluate
from bcdr.compliance.evidence import ChainProblem, read_chain, record_problem
from bcdr.errors import BcdrError, RepositoryNotFound
from bcdr.plan.model import Plan


def gather(plan: Plan, clock: Clock | None = None) -> list[RepoEvidence]:
    """Records, chain and encryption of each repository (a repository that cannot be read is
    reported, not fatal: its controls say NO EVIDENCE)."""
    out = []
    for name, declared in plan.repositories.items():
        ev = RepoEvidence(name, declared.url)
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
            ev.records, chain = read_chain(repo)
            for d in ev.records:  # in the chain, yet not evidence: named, and not trusted
                problem = record_problem(d)
                if problem is not None:
                    label = f"#{d['seq']} ({d['id'][:12]})" if "seq" in d else d["id"][:12]
                    chain.problems.append(ChainProblem(label, f"not usable as evidence: {problem}"))
                    chain.bad_ids.add(d["id"])
            ev.chain = chain.to_dict()
        except BcdrError as exc:
            ev.error = str(exc)
        finally:
            repo.close()
        out.append(ev)
    return out


def build_report(plan: Plan, since: timedelta, clock: Clock | None = None) -> dict[str, Any]:
    now = (clock or SystemClock()).now()
    return evaluate(plan, gather(plan, clock), now, now - since)
