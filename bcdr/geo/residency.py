"""Residency decisions: where each job's data lives, and which placements a plan refuses.

Pure functions over a validated plan and the region catalog (STYLE.md: decisions as pure
functions). ``placements`` lists every region a job's bytes reach — a repository's region, the
paired region its geo-redundant storage replicates to on its own, a snapshot's region and its
copies, a drill's scratch region. ``violations`` applies the rules:

- unknown region or geography: any name the catalog does not know (with "did you mean");
- geo-redundancy without a pair: GRS/RA-GRS/GZRS/RA-GZRS in a region that has no paired region;
- outside residency: a placement whose region is neither allowed by name nor by geography;
- geo-redundant secondary outside residency: the same, for the paired region Azure copies to.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from bcdr.geo.catalog import GEO_REDUNDANT, Catalog, Region, catalog, normalise
from bcdr.plan.model import Plan, Residency

PlanPath = tuple[str | int, ...]
UNKNOWN = "unknown region"
UNKNOWN_GEOGRAPHY = "unknown geography"
NO_PAIR = "geo-redundancy without a paired region"
OUTSIDE = "region outside residency"
SECONDARY_OUTSIDE = "geo-redundant secondary outside residency"


@dataclass(frozen=True)
class Placement:
    """One region a job's data lives in. ``role``: repository, secondary, disks, copy,
    scratch. ``path`` is the plan field that puts it there."""

    job: str
    region: str  # ARM name (normalised) or, for an unknown region, as written
    role: str
    path: PlanPath
    geography: str | None
    via: str | None = None  # for a secondary: "GRS from brazilsouth"


@dataclass(frozen=True)
class Violation:
    rule: str
    path: PlanPath
    message: str
    hint: str | None
    regions: PlanPath


def _did_you_mean(name: str, cat: Catalog) -> str:
    close = difflib.get_close_matches(normalise(name), list(cat.regions), n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "use an ARM region name such as westeurope (`az account list-locations -o table`)"


def _place(
    cat: Catalog, job: str, name: str, role: str, path: PlanPath, via: str | None = None
) -> Placement:
    region = cat.get(name)
    return Placement(
        job,
        region.name if region else name,
        role,
        path,
        region.geography if region else None,
        via,
    )


def repository_placements(
    cat: Catalog, job: str, repo_name: str, region: str | None, redundancy: str
) -> list[Placement]:
    """The repository's region and, when geo-redundant, the paired region it replicates to."""
    if region is None:
        return []
    path = ("repositories", repo_name, "region")
    out = [_place(cat, job, region, "repository", path)]
    known = cat.get(region)
    if redundancy in GEO_REDUNDANT and known is not None and known.paired is not None:
        out.append(
            _place(
                cat,
                job,
                known.paired,
                "secondary",
                ("repositories", repo_name, "redundancy"),
                f"{redundancy} from {known.name}",
            )
        )
    return out


def placements(plan: Plan, cat: Catalog | None = None) -> list[Placement]:
    """Every region each job's data reaches, in plan order."""
    cat = cat or catalog()
    out: list[Placement] = []
    for name, job in plan.backups.items():
        repo = plan.repositories.get(job.repository)
        if repo is not None:
            out += repository_placements(cat, name, job.repository, repo.region, repo.redundancy)
    return out + _cloud_placements(plan, cat)


def _cloud_placements(plan: Plan, cat: Catalog) -> list[Placement]:
    """Snapshot jobs' disks and copies, drills' scratch regions."""
    out: list[Placement] = []
    for name, snap in plan.snapshots.items():
        out.append(_place(cat, name, snap.region, "disks", ("snapshots", name, "region")))
        for i, target in enumerate(snap.copy_to):
            out.append(_place(cat, name, target, "copy", ("snapshots", name, "copy_to", i)))
    for name, drill in plan.drills.items():
        if drill.scratch_region is not None:
            path = ("drills", name, "scratch_region")
            out.append(_place(cat, name, drill.scratch_region, "scratch", path))
    return out


def allowed(region: Region, residency: Residency) -> bool:
    regions = {normalise(r) for r in residency.allowed_regions or ()}
    geos = {g.casefold() for g in residency.allowed_geographies or ()}
    return region.name in regions or region.geography.casefold() in geos


def describe_allowed(residency: Residency) -> str:
    parts = []
    if residency.allowed_regions:
        parts.append("regions " + ", ".join(residency.allowed_regions))
    if residency.allowed_geographies:
        parts.append("geographies " + ", ".join(residency.allowed_geographies))
    return " and ".join(parts) or "nothing"


def violations(plan: Plan, cat: Catalog | None = None) -> list[Violation]:
    """Every residency and region rule the plan breaks (empty when it is fine)."""
    cat = cat or catalog()
    out: list[Violation] = []
    out += _residency_entries(plan, cat)
    for name, repo in plan.repositories.items():
        known = cat.get(repo.region) if repo.region else None
        if repo.redundancy in GEO_REDUNDANT and known is not None and known.paired is None:
            out.append(
                Violation(
                    NO_PAIR,
                    ("repositories", name, "redundancy"),
                    f"{repo.redundancy} replicates to the paired region, and {known.name} has none",
                    "use LRS or ZRS there, or a region with a pair",
                    (known.name,),
                )
            )
    # Every repository is checked, used by a job or not: a plan must not name a place it may
    # not write to.
    sites: list[Placement] = []
    for name, repo in plan.repositories.items():
        sites += repository_placements(cat, "", name, repo.region, repo.redundancy)
    for p in sites + _cloud_placements(plan, cat):
        out += _check_placement(plan.residency, p, cat)
    return out


def _residency_entries(plan: Plan, cat: Catalog) -> list[Violation]:
    res = plan.residency
    if res is None:
        return []
    out = []
    for i, r in enumerate(res.allowed_regions or ()):
        if cat.get(r) is None:
            path: PlanPath = ("residency", "allowed_regions", i)
            out.append(
                Violation(
                    UNKNOWN, path, f"{r!r} is not an Azure region", _did_you_mean(r, cat), (r,)
                )
            )
    known_geos = {g.casefold(): g for g in cat.geographies()}
    for i, g in enumerate(res.allowed_geographies or ()):
        if g.casefold() not in known_geos:
            close = difflib.get_close_matches(g, list(known_geos.values()), n=3, cutoff=0.5)
            hint = (
                ("did you mean " + " or ".join(repr(c) for c in close) + "?")
                if close
                else ("geographies: " + ", ".join(cat.geographies()))
            )
            path = ("residency", "allowed_geographies", i)
            out.append(
                Violation(UNKNOWN_GEOGRAPHY, path, f"{g!r} is not an Azure geography", hint, (g,))
            )
    return out


def _check_placement(res: Residency | None, p: Placement, cat: Catalog) -> list[Violation]:
    region = cat.get(p.region)
    if region is None:
        if p.role == "secondary":
            return []
        return [
            Violation(
                UNKNOWN,
                p.path,
                f"{p.region!r} is not an Azure region",
                _did_you_mean(p.region, cat),
                (p.region,),
            )
        ]
    if res is None or allowed(region, res):
        return []
    where = f"{region.name} ({region.geography})"
    if p.role == "secondary":
        return [
            Violation(
                SECONDARY_OUTSIDE,
                p.path,
                f"{p.via} replicates every byte to the paired region {where}, outside the "
                f"allowed {describe_allowed(res)}",
                "use LRS or ZRS (or a region whose pair is allowed)",
                (p.via.rsplit(" ", 1)[-1] if p.via else "", region.name),
            )
        ]
    return [
        Violation(
            OUTSIDE,
            p.path,
            f"{p.role} region {where} is outside the allowed {describe_allowed(res)}",
            f"choose an allowed region, or, if data may live there, add {region.geography!r} "
            f"to allowed_geographies or {region.name} to allowed_regions (each Azure "
            "geography is separate: 'Europe' is northeurope and westeurope only)",
            (region.name,),
        )
    ]
