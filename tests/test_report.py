"""Compliance reports: the controls are pure functions over evidence, pinned by golden files for
met, missed, no-evidence and tampered cases; `bcdr report` as users run it (exit 4 on a FAIL);
the HTML page rendered in headless Chromium, checked for what a person sees.

Golden files live in tests/golden/report/<case>.json; after an intended change, regenerate
them with BCDR_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bcdr.cli.main import parse
from bcdr.compliance.controls import FAIL, NO_EVIDENCE, PASS, RepoEvidence, evaluate
from bcdr.compliance.records import Facts, Record, from_document
from bcdr.compliance.render import to_html, to_markdown
from bcdr.plan.loader import parse_plan
from tests.conftest import run_process, write_tree

GOLDEN = Path(__file__).parent / "golden" / "report"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
WINDOW = NOW - timedelta(days=10)  # the synthetic evidence begins before it: full coverage
PLAN = b"""\
version: 1
name: audit
repositories:
  main: {url: /srv/bcdr/repo, region: westeurope, encryption: {password_env: PW}}
residency:
  allowed_geographies: [Europe]
backups:
  ckpt:
    paths: [/data/ckpt]
    repository: main
    schedule: daily
    at: "02:00"
    rpo: 26h
    retention: {keep_daily: 7}
drills:
  restore-ckpt: {backup: ckpt, schedule: weekly, on: sunday, at: "04:00", rto: 15m}
checks:
  verify: {repository: main, schedule: weekly, on: saturday, at: "05:00", read_data: 10%}
"""


def _plan() -> Any:
    return parse_plan(PLAN, Path("/plans/audit.yaml"))


def _id(n: int) -> str:
    return f"{n:064x}"


def _rec(
    n: int, kind: str, job: str, when: datetime, result: str = "ok", /, **facts: Any
) -> dict[str, Any]:
    return {
        "id": _id(n),
        "seq": n,
        "kind": kind,
        "plan": "audit",
        "plan_digest": "d" * 64,
        "job": job,
        "time": when.isoformat(),
        "started": when.isoformat(),
        "finished": when.isoformat(),
        "result": result,
        "facts": facts,
    }


def _history(skip_days: tuple[int, ...] = (), slow_drill: bool = False) -> list[dict[str, Any]]:
    out = []
    n = 0
    start = datetime(2026, 11, 10, 2, 5, tzinfo=UTC)
    for day in range(11):
        when = start + timedelta(days=day)
        if day in skip_days:
            continue
        n += 1
        out.append(
            _rec(
                n,
                "backup",
                "ckpt",
                when,
                snapshot=f"{n:08x}" * 8,
                snapshot_time=when.isoformat(),
                placement={"region": "westeurope", "status": "declared"},
                bytes_added=1000,
            )
        )
        n += 1
        out.append(_rec(n, "forget", "ckpt", when + timedelta(minutes=1), removed=[], groups=[]))
    for sunday in (datetime(2026, 11, 15, 4, 1, tzinfo=UTC),):
        n += 1
        out.append(
            _rec(
                n,
                "drill",
                "restore-ckpt",
                sunday,
                "failed" if slow_drill else "ok",
                job="ckpt",
                verdict="fail" if slow_drill else "pass",
                rto_s=1500.0 if slow_drill else 42.0,
                rto_target_s=900.0,
                rto_target="15m",
                rpo_s=7000.0,
                files_verified=120,
                bytes_verified=5 << 30,
                failures=[],
                reasons=["RTO missed: the restore took 25.0m, the target is 15m"]
                if slow_drill
                else [],
            )
        )
    n += 1
    out.append(
        _rec(
            n,
            "check",
            "verify",
            datetime(2026, 11, 14, 5, 3, tzinfo=UTC),
            read_fraction=0.1,
            bytes_read=123456,
            packs=40,
            packs_read=4,
            snapshots=5,
            error_count=0,
            errors=[],
        )
    )
    return out


def _typed(records: list[dict[str, Any]]) -> list[Record[Facts]]:
    """The records as the report reads them from a repository."""
    return [from_document(d) for d in records]


def _chain(records: list[dict[str, Any]], bad: tuple[str, ...] = ()) -> dict[str, Any]:
    problems = [
        f"#{int(b, 16)} ({b[:12]}): altered: its content does not match its id" for b in bad
    ]
    return {
        "records": len(records),
        "head_seq": len(records),
        "head_id": records[-1]["id"] if records else None,
        "unchained": 0,
        "problems": problems,
        "bad_ids": list(bad),
        "ok": not problems,
        "repository_id": "5eed" * 16,
        "authenticated": True,
        "anchors": [],
        "anchor_notes": [],
    }


def _case(name: str) -> dict[str, Any]:
    if name == "no_evidence":
        repos = [RepoEvidence("main", "/srv/bcdr/repo", error="it does not exist yet")]
    else:
        records = {
            "met": lambda: _history(),
            "missed": lambda: _history(skip_days=(4, 5), slow_drill=True),
            "tampered": lambda: _history(),
        }[name]()
        bad = (records[4]["id"],) if name == "tampered" else ()
        repos = [
            RepoEvidence(
                "main", "/srv/bcdr/repo", "aes-256-gcm", _typed(records), _chain(records, bad)
            )
        ]
    return evaluate(_plan(), repos, NOW, WINDOW)


@pytest.mark.parametrize("case", ["met", "missed", "no_evidence", "tampered"])
def test_golden(case: str) -> None:
    doc = _case(case)
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{case}.json"
    if os.environ.get("BCDR_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{case}: differs from {path} (BCDR_UPDATE_GOLDEN=1)"


def _status(doc: dict[str, Any], job: str, control: str) -> str:
    [j] = [j for j in doc["jobs"] if j["name"] == job]
    [c] = [c for c in j["controls"] if c["id"] == control]
    return str(c["status"])


def _covered(doc: dict[str, Any], job: str, control: str) -> str:
    """The status over the part of the window with evidence (a plan run seconds ago has
    evidence for a sliver of any window: its controls are NO EVIDENCE, PASS over that part)."""
    [j] = [j for j in doc["jobs"] if j["name"] == job]
    [c] = [c for c in j["controls"] if c["id"] == control]
    return str(c["details"].get("covered_status", c["status"]))


def test_the_cases_say_what_they_should() -> None:
    met = _case("met")
    assert met["verdict"] == PASS and met["counts"][FAIL] == 0
    assert _status(met, "ckpt", "rpo") == PASS and _status(met, "ckpt", "rto") == PASS

    missed = _case("missed")
    assert missed["verdict"] == FAIL
    assert _status(missed, "ckpt", "schedule") == FAIL
    [ckpt] = [j for j in missed["jobs"] if j["name"] == "ckpt"]
    [schedule] = [c for c in ckpt["controls"] if c["id"] == "schedule"]
    assert schedule["details"]["missed"] == [
        "2026-11-14T02:00:00+00:00",
        "2026-11-15T02:00:00+00:00",
    ]
    [rpo] = [c for c in ckpt["controls"] if c["id"] == "rpo"]
    assert rpo["status"] == FAIL and rpo["details"]["longest_gap_s"] == 3 * 86400
    assert _status(missed, "ckpt", "rto") == FAIL
    assert _status(missed, "restore-ckpt", "result") == FAIL

    empty = _case("no_evidence")
    assert empty["verdict"] == NO_EVIDENCE and empty["counts"][FAIL] == 0
    assert _status(empty, "ckpt", "rpo") == NO_EVIDENCE
    # only what the plan itself declares passes: where the data is meant to live
    passing = [
        (j["name"], c["id"]) for j in empty["jobs"] for c in j["controls"] if c["status"] == PASS
    ]
    assert passing == [("ckpt", "residency")]

    tampered = _case("tampered")
    assert tampered["tampered"] is True and tampered["verdict"] == FAIL
    [repo] = tampered["repositories"]
    assert repo["chain"]["status"] == FAIL and "altered" in repo["chain"]["summary"]
    # the altered record (day 3's backup) is not evidence: that slot now counts as missed
    [ckpt] = [j for j in tampered["jobs"] if j["name"] == "ckpt"]
    [schedule] = [c for c in ckpt["controls"] if c["id"] == "schedule"]
    assert schedule["details"]["missed"] == ["2026-11-12T02:00:00+00:00"]
    assert "TAMPERED" in to_markdown(tampered) or "tampered with" in to_markdown(tampered)


def _real_plan_run(tmp_path: Path, drills: str = "") -> Path:
    """Plan "real": backup job b of a real folder into ./repo (and ``drills``), run once."""
    src = write_tree(tmp_path / "src", {"w.bin": os.urandom(50_000)})
    f = tmp_path / "plan.yaml"
    f.write_text(f"""\
version: 1
name: real
repositories:
  local: {{url: repo}}
backups:
  b: {{paths: [{src}], repository: local, schedule: daily, rpo: 26h}}
{drills}""")
    assert run_process("run", f, "--state-dir", tmp_path / "state").code == 0
    return f


def test_bcdr_report_on_a_real_plan_and_a_tampered_chain(tmp_path: Path) -> None:
    f = _real_plan_run(tmp_path, "drills:\n  d: {backup: b, schedule: weekly, rto: 1h}\n")
    r = run_process("report", f, "--format", "json")
    assert r.code == 0, r.out + r.err
    doc = r.json()
    assert doc["schema"] == "bcdr.report/1" and doc["verdict"] == NO_EVIDENCE
    assert _status(doc, "b", "rpo") == NO_EVIDENCE  # seconds of 90 days
    assert _covered(doc, "b", "rpo") == PASS and _covered(doc, "b", "rto") == PASS
    out = tmp_path / "out" / "report.html"
    r = run_process("report", f, "--out", out)
    assert r.code == 0 and f"report written to {out}" in r.out
    assert out.read_text().startswith("<!doctype html>")

    # alter the first record: the report says the chain was tampered with, and fails
    first = sorted((tmp_path / "repo" / "evidence").iterdir())[0]
    data = bytearray(first.read_bytes())
    data[-2] ^= 1
    first.write_bytes(bytes(data))
    r = run_process("report", f)
    assert r.code == 4, r.out + r.err
    assert "tampered with" in r.out and "altered" in r.out
    r = run_process("report", f, "--since", "3x")
    assert r.code == 2 and "not a duration" in r.err


@pytest.mark.parametrize(
    ("kind", "facts"),
    [
        ("backup", {"snapshot_time": "2026-11-29T10:00:00"}),  # no UTC offset
        ("backup", {"placement": "westeurope"}),  # not an object
        ("disk-snapshot", {"disks": [{"disk": 5}]}),
        ("drill", {"rto_s": "fast"}),
        ("check", {"error_count": [1]}),
    ],
    ids=["naive-time", "placement-text", "disk-without-name", "rto-text", "count-list"],
)
def test_a_record_in_the_chain_that_is_not_evidence_is_named_not_a_crash(
    tmp_path: Path, kind: str, facts: dict[str, object]
) -> None:
    # each of these failed `bcdr report` with a traceback
    from bcdr.actions.common import open_repo
    from bcdr.compliance.context import RunContext
    from bcdr.compliance.evidence import write_untyped

    f = _real_plan_run(tmp_path)
    repo = open_repo(str(tmp_path / "repo"))
    bad = write_untyped(repo, kind, facts, context=RunContext("real", None, "b"))
    r = run_process("report", f)
    assert r.code == 4 and "Traceback" not in r.err, r.out + r.err
    assert f"({bad[:12]}): not usable as evidence" in r.out, r.out
    r = run_process("report", f, "--format", "json")
    doc = r.json()
    assert _covered(doc, "b", "rpo") == PASS  # the good record stands


def test_a_record_of_a_newer_format_is_named_not_called_tampering(tmp_path: Path) -> None:
    # an older bcdr reading a repository a newer one also writes to: not damage, not read
    from bcdr.actions.common import open_repo
    from bcdr.compliance.context import RunContext
    from bcdr.compliance.evidence import write_untyped

    f = _real_plan_run(tmp_path)
    repo = open_repo(str(tmp_path / "repo"))
    newer = write_untyped(
        repo,
        "backup",
        {"snapshot": "ab" * 32, "added_later": 1},
        context=RunContext("real", None, "b"),
        extra={"v": 99},
    )
    r = run_process("evidence", "verify", "--repo", tmp_path / "repo")
    assert r.code == 0, r.out
    assert f"({newer[:12]}): written in record format 99 by a newer bcdr" in r.out, r.out
    doc = run_process("report", f, "--format", "json").json()
    [chain] = [x["chain"] for x in doc["repositories"]]
    assert chain["status"] == PASS and "TAMPERED" not in chain["summary"], chain
    assert "1 record(s) in a newer format than this bcdr reads were not read" in chain["summary"]
    assert newer in chain["details"]["bad_ids"]  # nothing is counted from it
    assert _covered(doc, "b", "rpo") == PASS  # the records it reads still stand


def test_the_report_sees_a_geo_redundant_secondary_region() -> None:
    # backups record the account's paired region as placement.secondary_region; the report
    # read "secondary", so a secondary outside the allowed geographies passed
    records = _history()
    for d in records:
        if d["kind"] == "backup":
            d["facts"]["placement"] = {
                "region": "westeurope",
                "secondary_region": "brazilsouth",
                "status": "verified",
            }
    repos = [
        RepoEvidence("main", "/srv/bcdr/repo", "aes-256-gcm", _typed(records), _chain(records, ()))
    ]
    doc = evaluate(_plan(), repos, NOW, WINDOW)
    assert _status(doc, "ckpt", "residency") == FAIL
    [job] = [j for j in doc["jobs"] if j["name"] == "ckpt"]
    [residency] = [c for c in job["controls"] if c["id"] == "residency"]
    assert "brazilsouth" in residency["summary"]


def test_the_report_window_defaults_to_90_days() -> None:
    # the default is text, converted by --since's type only when `report` runs
    assert parse(["report", "plan.yaml"]).since.delta == timedelta(days=90)
    assert parse(["report", "plan.yaml", "--since", "2w"]).since.delta == timedelta(weeks=2)


# --- HTML in headless Chromium -----------------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is needed for this test: `make test` installs Debian's chromium"
    return found


def _browser(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
            *args,
        ],
        capture_output=True,
        timeout=120,
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """A tiny PNG reader (8-bit RGB or RGBA, no interlace): width, height, rows of pixels."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if ctype == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif ctype == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(
            bytes(line if channels == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
        )
        prev = line
    return width, height, rows


def _count_colour(rows: list[bytes], rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    n = 0
    for row in rows:
        for i in range(0, len(row), 3):
            if all(abs(row[i + k] - rgb[k]) <= tolerance for k in range(3)):
                n += 1
    return n


def test_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    doc = _case("missed")
    page = tmp_path / "report.html"
    page.write_text(to_html(doc))
    text = page.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text and "<script" not in text and "<link" not in text

    dom = _browser(tmp_path, "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    html = dom.stdout.decode()
    assert "Recovery report: plan audit" in html
    assert html.count("<svg") >= 3 and "missed slot" in html
    assert 'class="badge FAIL"' in html and "missed: 2026-11-14T02:00, 2026-11-15T02:00" in html

    shot = tmp_path / "shot.png"
    r = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1100,2600", page.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr.decode()[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1100, 2600)
    # what a person sees: green recovery points and PASS badges, red FAIL badges and the failed
    # drill, amber missed slots, drawn (not blank, not unstyled)
    assert _count_colour(rows, (0x1A, 0x7F, 0x37)) > 500  # green
    assert _count_colour(rows, (0xCF, 0x22, 0x2E)) > 300  # red
    assert _count_colour(rows, (0xBF, 0x87, 0x00)) > 50  # amber missed-slot triangles

    pdf = tmp_path / "report.pdf"
    r = _browser(tmp_path, f"--print-to-pdf={pdf}", "--no-pdf-header-footer", page.as_uri())
    assert r.returncode == 0 and pdf.read_bytes()[:5] == b"%PDF-", r.stderr.decode()[-2000:]


def test_html_report_shows_coverage_and_heads_in_headless_chromium(tmp_path: Path) -> None:
    # the synthetic evidence spans 10 days: in a 90-day window, most of it has none
    records = _history()
    repos = [
        RepoEvidence("main", "/srv/bcdr/repo", "aes-256-gcm", _typed(records), _chain(records))
    ]
    partial = evaluate(_plan(), repos, NOW, NOW - timedelta(days=90))
    assert partial["verdict"] == NO_EVIDENCE and not partial["window"]["coverage"]["complete"]
    pages = {}
    for name, doc in (("partial", partial), ("full", _case("met"))):
        page = tmp_path / f"{name}.html"
        page.write_text(to_html(doc))
        pages[name] = page

    dom = _browser(tmp_path, "--dump-dom", pages["partial"].as_uri())
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    html = dom.stdout.decode()
    assert "evidence only from 2026-11-10T02:05" in html and "the rest has NO EVIDENCE" in html
    assert "Evidence heads" in html
    assert f"bcdr-evidence-head repository=main id={'5eed' * 16} head=24:" in html
    assert html.count('class="uncovered"') == len(partial["jobs"])

    grey = {}
    for name, page in pages.items():
        shot = tmp_path / f"{name}.png"
        r = _browser(tmp_path, f"--screenshot={shot}", "--window-size=1100,2600", page.as_uri())
        assert r.returncode == 0 and shot.exists(), r.stderr.decode()[-2000:]
        _, _, rows = _png_pixels(shot.read_bytes())
        grey[name] = _count_colour(rows, (0xD0, 0xD7, 0xDE), tolerance=4)
    # the part of each timeline without evidence is drawn: a wide grey band per job on screen
    assert grey["partial"] - grey["full"] > 20_000, grey
