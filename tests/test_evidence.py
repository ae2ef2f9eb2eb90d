"""The evidence chain: every job run appends a record carrying the hash of the one before;
`bcdr evidence verify` names a deleted, altered, reordered or inserted record, and a truncated
chain is caught with a head kept elsewhere. Concurrent writers still make one chain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bcdr.actions.common import open_repo
from bcdr.compliance.evidence import (
    PREFIX,
    read_chain,
    read_records,
    verify_chain,
    write_record,
    write_untyped,
)
from bcdr.compliance.records import FORMAT, BackupFacts, CheckFacts, typed
from tests.conftest import run_process, write_tree


def _repo_with_records(tmp_path: Path, n: int = 5) -> Path:
    url = tmp_path / "repo"
    assert run_process("init", "--repo", url).code == 0
    repo = open_repo(str(url))
    for i in range(n):
        write_record(repo, BackupFacts(files=i))
    return url


def _files(url: Path) -> list[Path]:
    return sorted((url / "evidence").iterdir())


def test_every_job_kind_appends_to_one_chain(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", {"a.bin": b"a" * 1000})
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: chained
repositories:
  local: {{url: repo}}
backups:
  b:
    paths: [{src}]
    repository: local
    schedule: daily
    rpo: 26h
    retention: {{keep_last: 1}}
drills:
  d: {{backup: b, schedule: weekly, rto: 1h}}
checks:
  c: {{repository: local, schedule: weekly, read_data: 100%}}
prunes:
  p: {{repository: local, schedule: weekly}}
""")
    r = run_process("run", f, "--state-dir", tmp_path / "state")
    assert r.code == 0, r.out + r.err
    repo = open_repo(str(tmp_path / "repo"))
    records = read_records(repo)
    assert [d.kind for d in records] == ["backup", "forget", "drill", "check", "prune"]
    assert [d.seq for d in records] == [1, 2, 3, 4, 5]
    assert records[0].prev is None
    assert [d.prev for d in records[1:]] == [d.id for d in records[:-1]]
    for d in records:
        assert d.plan == "chained" and len(d.plan_digest or "") == 64
        assert d.started is not None and d.finished is not None
        assert d.started <= d.finished and d.hostname
        assert d.v == FORMAT and d.repository == repo.config.id
    backup = records[0]
    assert backup.job == "b" and backup.result == "ok" and backup.targets == {"rpo": "26h"}
    assert records[2].targets == {"rto": "1h", "rpo": "26h"}  # the drill's, and its job's
    assert isinstance(backup.facts, BackupFacts) and isinstance(records[3].facts, CheckFacts)
    assert backup.facts.snapshot and (backup.facts.bytes_added or 0) > 0
    assert records[3].facts.read_fraction == 1.0
    report = verify_chain(repo)
    assert report.ok and report.records == 5 and report.head_seq == 5
    assert read_chain(repo)[0] == records  # one pass gives what read_records gives

    r = run_process("evidence", "verify", "--repo", tmp_path / "repo")
    assert r.code == 0 and "evidence chain intact: 5 record(s)" in r.out
    assert f"head 5:{records[-1].id}" in r.out
    r = run_process("evidence", "list", "--repo", tmp_path / "repo", "--kind", "drill", "--json")
    assert [d["kind"] for d in r.json()] == ["drill"]


def test_a_failed_run_is_recorded_too(tmp_path: Path) -> None:
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: failing
repositories:
  local: {{url: repo}}
backups:
  b: {{paths: [{tmp_path / "missing"}], repository: local, schedule: daily}}
checks:
  c: {{repository: local, schedule: weekly}}
""")
    assert run_process("init", "--repo", tmp_path / "repo").code == 0
    r = run_process("run", f, "--job", "b", "--state-dir", tmp_path / "state")
    assert r.code == 1
    [record] = read_records(open_repo(str(tmp_path / "repo")))
    assert record.kind == "backup" and record.result == "failed"
    assert "missing" in (record.facts.error or "")


def test_deleted_altered_reordered_and_inserted_records_are_named(tmp_path: Path) -> None:
    url = _repo_with_records(tmp_path, 6)
    files = _files(url)
    ids = [p.name.split("-")[1] for p in files]

    files[2].unlink()  # delete #3
    r = run_process("evidence", "verify", "--repo", url)
    assert r.code == 1
    assert f"#3: missing: deleted from the chain (the next record is #4 {ids[3][:12]})" in r.out

    url = _repo_with_records(tmp_path / "b", 6)
    files = _files(url)
    data = bytearray(files[4].read_bytes())
    data[-3] ^= 1  # alter #5
    files[4].write_bytes(bytes(data))
    r = run_process("evidence", "verify", "--repo", url, "--json")
    assert r.code == 1
    problems = r.json()["problems"]
    assert problems == [
        f"#5 ({files[4].name.split('-')[1][:12]}): altered: its content does not match its id"
    ]

    url = _repo_with_records(tmp_path / "c", 6)
    files = _files(url)
    a, b = files[1], files[2]  # swap #2 and #3 by renaming
    a_id, b_id = a.name.split("-")[1], b.name.split("-")[1]
    a.rename(url / "evidence" / f"0000000003-{a_id}.x")
    b.rename(url / "evidence" / f"0000000002-{b_id}")
    (url / "evidence" / f"0000000003-{a_id}.x").rename(url / "evidence" / f"0000000003-{a_id}")
    r = run_process("evidence", "verify", "--repo", url)
    assert r.code == 1
    assert f"#2 ({b_id[:12]}): reordered: the record says it is #3" in r.out
    assert f"#3 ({a_id[:12]}): reordered: the record says it is #2" in r.out

    url = _repo_with_records(tmp_path / "d", 3)
    head = verify_chain(open_repo(str(url))).head_id
    assert head is not None
    for p in _files(url)[1:]:
        p.unlink()  # truncate the chain after #1: internally consistent, but the head is gone
    # this host appended #3: it knows the chain was longer
    r = run_process("evidence", "verify", "--repo", url)
    assert r.code == 1 and "#2–#3: missing: cut from the end of the chain" in r.out, r.out
    assert "but this host (appended" in r.out
    # another host (its own state folder) never saw the head: only a head kept elsewhere helps
    elsewhere = {"BCDR_STATE_DIR": str(tmp_path / "other-host")}
    assert run_process("evidence", "verify", "--repo", url, env=elsewhere).code == 0
    r = run_process("evidence", "verify", "--repo", url, "--head", head[:16], env=elsewhere)
    assert r.code == 1 and "the chain was cut short or rebuilt" in r.out
    r = run_process("evidence", "verify", "--repo", url, "--head", f"3:{head}", env=elsewhere)
    assert r.code == 1 and "#2–#3: missing: cut from the end of the chain" in r.out, r.out


def test_a_record_inserted_beside_another_is_named(tmp_path: Path) -> None:
    url = _repo_with_records(tmp_path, 3)
    repo = open_repo(str(url))
    # a forged record claiming place #2, written with the repository's own format
    from bcdr.repository.hashing import object_name

    doc = {"kind": "backup", "seq": 2, "prev": _files(url)[0].name.split("-")[1], "facts": {}}
    sealed = repo.cipher.seal(json.dumps(doc).encode(), b"evidence")
    repo.storage.put(f"{PREFIX}0000000002-{object_name(sealed)}", sealed)
    report = verify_chain(repo)
    assert not report.ok
    assert any(
        "2 records claim this place" in str(p) and "one was inserted" in str(p)
        for p in report.problems
    )
    assert object_name(sealed) in report.bad_ids


WRITER = """
import sys
from bcdr.actions.common import open_repo
from bcdr.compliance.evidence import write_record
from bcdr.compliance.records import BackupFacts
repo = open_repo(sys.argv[1])
for i in range(8):
    write_record(repo, BackupFacts(paths=[sys.argv[2]], files=i))
"""


def test_concurrent_writers_make_one_chain(tmp_path: Path) -> None:
    url = tmp_path / "repo"
    assert run_process("init", "--repo", url).code == 0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(url), str(w)]) for w in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    repo = open_repo(str(url))
    report = verify_chain(repo)
    assert report.ok, report.problems
    assert report.records == 24 and report.head_seq == 24
    writers = [d.facts.paths[0] for d in typed(read_records(repo), BackupFacts)]
    assert sorted(writers) == sorted(["0", "1", "2"] * 8)


def test_a_backup_whose_record_cannot_be_written_keeps_its_snapshot_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bcdr.compliance.evidence as evidence
    from bcdr.actions.backup import BackupRequest, backup

    url = tmp_path / "repo"
    assert run_process("init", "--repo", url).code == 0
    # another host is appending to the chain and does not let go
    (url / "locks").mkdir(exist_ok=True)
    (url / "locks" / ("e" * 64)).write_text(
        json.dumps(
            {
                "kind": "evidence",
                "session": "s",
                "exclusive": False,
                "hostname": "elsewhere",
                "pid": 1,
                "username": "u",
                "created": "2026-01-01T00:00:00+00:00",
                "expires": "2999-01-01T00:00:00+00:00",
            }
        )
    )
    monkeypatch.setattr(evidence, "APPEND_WAIT_S", 0.0)
    src = write_tree(tmp_path / "src", {"a": b"a" * 100})
    result = backup(str(url), BackupRequest(paths=(str(src),), job="j"))
    assert result.evidence is None and "evidence lock" in (result.evidence_error or "")
    assert open_repo(str(url)).list_snapshots("j")  # the snapshot stands


def test_evidence_list_shows_a_record_whose_fields_are_not_text(tmp_path: Path) -> None:
    # a record written by another version, or by hand: `evidence list` failed with a traceback
    url = _repo_with_records(tmp_path, 1)
    write_untyped(open_repo(str(url)), ["odd"], {}, result={"n": 1})
    r = run_process("evidence", "list", "--repo", url)
    assert r.code == 0 and "Traceback" not in r.err, r.err
    assert "['odd']" in r.out and "{'n': 1}" in r.out
    assert "NOT USABLE AS EVIDENCE: Expected `str`, got `array` - at `$.kind`" in r.out, r.out
    r = run_process("evidence", "list", "--repo", url, "--json")
    assert r.json()[-1]["kind"] == ["odd"] and "Expected `str`" in r.json()[-1]["problem"]
    r = run_process("evidence", "verify", "--repo", url)
    assert r.code == 0, r.out  # the chain is whole; the record is named as no evidence
    assert "not usable as evidence" in r.out, r.out
