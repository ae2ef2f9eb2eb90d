"""Run-time residency: where a run's bytes really go, checked before any are written.

For an Azure repository whose plan entry has ``management``, the storage account's location,
SKU and secondary location are read from Resource Manager (azure-mgmt-storage) and compared
with the plan and its residency rule; a contradiction refuses the run. Without management
access the plan's word is recorded as *declared, not verified*. Either way the run records a
:class:`PlacementRecord` in its snapshot and its result (the evidence an auditor reads).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from bcdr.cloud.arm import ArmAccess, arm_client, translate_arm_error
from bcdr.errors import BcdrError
from bcdr.geo.catalog import GEO_REDUNDANT, Catalog, catalog, normalise
from bcdr.geo.residency import OUTSIDE, SECONDARY_OUTSIDE, allowed, describe_allowed
from bcdr.plan.model import Plan
from bcdr.plan.model import Repository as PlanRepository
from bcdr.storage.azureauth import parse_azure_url

VERIFIED, DECLARED = "verified", "declared"
MISMATCH = "storage account contradicts the plan"


class PlacementRefused(BcdrError):
    """The real storage account puts data where the plan or its residency rule says it must
    not go. Nothing was written."""


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


def read_account(
    access: ArmAccess, account: str, env: Mapping[str, str] | None = None
) -> AccountFacts:
    """The account's location, SKU and secondary location, through azure-mgmt-storage."""
    from azure.core.exceptions import AzureError
    from azure.mgmt.storage import StorageManagementClient

    client = arm_client(StorageManagementClient, access, env)
    try:
        props = client.storage_accounts.get_properties(access.resource_group, account)
    except AzureError as exc:
        raise translate_arm_error(exc, f"storage account {account}", access) from None
    finally:
        client.close()
    inner = getattr(props, "properties", None)
    secondary = getattr(inner, "secondary_location", None) if inner is not None else None
    return AccountFacts(
        account=account,
        location=normalise(props.location or ""),
        sku=str(getattr(props.sku.name, "value", props.sku.name)) if props.sku else "",
        secondary=normalise(secondary) if secondary else None,
    )


def declared_placement(repo: PlanRepository, cat: Catalog | None = None) -> PlacementRecord:
    """The plan's word: region, redundancy, and the catalog's pair for geo-redundancy."""
    cat = cat or catalog()
    known = cat.get(repo.region) if repo.region else None
    region = known.name if known else repo.region
    secondary = known.paired if known and repo.redundancy in GEO_REDUNDANT else None
    return PlacementRecord(region, repo.redundancy, secondary, DECLARED, "plan", _now())


def contradictions(
    plan: Plan, repo_name: str, facts: AccountFacts, cat: Catalog | None = None
) -> list[str]:
    """Every way the real account contradicts the plan entry or the residency rule."""
    cat = cat or catalog()
    repo = plan.repositories[repo_name]
    out = []
    where = f"storage account {facts.account} is in {facts.location}"
    if repo.region is not None and normalise(repo.region) != facts.location:
        out.append(f"{where}, the plan declares region {repo.region} [rule: {MISMATCH}]")
    if facts.redundancy != repo.redundancy:
        out.append(
            f"storage account {facts.account} is {facts.redundancy} ({facts.sku}), the plan "
            f"declares redundancy {repo.redundancy} [rule: {MISMATCH}]"
        )
    res = plan.residency
    for region_name, rule, role in (
        (facts.location, OUTSIDE, "region"),
        (facts.secondary, SECONDARY_OUTSIDE, "geo-redundant secondary region"),
    ):
        if region_name is None or res is None:
            continue
        region = cat.get(region_name)
        if region is None:
            out.append(
                f"storage account {facts.account}'s {role} {region_name} is not in bcdr's "
                f"region catalog, so residency cannot be shown [rule: {rule}]"
            )
        elif not allowed(region, res):
            out.append(
                f"storage account {facts.account}'s {role} {region.name} ({region.geography}) "
                f"is outside the allowed {describe_allowed(res)} [rule: {rule}]"
            )
    return out


def establish_placement(
    plan: Plan, repo_name: str, env: Mapping[str, str] | None = None
) -> PlacementRecord:
    """Verify the repository's placement when the plan gives management access, else record
    it as declared. Raises PlacementRefused on any contradiction, before anything is written."""
    repo = plan.repositories[repo_name]
    if repo.management is None or not repo.url.startswith("azure://"):
        return declared_placement(repo)
    m = repo.management
    access = ArmAccess(
        str(m.subscription_id),
        m.resource_group,
        m.token_env.name if m.token_env else None,
        m.endpoint,
    )
    account = parse_azure_url(repo.url)[0]
    facts = read_account(access, account, env)
    problems = contradictions(plan, repo_name, facts)
    if problems:
        raise PlacementRefused(
            "; ".join(problems),
            where=f"{plan.file}: repositories.{repo_name}",
            hint="nothing was written; correct the plan (region, redundancy, residency) or the "
            "storage account, then run again",
        )
    return PlacementRecord(
        facts.location,
        facts.redundancy,
        facts.secondary,
        VERIFIED,
        f"azure-mgmt-storage {access.base_url}, {facts.sku}",
        _now(),
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
