"""Rebuild ``bcdr/geo/regions.json`` from Azure's own region list.

On a machine signed in to Azure::

    az account list-locations -o json > locations.json
    python -m bcdr.geo.refresh locations.json

Physical regions are taken with their ``metadata.geography`` and ``metadata.pairedRegion``.
The restricted-access flag is not in that output: it is carried over from the current catalog
for regions already there, and ``--restricted NAME`` marks new ones (see docs/residency.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

from bcdr.geo.catalog import CATALOG_FILE, catalog, parse_catalog


def regions_from_az(locations: list[dict[str, Any]], restricted: set[str]) -> list[dict[str, Any]]:
    out = []
    for loc in locations:
        meta = loc.get("metadata") or {}
        if meta.get("regionType") != "Physical" or not meta.get("geography"):
            continue
        pairs = meta.get("pairedRegion") or []
        out.append(
            {
                "name": loc["name"],
                "display_name": loc["displayName"],
                "geography": meta["geography"],
                "paired": pairs[0]["name"] if pairs else None,
                "restricted": loc["name"] in restricted,
            }
        )
    return sorted(out, key=lambda r: (r["geography"], r["name"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bcdr.geo.refresh", description=__doc__)
    p.add_argument("locations", type=Path, help="output of `az account list-locations -o json`")
    p.add_argument("--restricted", action="append", default=[], metavar="NAME")
    p.add_argument("--out", type=Path, default=CATALOG_FILE)
    args = p.parse_args(argv)
    restricted = {r.name for r in catalog().regions.values() if r.restricted}
    restricted |= set(args.restricted)
    regions = regions_from_az(json.loads(args.locations.read_text()), restricted)
    doc = {
        "source": f"az account list-locations ({args.locations.name}); restricted-access flags "
        "from the previous catalog and --restricted",
        "as_of": datetime.date.today().isoformat(),
        "regions": regions,
    }
    parse_catalog(doc)  # refuse to write a catalog that does not hold together
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(regions)} regions to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
