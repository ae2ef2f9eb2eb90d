"""Residency decisions over regions: which placements a rule refuses.

Pure functions of the region catalog and plain values (STYLE.md: decisions as pure
functions); nothing here knows the plan's shape — ``plan.residency`` walks a plan and calls
these with the plan field (``path``) each placement comes from. The rules:

- unknown region or geography: any name the catalog does not know (with "did you mean");
- geo-redundancy without a pair: GRS/RA-GRS/GZRS/RA-GZRS in a region that has no paired region;
- outside residency: a placement whose region is neither allowed by name nor by geography;
- geo-redundant secondary outside residency: the same, for the paired region Azure copies to.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from bcdr.geo.catalog import GEO_REDUNDANT, Catalog, Region, normalise

Path = tuple[str | int, ...]  # where a value comes from (a plan field), for the message
UNKNOWN = "unknown region"
UNKNOWN_GEOGRAPHY = "unknown geography"
NO_PAIR = "geo-redundancy without a paired region"
OUTSIDE = "region outside residency"
SECONDARY_OUTSIDE = "geo-redundant secondary outside residency"
NO_REGION = "repository without a region"


@dataclass(frozen=True)
class Allowed:
    """Where data may live: regions by name, or whole Azure geographies."""

    regions: tuple[str, ...] = ()
    geographies: tuple[str, ...] = ()

    def admits(self, region: Region) -> bool:
        return region.name in {normalise(r) for r in self.regions} or (
            region.geography.casefold() in {g.casefold() for g in self.geographies}
        )

    def describe(self) -> str:
        parts = []
        if self.regions:
            parts.append("regions " + ", ".join(self.regions))
        if self.geographies:
            parts.append("geographies " + ", ".join(self.geographies))
        return " and ".join(parts) or "nothing"


@dataclass(frozen=True)
class Placement:
    """One region a job's data lives in. ``role``: repository, secondary, disks, copy,
    scratch. ``path`` is the field that puts it there."""

    job: str
    region: str  # ARM name (normalised) or, for an unknown region, as written
    role: str
    path: Path
    geography: str | None
    via: str | None = None  # for a secondary: "GRS from brazilsouth"


@dataclass(frozen=True)
class Violation:
    rule: str
    path: Path
    message: str
    hint: str | None
    regions: tuple[str, ...]


def did_you_mean(name: str, known: list[str]) -> str | None:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return "did you mean " + " or ".join(repr(c) for c in close) + "?" if close else None


def place(
    cat: Catalog, job: str, name: str, role: str, path: Path, via: str | None = None
) -> Placement:
    region = cat.get(name)
    return Placement(
        job, region.name if region else name, role, path, region.geography if region else None, via
    )


def storage_placements(
    cat: Catalog, job: str, region: str, redundancy: str, region_path: Path, redundancy_path: Path
) -> list[Placement]:
    """A storage account's region and, when geo-redundant, the paired region it replicates to."""
    out = [place(cat, job, region, "repository", region_path)]
    known = cat.get(region)
    if redundancy in GEO_REDUNDANT and known is not None and known.paired is not None:
        via = f"{redundancy} from {known.name}"
        out.append(place(cat, job, known.paired, "secondary", redundancy_path, via))
    return out


def no_pair(cat: Catalog, region: str, redundancy: str, path: Path) -> list[Violation]:
    """Geo-redundancy where the region has nowhere to replicate to."""
    known = cat.get(region)
    if redundancy not in GEO_REDUNDANT or known is None or known.paired is not None:
        return []
    return [
        Violation(
            NO_PAIR,
            path,
            f"{redundancy} replicates to the paired region, and {known.name} has none",
            "use LRS or ZRS there, or a region with a pair",
            (known.name,),
        )
    ]


def unknown_names(
    cat: Catalog, rule: Allowed, regions_path: Path, geos_path: Path
) -> list[Violation]:
    """Entries of the rule itself that name no region or geography."""
    out = []
    for i, r in enumerate(rule.regions):
        if cat.get(r) is None:
            out.append(_unknown_region(cat, r, (*regions_path, i)))
    known_geos = {g.casefold(): g for g in cat.geographies()}
    for i, g in enumerate(rule.geographies):
        if g.casefold() not in known_geos:
            hint = did_you_mean(g, list(known_geos.values())) or (
                "geographies: " + ", ".join(cat.geographies())
            )
            msg = f"{g!r} is not an Azure geography"
            out.append(Violation(UNKNOWN_GEOGRAPHY, (*geos_path, i), msg, hint, (g,)))
    return out


def _unknown_region(cat: Catalog, name: str, path: Path) -> Violation:
    hint = did_you_mean(normalise(name), list(cat.regions)) or (
        "use an ARM region name such as westeurope (`az account list-locations -o table`)"
    )
    return Violation(UNKNOWN, path, f"{name!r} is not an Azure region", hint, (name,))


def check_placement(cat: Catalog, rule: Allowed | None, p: Placement) -> list[Violation]:
    """An unknown region, or a placement outside the rule (None: no rule, anything goes)."""
    region = cat.get(p.region)
    if region is None:
        return [] if p.role == "secondary" else [_unknown_region(cat, p.region, p.path)]
    if rule is None or rule.admits(region):
        return []
    where = f"{region.name} ({region.geography})"
    if p.role == "secondary":
        return [
            Violation(
                SECONDARY_OUTSIDE,
                p.path,
                f"{p.via} replicates every byte to the paired region {where}, outside the "
                f"allowed {rule.describe()}",
                "use LRS or ZRS (or a region whose pair is allowed)",
                (p.via.rsplit(" ", 1)[-1] if p.via else "", region.name),
            )
        ]
    return [
        Violation(
            OUTSIDE,
            p.path,
            f"{p.role} region {where} is outside the allowed {rule.describe()}",
            f"choose an allowed region, or, if data may live there, add {region.geography!r} "
            f"to allowed_geographies or {region.name} to allowed_regions (each Azure "
            "geography is separate: 'Europe' is northeurope and westeurope only)",
            (region.name,),
        )
    ]
