"""Where a run's bytes go, established before any are written.

For an Azure repository whose plan entry has ``management``, the storage account's location,
SKU and secondary location are read from Resource Manager (azure-mgmt-storage) and compared
with the plan and its residency rule (``geo.verify``); a contradiction refuses the run. Without
management access the plan's word is recorded as *declared, not verified*.
"""

from __future__ import annotations

from collections.abc import Mapping

from bcdr.cloud.arm import ArmAccess, arm_client, translate_arm_error
from bcdr.errors import BcdrError
from bcdr.geo.catalog import normalise
from bcdr.geo.verify import (
    AccountFacts,
    PlacementRecord,
    contradictions,
    declared_placement,
    verified_placement,
)
from bcdr.plan.model import Plan
from bcdr.plan.residency import allowed
from bcdr.storage.azureauth import parse_azure_url


class PlacementRefused(BcdrError):
    """The real storage account puts data where the plan or its residency rule says it must
    not go. Nothing was written."""


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
        raise translate_arm_error(
            exc,
            f"storage account {account}",
            access,
            not_found_hint="check management.subscription_id and management.resource_group in "
            "the plan (`az storage account show -n ACCOUNT --query id`)",
        ) from None
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


def establish_placement(
    plan: Plan, repo_name: str, env: Mapping[str, str] | None = None
) -> PlacementRecord:
    """Verify the repository's placement when the plan gives management access, else record
    it as declared. Raises PlacementRefused on any contradiction, before anything is written."""
    repo = plan.repositories[repo_name]
    if repo.management is None or not repo.url.startswith("azure://"):
        return declared_placement(repo.region, repo.redundancy)
    m = repo.management
    access = ArmAccess(
        str(m.subscription_id),
        m.resource_group,
        m.token_env.name if m.token_env else None,
        m.endpoint,
    )
    account = parse_azure_url(repo.url)[0]
    facts = read_account(access, account, env)
    problems = contradictions(facts, repo.region, repo.redundancy, allowed(plan))
    if problems:
        raise PlacementRefused(
            "; ".join(problems),
            where=f"{plan.file}: repositories.{repo_name}",
            hint="nothing was written; correct the plan (region, redundancy, residency) or the "
            "storage account, then run again",
        )
    return verified_placement(facts, f"azure-mgmt-storage {access.base_url}, {facts.sku}")
