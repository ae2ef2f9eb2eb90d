"""Regions and data residency: the region catalog, the rules `bcdr validate` and every run apply
before anything is written, `bcdr plan` listing every region a job's data reaches, and run-time
verification of the real storage account through azure-mgmt-storage against a loopback ARM
server (tests/arm_server.py), with Azurite holding the blobs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from bcdr.geo.catalog import catalog, normalise, parse_catalog
from bcdr.geo.refresh import main as refresh_main
from bcdr.plan.loader import load_plan
from bcdr.plan.residency import placements
from tests.arm_server import ArmServer
from tests.azurite import ACCOUNT, Azurite
from tests.conftest import Cli, run_process, write_tree

SUB = "0b3c1f8e-5a2d-4c7e-9f10-2a6b8d4e1c93"
DISK = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/d1"
TOKEN = "arm-test-token-" + "x" * 40
CS = "BCDR_TEST_AZURE_CS"

# Line numbers below are those of this text: keep them in step.
BASE = f"""\
version: 1
name: residency
repositories:
  main:
    url: ../repo
    region: westeurope
    redundancy: LRS
residency:
  allowed_geographies: [Europe]
backups:
  ck:
    paths: [../data]
    repository: main
    schedule: daily
snapshots:
  disks:
    disks: [{DISK}]
    region: northeurope
    copy_to: [westeurope]
    schedule: daily
drills:
  dd:
    snapshot: disks
    schedule: weekly
    rto: 1h
    scratch_region: northeurope
"""


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "plans" / "p.yaml"
    f.parent.mkdir(exist_ok=True)
    f.write_text(text)
    write_tree(tmp_path / "data", {"a.bin": b"a" * 1000})
    return f


def _edit(*pairs: tuple[str, str]) -> str:
    text = BASE
    for old, new in pairs:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def test_the_base_plan_is_valid(cli: Cli, tmp_path: Path) -> None:
    r = cli("validate", _write(tmp_path, BASE))
    assert r.code == 0, r.out


@pytest.mark.parametrize(
    ("pairs", "line", "field", "rule", "words"),
    [
        pytest.param(
            [
                ("region: westeurope", "region: brazilsouth"),
                ("redundancy: LRS", "redundancy: GRS"),
                ("[Europe]", "[Brazil]"),
                ("northeurope\n    copy_to: [westeurope]", "brazilsouth\n    copy_to: []"),
                ("scratch_region: northeurope", "scratch_region: brazilsouth"),
            ],
            7,
            "repositories.main.redundancy",
            "geo-redundant secondary outside residency",
            ["GRS from brazilsouth", "southcentralus (United States)", "geographies Brazil"],
            id="brazilsouth-GRS-pairs-outside-Brazil",
        ),
        pytest.param(
            [
                ("region: westeurope", "region: polandcentral"),
                ("redundancy: LRS", "redundancy: RAGZRS"),
                ("[Europe]", "[Europe, Poland]"),
            ],
            7,
            "repositories.main.redundancy",
            "geo-redundancy without a paired region",
            ["polandcentral has none"],
            id="no-pair",
        ),
        pytest.param(
            [("region: westeurope", "region: West Eurpoe")],
            6,
            "repositories.main.region",
            "unknown region",
            ["'West Eurpoe'", "'westeurope'"],
            id="unknown-region-did-you-mean",
        ),
        pytest.param(
            [("[Europe]", "[Europa]")],
            9,
            "residency.allowed_geographies[0]",
            "unknown geography",
            ["did you mean 'Europe'"],
            id="unknown-geography",
        ),
        pytest.param(
            [("region: westeurope", "region: francecentral")],
            6,
            "repositories.main.region",
            "region outside residency",
            ["francecentral (France)", "geographies Europe", "add 'France' to allowed_geographies"],
            id="france-is-not-azure-europe",
        ),
        pytest.param(
            [("copy_to: [westeurope]", "copy_to: [westeurope, eastus]")],
            19,
            "snapshots.disks.copy_to[1]",
            "region outside residency",
            ["copy region eastus (United States)"],
            id="copy-outside",
        ),
        pytest.param(
            [("region: northeurope\n", "region: uksouth\n")],
            18,
            "snapshots.disks.region",
            "region outside residency",
            ["uksouth (United Kingdom)"],
            id="disks-outside",
        ),
        pytest.param(
            [("scratch_region: northeurope", "scratch_region: westus3")],
            26,
            "drills.dd.scratch_region",
            "region outside residency",
            ["westus3 (United States)"],
            id="scratch-outside",
        ),
        pytest.param(
            [("allowed_geographies: [Europe]", "allowed_regions: [westeurope]")],
            18,
            "snapshots.disks.region",
            "region outside residency",
            ["northeurope (Europe)", "regions westeurope"],
            id="allowed-regions-by-name",
        ),
    ],
)
def test_each_residency_rule_is_refused_with_its_place_rule_and_regions(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, pairs, line: int, field: str, rule: str, words: list[str]
) -> None:
    f = _write(tmp_path, _edit(*pairs))
    r = cli("validate", f)
    assert r.code == 2, r.out
    located = [x for x in r.out.splitlines() if x.startswith(f"{f}:{line}:")]
    assert located, r.out
    assert any(f": {field}: " in x and f"[rule: {rule}]" in x for x in located), r.out
    for w in words:
        assert w in r.out, (w, r.out)


def test_region_names_are_normalised(cli: Cli, tmp_path: Path) -> None:
    f = _write(
        tmp_path,
        _edit(
            ("region: westeurope", "region: West Europe"),
            ("[westeurope]", "['north-europe', 'West Europe']"),
        ),
    )
    assert cli("validate", f).code == 0
    assert normalise("(Europe) West Europe") == "westeurope" == normalise("west_europe")
    plan = load_plan(f)
    assert {(p.job, p.region) for p in placements(plan)} >= {("ck", "westeurope")}


def test_a_geo_redundant_pair_inside_residency_is_accepted_and_shown(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path
) -> None:
    f = _write(tmp_path, _edit(("redundancy: LRS", "redundancy: RAGRS")))
    assert cli("validate", f).code == 0
    r = cli("plan", f, "--json")
    jobs = {j["name"]: j for j in r.json()["jobs"]}
    ck = [(p["region"], p["role"], p["via"]) for p in jobs["ck"]["placements"]]
    assert ck == [
        ("westeurope", "repository", None),
        ("northeurope", "secondary", "RAGRS from westeurope"),
    ]
    disks = [(p["region"], p["role"]) for p in jobs["disks"]["placements"]]
    assert disks == [("northeurope", "disks"), ("westeurope", "copy")]
    assert [p["region"] for p in jobs["dd"]["placements"]] == ["northeurope"]
    text = cli("plan", f).out
    assert (
        "regions   westeurope (Europe, repository), northeurope (Europe, secondary: RAGRS "
        "from westeurope)" in text
    )


def test_run_refuses_before_anything_is_written(tmp_path: Path) -> None:
    f = _write(tmp_path, _edit(("region: westeurope", "region: brazilsouth")))
    r = run_process("run", f)
    assert r.code == 2, r.out + r.err
    assert "[rule: region outside residency]" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "repo").exists()


def test_the_catalog_holds_together() -> None:
    cat = catalog()
    assert cat.source and cat.as_of
    assert len(cat.regions) > 50
    for r in cat.regions.values():
        assert r.name == normalise(r.name)
        assert r.paired is None or r.paired in cat.regions, r
    # one-way pairs: westus3 replicates to eastus, whose own pair is westus
    assert cat.regions["westus3"].paired == "eastus" and cat.regions["eastus"].paired == "westus"
    assert cat.regions["brazilsouth"].paired == "southcentralus"
    assert cat.get("West Europe") is cat.regions["westeurope"]
    assert {r.name for r in cat.in_geography("europe")} == {"westeurope", "northeurope"}
    assert cat.regions["polandcentral"].paired is None
    assert (
        cat.regions["germanynorth"].restricted and not cat.regions["germanywestcentral"].restricted
    )
    with pytest.raises(ValueError, match="pairs with unknown region"):
        parse_catalog(
            {"regions": [{"name": "a", "display_name": "A", "geography": "G", "paired": "b"}]}
        )


def _az(
    name: str, display: str, geo: str, pair: str | None, kind: str = "Physical"
) -> dict[str, Any]:
    return {
        "name": name,
        "displayName": display,
        "regionalDisplayName": f"({geo}) {display}",
        "metadata": {
            "regionType": kind,
            "geography": geo,
            "pairedRegion": [{"name": pair, "id": f"/x/{pair}"}] if pair else [],
        },
    }


def test_refresh_rebuilds_the_catalog_from_az_list_locations(tmp_path: Path) -> None:
    src = tmp_path / "locations.json"
    src.write_text(
        json.dumps(
            [
                _az("westeurope", "West Europe", "Europe", "northeurope"),
                _az("northeurope", "North Europe", "Europe", "westeurope"),
                _az("germanynorth", "Germany North", "Germany", "germanywestcentral"),
                _az("germanywestcentral", "Germany West Central", "Germany", "germanynorth"),
                _az("newregion", "New Region", "Atlantis", None),
                _az("europe", "Europe", "Europe", None, kind="Logical"),
            ]
        )
    )
    out = tmp_path / "regions.json"
    assert refresh_main([str(src), "--out", str(out), "--restricted", "newregion"]) == 0
    cat = parse_catalog(json.loads(out.read_text()))
    assert set(cat.regions) == {
        "westeurope",
        "northeurope",
        "germanynorth",
        "germanywestcentral",
        "newregion",
    }  # logical "europe" dropped
    assert cat.regions["germanynorth"].restricted  # carried over from the shipped catalog
    assert cat.regions["newregion"].restricted and cat.regions["newregion"].paired is None
    assert cat.regions["westeurope"].paired == "northeurope"
    # a list that does not hold together is refused, and nothing is written
    src.write_text(json.dumps([_az("westeurope", "West Europe", "Europe", "nowhere")]))
    bad = tmp_path / "bad.json"
    with pytest.raises(ValueError, match="unknown region 'nowhere'"):
        refresh_main([str(src), "--out", str(bad)])
    assert not bad.exists()


# --- run-time verification: azure-mgmt-storage against the loopback ARM server ------------


@pytest.fixture
def arm(tmp_path: Path):  # type: ignore[no-untyped-def]
    with ArmServer(tmp_path, TOKEN) as server:
        yield server


def _azure_plan(
    tmp_path: Path,
    azurite: Azurite,
    arm: ArmServer,
    *,
    region: str,
    redundancy: str,
    residency: str = "allowed_geographies: [Europe]",
    management: bool = True,
) -> tuple[Path, str]:
    url = f"azure://{ACCOUNT}/res-{uuid.uuid4().hex[:12]}"
    mgmt = (
        f"""
    management:
      subscription_id: {SUB}
      resource_group: ml-backups
      token_env: BCDR_TEST_ARM_TOKEN
      endpoint: {arm.url}"""
        if management
        else ""
    )
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: verified
repositories:
  blob:
    url: {url}
    endpoint: {azurite.endpoint}
    region: {region}
    redundancy: {redundancy}
    credential:
      connection_string_env: {CS}{mgmt}
residency:
  {residency}
backups:
  weights:
    repository: blob
    paths: [{write_tree(tmp_path / "src", {"w.bin": b"w" * 5000})}]
    schedule: daily
""")
    return f, url


def _run(f: Path, azurite: Azurite, arm: ArmServer, *args: str, token: str = TOKEN):  # type: ignore[no-untyped-def]
    env = {**azurite.env(CS), "BCDR_TEST_ARM_TOKEN": token, "REQUESTS_CA_BUNDLE": str(arm.ca_file)}
    r = run_process("run", f, *args, env=env)
    assert token not in r.out + r.err and "Traceback" not in r.err
    return r


def _blobs(azurite: Azurite, url: str) -> list[str]:
    from azure.storage.blob import BlobServiceClient

    container = url.split("/")[3]
    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    c = svc.get_container_client(container)
    return [b.name for b in c.list_blobs()] if c.exists() else []


def test_a_matching_account_is_verified_and_recorded_in_the_snapshot(
    azurite: Azurite, arm: ArmServer, tmp_path: Path
) -> None:
    arm.storage_account(
        SUB,
        "ml-backups",
        ACCOUNT,
        location="westeurope",
        sku="Standard_RAGRS",
        secondary="northeurope",
    )
    f, url = _azure_plan(tmp_path, azurite, arm, region="West Europe", redundancy="RAGRS")
    r = _run(f, azurite, arm, "--json")
    assert r.code == 0, r.out + r.err
    placement = r.json()["jobs"][0]["placement"]
    assert placement["status"] == "verified"
    assert (placement["region"], placement["redundancy"], placement["secondary_region"]) == (
        "westeurope",
        "RAGRS",
        "northeurope",
    )
    assert "Standard_RAGRS" in placement["source"]
    assert any(p.endswith(f"/storageAccounts/{ACCOUNT}") for _, p, _ in arm.requests)
    # the snapshot itself carries the evidence
    r = run_process(
        "snapshots",
        "--repo",
        url,
        "--azure-connection-string-env",
        CS,
        "--json",
        env=azurite.env(CS),
    )
    assert r.code == 0, r.err
    [snap] = r.json()
    assert snap["placement"]["status"] == "verified"
    assert snap["placement"]["secondary_region"] == "northeurope"
    text = _run(f, azurite, arm).out
    assert "placement westeurope RAGRS, secondary northeurope (verified)" in text


@pytest.mark.parametrize(
    ("account", "words"),
    [
        pytest.param(
            {"location": "westeurope", "sku": "Standard_GRS", "secondary": "northeurope"},
            ["is GRS (Standard_GRS), the plan declares redundancy LRS"],
            id="plan-says-LRS-account-is-GRS",
        ),
        pytest.param(
            {"location": "francecentral", "sku": "Standard_LRS"},
            [
                "is in francecentral, the plan declares region westeurope",
                "region francecentral (France) is outside the allowed geographies Europe",
            ],
            id="account-in-another-region",
        ),
    ],
)
def test_an_account_that_contradicts_the_plan_refuses_the_run_before_writing(
    azurite: Azurite,
    arm: ArmServer,
    tmp_path: Path,
    account: dict[str, Any],
    words: list[str],
) -> None:
    arm.storage_account(SUB, "ml-backups", ACCOUNT, **account)
    f, url = _azure_plan(tmp_path, azurite, arm, region="westeurope", redundancy="LRS")
    r = _run(f, azurite, arm)
    assert r.code == 1, r.out + r.err
    assert "backup weights: failed" in r.out
    for w in words:
        assert w in r.out, (w, r.out)
    assert "storage account contradicts the plan" in r.out and "nothing was written" in r.out
    assert _blobs(azurite, url) == []


def test_the_real_secondary_is_checked_not_the_catalogs_pair(
    azurite: Azurite, arm: ArmServer, tmp_path: Path
) -> None:
    # The catalog pairs westeurope with northeurope, so the plan validates; but Azure reports a
    # different secondary (a stale catalog, a changed pairing): the real one decides.
    arm.storage_account(
        SUB, "ml-backups", ACCOUNT, location="westeurope", sku="Standard_RAGRS", secondary="uksouth"
    )
    f, url = _azure_plan(tmp_path, azurite, arm, region="westeurope", redundancy="RAGRS")
    assert run_process("validate", f).code == 0
    r = _run(f, azurite, arm)
    assert r.code == 1, r.out + r.err
    assert (
        "geo-redundant secondary region uksouth (United Kingdom) is outside the allowed "
        "geographies Europe [rule: geo-redundant secondary outside residency]" in r.out
    ), r.out
    assert _blobs(azurite, url) == []


def test_management_errors_are_clear_and_write_nothing(
    azurite: Azurite, arm: ArmServer, tmp_path: Path
) -> None:
    f, url = _azure_plan(tmp_path, azurite, arm, region="westeurope", redundancy="LRS")
    r = _run(f, azurite, arm)  # no such account in the resource group
    assert r.code == 1 and "was not found (ResourceGroupNotFound)" in r.out, r.out
    assert "management.resource_group" in r.out
    arm.storage_account(SUB, "ml-backups", ACCOUNT, location="westeurope", sku="Standard_LRS")
    r = _run(f, azurite, arm, token="a-stale-token-" + "y" * 30)
    assert r.code == 1 and "refused to read storage account" in r.out, r.out
    assert "InvalidAuthenticationToken" in r.out and "$BCDR_TEST_ARM_TOKEN" in r.out
    arm.forbidden.add(next(iter(arm.resources)))
    r = _run(f, azurite, arm)
    assert r.code == 1 and "AuthorizationFailed" in r.out and "Reader" in r.out, r.out
    assert _blobs(azurite, url) == []


def test_without_management_the_region_is_recorded_as_declared(
    azurite: Azurite, arm: ArmServer, tmp_path: Path
) -> None:
    f, url = _azure_plan(
        tmp_path, azurite, arm, region="northeurope", redundancy="GRS", management=False
    )
    r = _run(f, azurite, arm, "--json")
    assert r.code == 0, r.out + r.err
    placement = r.json()["jobs"][0]["placement"]
    assert placement["status"] == "declared" and placement["source"] == "plan"
    assert placement["secondary_region"] == "westeurope"  # the catalog's pair
    assert arm.requests == []


def test_management_is_checked_in_the_plan(cli: Cli, tmp_path: Path) -> None:
    mgmt = "    management:\n      subscription_id: {}\n      resource_group: rg\n{}"
    bad_id = mgmt.format("not-a-guid", "")
    f = _write(tmp_path, _edit(("    redundancy: LRS\n", "    redundancy: LRS\n" + bad_id)))
    r = cli("validate", f)
    assert r.code == 2 and f"{f}:9:" in r.out and "not a subscription id" in r.out, r.out
    # a local repository cannot be verified; an ARM endpoint must be https
    http = mgmt.format(SUB, "      endpoint: http://arm.example\n")
    f = _write(tmp_path, _edit(("    redundancy: LRS\n", "    redundancy: LRS\n" + http)))
    r = cli("validate", f)
    assert r.code == 2
    assert f"{f}:9:" in r.out and "`management` applies to azure:// repositories only" in r.out
    assert f"{f}:11:" in r.out and "invalid Resource Manager endpoint" in r.out, r.out


def test_snapshots_with_keys_a_newer_bcdr_added_still_parse() -> None:
    from bcdr.repository.snapshot import Snapshot

    doc = {
        "time": "2026-11-22T01:00:00+00:00",
        "hostname": "h",
        "username": "u",
        "paths": ["/d"],
        "tree": "ab" * 32,
        "placement": {"status": "declared"},
        "a_future_field": {"x": 1},
    }
    snap = Snapshot.from_bytes(json.dumps(doc).encode(), "cd" * 32)
    assert snap.placement == {"status": "declared"} and snap.paths == ("/d",)


def test_throttling_and_server_errors_on_the_account_read_are_waited_out(
    azurite: Azurite, arm: ArmServer, tmp_path: Path
) -> None:
    # 3 x 429, then 3 x 500 on the storage-account read behind the residency check: the backup
    # waits them out (each retry honours Retry-After) instead of failing the job
    arm.storage_account(SUB, "ml-backups", ACCOUNT, location="westeurope", sku="Standard_LRS")
    f, _ = _azure_plan(tmp_path, azurite, arm, region="westeurope", redundancy="LRS")
    arm.throttle("GET", r"/storageaccounts/", times=3, retry_after=0, status=429)
    arm.throttle("GET", r"/storageaccounts/", times=3, retry_after=0, status=500)
    r = _run(f, azurite, arm, "--json")
    assert r.code == 0, r.out + r.err
    assert r.json()["jobs"][0]["placement"]["status"] == "verified"
    reads = [s for (_, m, p, s) in arm.log if m == "GET" and "/storageaccounts/" in p.lower()]
    assert reads[:7] == [429, 429, 429, 500, 500, 500, 200], reads
