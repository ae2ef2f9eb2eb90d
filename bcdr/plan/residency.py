"""A plan's placements and residency violations: walks the plan and applies the rules of
``geo.residency`` to each field that puts data in a region.

``placements`` lists every region a job's bytes reach — a repository's region, the paired
region its geo-redundant storage replicates to on its own, a snapshot's region and its copies,
a drill's scratch region. ``violations`` is what ``bcdr validate`` and every run refuse.
"""

from __future__ import annotations

from bcdr.geo.catalog import Catalog, catalog
from bcdr.geo.residency import (
    NO_REGION,
    Allowed,
    Placement,
    Violation,
    check_placement,
    no_pair,
    place,
    storage_placements,
    unknown_names,
)
from bcdr.plan.model import Plan, Repository


def allowed(plan: Plan) -> Allowed | None:
    """The plan's residency rule, or None when it has none."""
    res = plan.residency
    if res is None:
        return None
    return Allowed(res.allowed_regions or (), res.allowed_geographies or ())


def _repository(cat: Catalog, job: str, name: str, repo: Repository) -> list[Placement]:
    if repo.region is None:
        return []
    at = ("repositories", name)
    return storage_placements(
        cat, job, repo.region, repo.redundancy, (*at, "region"), (*at, "redundancy")
    )


def _cloud(plan: Plan, cat: Catalog) -> list[Placement]:
    """Snapshot jobs' disks and copies, drills' scratch regions."""
    out: list[Placement] = []
    for name, snap in plan.snapshots.items():
        out.append(place(cat, name, snap.region, "disks", ("snapshots", name, "region")))
        for i, target in enumerate(snap.copy_to):
            out.append(place(cat, name, target, "copy", ("snapshots", name, "copy_to", i)))
    for name, drill in plan.drills.items():
        if drill.scratch_region is not None:
            path = ("drills", name, "scratch_region")
            out.append(place(cat, name, drill.scratch_region, "scratch", path))
    return out


def placements(plan: Plan, cat: Catalog | None = None) -> list[Placement]:
    """Every region each job's data reaches, in plan order."""
    cat = cat or catalog()
    out: list[Placement] = []
    for name, job in plan.backups.items():
        for target in (job.repository, *(t.repository for t in job.copy_targets())):
            repo = plan.repositories.get(target)
            if repo is not None:
                out += _repository(cat, name, target, repo)
    for name, cjob in plan.copies.items():
        for copy_target in cjob.copy_targets():
            found = plan.repositories.get(copy_target.repository)
            if found is not None:
                out += _repository(cat, name, copy_target.repository, found)
    return out + _cloud(plan, cat)


def violations(plan: Plan, cat: Catalog | None = None) -> list[Violation]:
    """Every residency and region rule the plan breaks (empty when it is fine)."""
    cat = cat or catalog()
    rule = allowed(plan)
    out: list[Violation] = []
    if rule is not None:
        out += unknown_names(
            cat, rule, ("residency", "allowed_regions"), ("residency", "allowed_geographies")
        )
    # Every repository is checked, used by a job or not: a plan must not name a place it may
    # not write to.
    sites: list[Placement] = []
    for name, repo in plan.repositories.items():
        if rule is not None and repo.region is None:
            out.append(
                Violation(
                    NO_REGION,
                    ("repositories", name, "region"),
                    f"repository {name!r} has no region, so the residency rule cannot be "
                    "checked for the data written to it",
                    "name the Azure region the data is in (e.g. `region: westeurope`); for a "
                    "local repository, the region of the machine or disk it is on",
                    (),
                )
            )
        if repo.region is not None:
            out += no_pair(cat, repo.region, repo.redundancy, ("repositories", name, "redundancy"))
        sites += _repository(cat, "", name, repo)
    for p in sites + _cloud(plan, cat):
        out += check_placement(cat, rule, p)
    return out
