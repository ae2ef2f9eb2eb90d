"""Run-time residency decisions: what a real storage account says against what was declared
and allowed (pure; ``actions.placement`` reads the account). A run records a
:class:`PlacementRecord` — verified from the account, or the plan's word, *declared* — in its
snapshot and its result (the evidence an auditor reads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bcdr.geo.catalog import GEO_REDUNDANT, Catalog, catalog, normalise
from bcdr.geo.residency import OUTSIDE, SECONDARY_OUTSIDE, Allowed

VERIFIED, DECLARED = "verified", "declared"
MISMATCH = "storage account contradicts the plan"


@dataclass(frozen=True)
class AccountFacts:
    """What Resource Manager says about a storage account."""

    account: str
    location: str  # ARM name
    sku: str  # Standard_RAGRS
    secondary: str | None  # ARM name, for geo-redundant SKUs

    @property
    def redundancy(self) -> str:
        return self.sku.split("_", 1)[-1].upper()


@dataclass(frozen=True)
class PlacementRecord:
    """Where a run's data went: stored in the snapshot and the run's result."""

    region: str | None
    redundancy: str
    secondary_region: str | None
    status: str  # verified | declared
    source: str  # "azure-mgmt-storage ..." or "plan"
    checked_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        where = self.region or "region not declared"
        second = f", secondary {self.secondary_region}" if self.secondary_region else ""
        how = "verified" if self.status == VERIFIED else "declared, not verified"
        return f"{where} {self.redundancy}{second} ({how})"


def declared_placement(
    region: str | None, redundancy: str, cat: Catalog | None = None
) -> PlacementRecord:
    """The plan's word: region, redundancy, and the catalog's pair for geo-redundancy."""
    cat = cat or catalog()
    known = cat.get(region) if region else None
    secondary = known.paired if known and redundancy in GEO_REDUNDANT else None
    name = known.name if known else region
    return PlacementRecord(name, redundancy, secondary, DECLARED, "plan", now_iso())


def verified_placement(facts: AccountFacts, source: str) -> PlacementRecord:
    return PlacementRecord(
        facts.location, facts.redundancy, facts.secondary, VERIFIED, source, now_iso()
    )


def contradictions(
    facts: AccountFacts,
    region: str | None,
    redundancy: str,
    rule: Allowed | None,
    cat: Catalog | None = None,
) -> list[str]:
    """Every way the real account contradicts the declared region and redundancy, or the
    residency rule (None: no rule)."""
    cat = cat or catalog()
    out = []
    where = f"storage account {facts.account} is in {facts.location}"
    if region is not None and normalise(region) != facts.location:
        out.append(f"{where}, the plan declares region {region} [rule: {MISMATCH}]")
    if facts.redundancy != redundancy:
        out.append(
            f"storage account {facts.account} is {facts.redundancy} ({facts.sku}), the plan "
            f"declares redundancy {redundancy} [rule: {MISMATCH}]"
        )
    for region_name, rule_name, role in (
        (facts.location, OUTSIDE, "region"),
        (facts.secondary, SECONDARY_OUTSIDE, "geo-redundant secondary region"),
    ):
        if region_name is None or rule is None:
            continue
        known = cat.get(region_name)
        if known is None:
            out.append(
                f"storage account {facts.account}'s {role} {region_name} is not in bcdr's "
                f"region catalog, so residency cannot be shown [rule: {rule_name}]"
            )
        elif not rule.admits(known):
            out.append(
                f"storage account {facts.account}'s {role} {known.name} ({known.geography}) "
                f"is outside the allowed {rule.describe()} [rule: {rule_name}]"
            )
    return out


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
