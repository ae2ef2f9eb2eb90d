"""Typed evidence records (bcdr/compliance/records.py): records written by older versions
(tests/golden/evidence) still read, into the Struct of their kind, and the report's controls
judge them as before; one codec writes and reads; a newer format or a wrong field is named."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bcdr.compliance.controls import PASS, RepoEvidence, evaluate
from bcdr.compliance.records import (
    FACTS,
    FORMAT,
    OLD_NAMES,
    BackupFacts,
    CheckFacts,
    DiskSnapshotFacts,
    DrillFacts,
    Facts,
    ForgetFacts,
    OtherFacts,
    PruneFacts,
    Record,
    RecordProblem,
    RepairFacts,
    decode,
    encode,
)
from bcdr.plan.kinds import KINDS
from bcdr.plan.loader import parse_plan

GOLDEN = Path(__file__).parent / "golden" / "evidence"
DISK = (
    "/subscriptions/0b1f6471-1bf0-4dda-aec3-444455556666/resourceGroups/train-rg/providers/"
    "Microsoft.Compute/disks/data1"
)


def _golden(name: str) -> Record[Facts]:
    raw = (GOLDEN / name).read_bytes()
    return decode(raw, f"{len(name):064x}")


def test_every_golden_record_reads_into_the_struct_of_its_kind() -> None:
    files = sorted(p.name for p in GOLDEN.glob("*.json"))
    assert len(files) == 11, files
    expected = {
        "backup": BackupFacts,
        "check": CheckFacts,
        "disk-snapshot": DiskSnapshotFacts,
        "drill": DrillFacts,
        "forget": ForgetFacts,
        "prune": PruneFacts,
        "repair": RepairFacts,
    }
    for name in files:
        rec = _golden(name)
        assert type(rec.facts) is expected[rec.kind], name
        assert rec.v == 1 and rec.time.tzinfo is not None, name
        # what the reader keeps, the writer writes again: the same record comes back
        assert decode(encode(rec), rec.id) == rec, name


def test_golden_facts_are_typed_values() -> None:
    backup = _golden("v1-backup-b.json")
    assert isinstance(backup.facts, BackupFacts)
    assert backup.facts.snapshot_time == datetime(2026, 12, 6, 17, 49, 56, 915435, tzinfo=UTC)
    assert backup.facts.placement is not None and backup.facts.placement.region == "westeurope"
    assert backup.targets == {"rpo": "26h"} and backup.seq == 1 and backup.prev is None

    failed = _golden("v1-backup-failed-bad.json")
    assert failed.result == "failed" and "do not exist" in failed.facts.failure()

    disk = _golden("v1-disk-snapshot-s.json")
    assert isinstance(disk.facts, DiskSnapshotFacts) and disk.facts.disks
    [point] = disk.facts.disks
    assert point.disk == DISK and point.status == "protected" and point.time is not None

    sampled = _golden("v1-drill-dp.json")
    assert isinstance(sampled.facts, DrillFacts)
    assert sampled.facts.sampled and sampled.facts.sample_percent == 50.0
    assert sampled.facts.phases["restore"] > 0

    forget = _golden("v1-forget-b.json")
    assert isinstance(forget.facts, ForgetFacts) and forget.facts.kept_count == 1

    check = _golden("v1-check-c.json")
    assert isinstance(check.facts, CheckFacts) and check.facts.errors_found == 0

    legacy = _golden("v0-backup-unchained.json")
    assert legacy.seq is None and legacy.result is None and legacy.repository is None
    assert legacy.begun == legacy.time  # no start recorded: its time stands for it


GOLDEN_PLAN = f"""\
version: 1
name: kinds
repositories:
  local: {{url: /srv/repo, region: westeurope}}
residency: {{allowed_regions: [westeurope]}}
backups:
  b: {{paths: [/data], repository: local, schedule: daily, rpo: 26h, retention: {{keep_daily: 3}}}}
  bad: {{paths: [/nope], repository: local, schedule: daily}}
snapshots:
  s:
    schedule: daily
    region: westeurope
    disks: [{DISK}]
    evidence: local
drills:
  d: {{backup: b, schedule: weekly, rto: 1h}}
  ds: {{snapshot: s, schedule: weekly, rto: 1h, scratch_region: westeurope}}
checks:
  c: {{repository: local, schedule: weekly}}
prunes:
  p: {{repository: local, schedule: weekly}}
"""


def test_the_report_judges_golden_records_as_evidence() -> None:
    plan = parse_plan(GOLDEN_PLAN.encode(), Path("/plans/kinds.yaml"))
    records = [_golden(p.name) for p in sorted(GOLDEN.glob("v1-*.json"))]
    records = [
        Record(**{**{f: getattr(r, f) for f in r.__struct_fields__}, "id": f"{i:064x}"})
        for i, r in enumerate(records)
    ]
    chain: dict[str, Any] = {"ok": True, "records": len(records), "bad_ids": []}
    first = min(r.time for r in records)
    now = first + timedelta(hours=1)
    doc = evaluate(plan, [RepoEvidence("local", "/srv/repo", "none", records, chain)], now, first)
    jobs = {j["name"]: j for j in doc["jobs"]}
    by_kind = {r.kind + (r.job or ""): r.id for r in records}

    def control(job: str, cid: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = [c for c in jobs[job]["controls"] if c["id"] == cid]
        assert len(found) == 1, found
        return found[0]

    assert control("b", "rpo")["status"] == PASS
    assert control("b", "rpo")["evidence"] == [by_kind["backupb"]]
    assert control("b", "retention")["evidence"] == [by_kind["forgetb"]]
    assert control("b", "integrity")["evidence"] == [by_kind["checkc"]]
    assert control("b", "residency")["status"] == PASS
    # the newest drill of b is the sampled one (dp), whose record names b
    assert control("b", "restore")["evidence"] == [by_kind["drilldp"]]
    assert control("b", "rto")["details"]["sampled"] is True
    assert control("s", "rpo")["status"] == PASS
    assert control("s", "rto")["evidence"] == [by_kind["drillds"]]
    assert jobs["bad"]["failures"][0]["error"].startswith("path(s) to back up do not exist")
    assert control("c", "result")["status"] == PASS
    assert control("p", "result")["status"] == PASS


def _doc(**changes: Any) -> bytes:
    doc = json.loads((GOLDEN / "v1-backup-b.json").read_bytes())
    doc.update(changes)
    return json.dumps(doc).encode()


def test_a_newer_format_is_named_not_guessed_at() -> None:
    with pytest.raises(RecordProblem, match=f"record format {FORMAT + 1} by a newer bcdr"):
        decode(_doc(v=FORMAT + 1))
    assert decode(_doc(v=FORMAT)).v == FORMAT


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"time": "2026-12-06T17:49:56"}, "$.time"),  # no UTC offset
        ({"facts": {"snapshot_time": 7}}, "$.facts.snapshot_time"),
        ({"facts": {"placement": "westeurope"}}, "$.facts.placement"),
        ({"kind": ["backup"]}, "$.kind"),
        ({"started": "yesterday"}, "$.started"),
    ],
)
def test_a_record_that_is_not_evidence_says_which_field(
    changes: dict[str, Any], where: str
) -> None:
    with pytest.raises(RecordProblem, match=rf"at `\{where}`"):
        decode(_doc(**changes))


def test_an_unknown_kind_reads_as_other_facts_and_unknown_fields_are_ignored() -> None:
    rec = decode(_doc(kind="replicate", facts={"snapshots": 3, "error": None}))
    assert type(rec.facts) is OtherFacts
    rec = decode(_doc(facts={"snapshot": "ab" * 32, "added_later": {"x": 1}}))
    assert isinstance(rec.facts, BackupFacts) and rec.facts.snapshot == "ab" * 32


def test_facts_from_a_report_must_fit_the_schema() -> None:
    # a field added to a report but not to its record is caught where it is written
    with pytest.raises(TypeError, match="PruneFacts has no field packs_lost: add it to"):
        PruneFacts.of({"packs": 1, "packs_lost": 2})
    assert PruneFacts.of({"packs": 1}).packs == 1


def test_every_kind_of_record_a_job_writes_has_its_struct() -> None:
    for k in KINDS:
        for name in k.evidence:
            assert name in FACTS or name in OLD_NAMES, (k.name, name)
        assert k.evidence[0] in FACTS, k  # the kind written now
    assert {f.KIND for f in FACTS.values()} == set(FACTS)
