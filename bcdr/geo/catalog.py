"""The catalog of Azure regions: ARM name, display name, geography, paired region, and whether
access is restricted. Shipped as ``regions.json`` beside this module; its source and date are
in the file and in docs/residency.md, and ``python -m bcdr.geo.refresh`` rebuilds it from
``az account list-locations`` output.

Pairs may be one-way: West US 3 replicates to East US, whose own pair is West US.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CATALOG_FILE = Path(__file__).with_name("regions.json")
GEO_REDUNDANT = frozenset({"GRS", "RAGRS", "GZRS", "RAGZRS"})


@dataclass(frozen=True)
class Region:
    name: str  # ARM name: westeurope
    display_name: str  # West Europe
    geography: str  # Europe
    paired: str | None  # ARM name of the paired region, None for a region without a pair
    restricted: bool  # access is restricted (must be requested; not a general-purpose region)


@dataclass(frozen=True)
class Catalog:
    regions: dict[str, Region]
    source: str
    as_of: str

    def get(self, name: str) -> Region | None:
        """The region ``name`` means in any usual spelling (``West Europe``, ``west-europe``,
        ``westeurope``), or None."""
        return self.regions.get(normalise(name))

    def geographies(self) -> list[str]:
        return sorted({r.geography for r in self.regions.values()})

    def in_geography(self, geography: str) -> list[Region]:
        key = geography.casefold()
        return [r for r in self.regions.values() if r.geography.casefold() == key]


def normalise(name: str) -> str:
    """``West Europe`` / ``west_europe`` / ``(Europe) West Europe`` -> ``westeurope``."""
    text = re.sub(r"^\([^)]*\)\s*", "", name.strip())
    return re.sub(r"[\s_\-]+", "", text).casefold()


def parse_catalog(doc: Mapping[str, object]) -> Catalog:
    """Build a Catalog from the JSON document; ValueError names what is wrong."""
    raw = doc.get("regions")
    if not isinstance(raw, list):
        raise ValueError("'regions' must be a list")
    regions: dict[str, Region] = {}
    for item in raw:
        region = Region(
            name=str(item["name"]),
            display_name=str(item["display_name"]),
            geography=str(item["geography"]),
            paired=item.get("paired") or None,
            restricted=bool(item.get("restricted", False)),
        )
        if region.name != normalise(region.name):
            raise ValueError(f"region name {region.name!r} is not an ARM name")
        regions[region.name] = region
    for region in regions.values():
        if region.paired is not None and region.paired not in regions:
            raise ValueError(f"{region.name} pairs with unknown region {region.paired!r}")
    return Catalog(regions, str(doc.get("source", "")), str(doc.get("as_of", "")))


@cache
def catalog() -> Catalog:
    """The shipped catalog (read once)."""
    return parse_catalog(json.loads(CATALOG_FILE.read_text(encoding="utf-8")))
