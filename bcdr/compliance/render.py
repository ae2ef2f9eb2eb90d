"""The report document (``controls.evaluate``) as Markdown or as one self-contained HTML page.

The HTML loads nothing: styles are inline, each job's timeline is an inline SVG (recovery
points, failures, drills and missed slots on the report's window), and it prints on A4 or
Letter with its colours. Every value from evidence is escaped.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

from bcdr.compliance.controls import FAIL, NO_EVIDENCE, PASS
from bcdr.text import printable
from bcdr.units import human_seconds

COLOURS = {PASS: "#1a7f37", FAIL: "#cf222e", NO_EVIDENCE: "#6e7781"}
UNCOVERED = "#d0d7de"  # the part of the window without evidence
MARKS = {
    "recovery_point": ("#1a7f37", "recovery point"),
    "failure": ("#cf222e", "failure"),
    "drill": ("#0969da", "drill"),
    "missed": ("#bf8700", "missed slot"),
}


def _short(ids: list[str]) -> str:
    return ", ".join(i[:12] for i in ids[:6]) + (f" (+{len(ids) - 6})" if len(ids) > 6 else "")


# --- Markdown --------------------------------------------------------------------------------


def _cell(text: object) -> str:
    """A Markdown table cell: terminal controls escaped (it may be printed), pipes too."""
    return printable(str(text).replace("\n", " ")).replace("|", "\\|")


def coverage_text(w: dict[str, Any]) -> str:
    cov = w.get("coverage") or {}
    text = f"{w['since'][:16]} to {w['until'][:16]}"
    if cov.get("complete", True):
        return text + f" (evidence from {w['start'][:16]}: the whole window)"
    return (
        text + f": evidence only from {w['start'][:16]}, {cov['fraction']:.1%} of the window; "
        "the rest has NO EVIDENCE"
    )


def versions_text(doc: dict[str, Any]) -> str | None:
    """A note when the window's evidence was written under several plan files."""
    versions = doc.get("plan_versions") or []
    if len(versions) < 2:
        return None
    parts = [
        f"`{str(v['digest'] or '?')[:12]}` {str(v['first'])[:10]} to {str(v['last'])[:10]} "
        f"({v['records']} record(s){', this plan' if v['current'] else ''})"
        for v in versions
    ]
    return f"The plan changed within the window: {len(versions)} versions: " + "; ".join(parts)


def _immutability_markdown(doc: dict[str, Any]) -> list[str]:
    protected = [r for r in doc["repositories"] if r.get("immutability")]
    if not protected:
        return []
    lines = ["", "## Immutability", "", "| repository | immutability |", "|---|---|"]
    for r in protected:
        c = r["immutability"]
        lines.append(f"| {_cell(r['name'])} | **{c['status']}**: {_cell(c['summary'])} |")
        lines += [f"|  | {_cell(gap)} |" for gap in c["details"].get("gaps", [])]
    return lines


def _immutability_html(doc: dict[str, Any]) -> list[str]:
    protected = [r for r in doc["repositories"] if r.get("immutability")]
    if not protected:
        return []
    out = ["<section><h2>Immutability</h2><table>"]
    for r in protected:
        c = r["immutability"]
        gaps = "".join(f"<br>{_e(g)}" for g in c["details"].get("gaps", []))
        out.append(
            f"<tr><td>{_e(r['name'])}</td><td>{_badge(c['status'])} "
            f"{_e(c['summary'])}{gaps}</td></tr>"
        )
    out.append("</table></section>")
    return out


def to_markdown(doc: dict[str, Any]) -> str:
    w = doc["window"]
    lines = [
        f"# Recovery report: plan {doc['plan']}",
        "",
        f"- **Verdict: {doc['verdict']}** ({doc['counts'][PASS]} pass, {doc['counts'][FAIL]} "
        f"fail, {doc['counts'][NO_EVIDENCE]} no evidence)",
        f"- Window: {coverage_text(w)}",
        f"- Plan file: `{doc['plan_file']}` (SHA-256 `{doc['plan_digest'] or '?'}`)",
        f"- Generated: {doc['generated'][:19]} by bcdr, schema `{doc['schema']}`",
        "",
    ]
    if doc["tampered"]:
        lines += ["> **The evidence chain was tampered with.** See Repositories.", ""]
    note = versions_text(doc)
    if note:
        lines += [f"> {_cell(note)}", ""]
    lines += [
        "## Summary",
        "",
        "| job | kind | control | status | summary |",
        "|---|---|---|---|---|",
    ]
    for job in doc["jobs"]:
        for c in job["controls"]:
            lines.append(
                f"| {_cell(job['name'])} | {job['kind']} | {_cell(c['title'])} | **{c['status']}** "
                f"| {_cell(c['summary'])} |"
            )
    for job in doc["jobs"]:
        lines += ["", f"## {job['kind']} {job['name']} ({job['schedule']})", ""]
        lines += ["| control | status | summary | evidence |", "|---|---|---|---|"]
        for c in job["controls"]:
            lines.append(
                f"| {_cell(c['title'])} | **{c['status']}** | {_cell(c['summary'])} | "
                f"{_cell(_short(c['evidence']))} |"
            )
        if job["drills"]:
            lines += ["", "Drills:", "", "| time | drill | verdict | RTO | RPO | verified |"]
            lines.append("|---|---|---|---|---|---|")
            for d in job["drills"]:
                lines.append(
                    f"| {str(d['time'])[:16]} | {_cell(d['drill'])} | {d['verdict']} | "
                    f"{_rto(d)} | {_secs(d['rpo_s'])} | {d['files_verified']}"
                    f"{' (' + _cell(d['sampled']) + ')' if d.get('sampled') else ''} |"
                )
        if job["failures"]:
            lines += ["", "Failures:", ""]
            lines += [
                f"- {str(f['time'])[:16]} `{f['evidence'][:12]}`: {_cell(f['error'])}"
                for f in job["failures"]
            ]
    lines += ["", "## Repositories", "", "| repository | encryption | evidence chain |"]
    lines.append("|---|---|---|")
    for r in doc["repositories"]:
        c = r["chain"]
        lines.append(
            f"| {_cell(r['name'])} (`{_cell(r['url'])}`) | {r['encryption'] or '?'} | "
            f"**{c['status']}**: {_cell(c['summary'])} |"
        )
    lines += _immutability_markdown(doc)
    heads = [r["head"] for r in doc["repositories"] if r.get("head")]
    if heads:
        lines += ["", "## Evidence heads", "", HEADS_NOTE, ""]
        lines += [f"    {h['token']}" for h in heads]
    return "\n".join(lines) + "\n"


HEADS_NOTE = (
    "Keep this report (or these lines) where the backup host cannot change them. "
    "`bcdr report PLAN --previous-report THIS-FILE` (or `bcdr evidence verify "
    "--previous-report THIS-FILE`) later fails if a chain no longer holds its head."
)


def _secs(value: object) -> str:
    return human_seconds(value, precision=1) if isinstance(value, int | float) else "-"


def _rto(d: dict[str, Any]) -> str:
    """A drill's RTO, with the full-restore estimate of a sampled one."""
    text = _secs(d.get("rto_s"))
    if d.get("rto_estimate_s") is not None:
        text += f" (full: ~{_secs(d['rto_estimate_s'])})"
    return text


# --- HTML --------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
margin:24px auto;max-width:1000px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid
#d0d7de;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px}th,td{border:1px solid #d0d7de;
padding:4px 6px;text-align:left;vertical-align:top}th{background:#f6f8fa}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-weight:600;
font-size:12px;white-space:nowrap}
.PASS{background:#1a7f37}.FAIL{background:#cf222e}.NOEVIDENCE{background:#6e7781}
.banner{background:#ffebe9;border:2px solid #cf222e;padding:8px 12px;margin:12px 0;
font-weight:600}
code,.ids{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}.meta{color:#57606a}
.legend span{margin-right:14px}svg{display:block;margin:4px 0}
.note{background:#fff8c5;border:1px solid #bf8700;padding:6px 10px;margin:10px 0}
.sampled{color:#9a6700;font-weight:600}pre.head{font-size:11px;white-space:pre-wrap}
section{break-inside:avoid;page-break-inside:avoid}
@media print{body{margin:0;max-width:none;font-size:11px}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}h2{break-after:avoid}
@page{size:auto;margin:14mm}}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _badge(status: str) -> str:
    return f'<span class="badge {status.replace(" ", "")}">{_e(status)}</span>'


def _timeline(
    job: dict[str, Any], since: datetime, until: datetime, start: datetime | None = None
) -> str:
    """The whole window, ``since`` to ``until``; the part before ``start`` (no evidence) is
    hatched grey."""
    width, height, left, right = 960, 64, 10, 10
    span = max((until - since).total_seconds(), 1.0)

    def x(when: str) -> float:
        try:
            t = datetime.fromisoformat(when)
        except ValueError:
            return float(left)
        frac = min(max((t - since).total_seconds() / span, 0.0), 1.0)
        return left + frac * (width - left - right)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="100%" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="timeline of {_e(job["name"])}">',
        f'<line x1="{left}" y1="30" x2="{width - right}" y2="30" stroke="#8c959f" '
        'stroke-width="1.5"/>',
        f'<text x="{left}" y="60" font-size="11" fill="#57606a">{_e(since.strftime("%Y-%m-%d"))}'
        "</text>",
        f'<text x="{width - right}" y="60" font-size="11" fill="#57606a" text-anchor="end">'
        f"{_e(until.strftime('%Y-%m-%d %H:%M'))}</text>",
    ]
    if start is not None and start > since:
        end = x(start.isoformat())
        parts.append(
            f'<rect class="uncovered" x="{left}" y="16" width="{max(end - left, 1):.1f}" '
            f'height="28" fill="{UNCOVERED}"><title>no evidence before '
            f"{_e(start.isoformat()[:16])}</title></rect>"
        )
    for ev in job["timeline"]:
        cx = x(ev["time"])
        tip = f"<title>{_e(ev['type'])} {_e(ev['time'][:16])} {_e(ev['label'])}</title>"
        kind = ev["type"]
        if kind == "recovery_point":
            parts.append(f'<circle cx="{cx:.1f}" cy="30" r="6" fill="#1a7f37">{tip}</circle>')
        elif kind == "drill":
            colour = "#0969da" if ev["ok"] else "#cf222e"
            parts.append(
                f'<rect x="{cx - 6:.1f}" y="8" width="12" height="12" fill="{colour}" '
                f'transform="rotate(45 {cx:.1f} 14)">{tip}</rect>'
            )
        elif kind == "missed":
            parts.append(
                f'<polygon points="{cx - 6:.1f},50 {cx + 6:.1f},50 {cx:.1f},39" '
                f'fill="#bf8700">{tip}</polygon>'
            )
        elif kind == "failure":
            parts.append(
                f'<g stroke="#cf222e" stroke-width="3">{tip}<line x1="{cx - 6:.1f}" y1="24" '
                f'x2="{cx + 6:.1f}" y2="36"/><line x1="{cx - 6:.1f}" y1="36" '
                f'x2="{cx + 6:.1f}" y2="24"/></g>'
            )
        else:  # a check or prune run that succeeded
            parts.append(f'<circle cx="{cx:.1f}" cy="30" r="5" fill="#1a7f37">{tip}</circle>')
    parts.append("</svg>")
    return "".join(parts)


def to_html(doc: dict[str, Any]) -> str:
    w = doc["window"]
    since = datetime.fromisoformat(w["since"])
    start = datetime.fromisoformat(w["start"])
    until = datetime.fromisoformat(w["until"])
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>bcdr report: {_e(doc['plan'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Recovery report: plan {_e(doc['plan'])} {_badge(doc['verdict'])}</h1>",
        f'<p class="meta">Window <span class="coverage">{_e(coverage_text(w))}</span> · '
        f"{doc['counts'][PASS]} pass, {doc['counts'][FAIL]} "
        f"fail, {doc['counts'][NO_EVIDENCE]} no evidence<br>Plan file "
        f"<code>{_e(doc['plan_file'])}</code>, SHA-256 <code>{_e(doc['plan_digest'] or '?')}"
        f"</code><br>Generated {_e(doc['generated'][:19])}, schema <code>{_e(doc['schema'])}"
        "</code></p>",
    ]
    if doc["tampered"]:
        bad = [r for r in doc["repositories"] if r["chain"]["status"] == FAIL]
        out.append(
            '<div class="banner" role="alert">Evidence chain TAMPERED: '
            + "; ".join(f"{_e(r['name'])}: {_e(r['chain']['summary'])}" for r in bad)
            + "</div>"
        )
    note = versions_text(doc)
    if note:
        out.append(f'<div class="note">{_e(note)}</div>')
    out.append("<section><h2>Summary</h2><table><tr><th>job</th><th>kind</th><th>controls</th>")
    out.append("</tr>")
    for job in doc["jobs"]:
        badges = " ".join(
            f'<span title="{_e(c["summary"])}">{_e(c["title"])} {_badge(c["status"])}</span>'
            for c in job["controls"]
        )
        out.append(
            f"<tr><td>{_e(job['name'])}</td><td>{_e(job['kind'])}</td><td>{badges}</td></tr>"
        )
    out.append("</table></section>")
    legend = " ".join(
        f'<span><svg width="12" height="12" style="display:inline"><rect width="12" height="12"'
        f' fill="{colour}"/></svg> {label}</span>'
        for colour, label in [*MARKS.values(), (UNCOVERED, "no evidence")]
    )
    for job in doc["jobs"]:
        out.append(
            f'<section id="job-{_e(job["name"])}"><h2>{_e(job["kind"])} {_e(job["name"])} '
            f'<span class="meta">({_e(job["schedule"])})</span></h2>'
        )
        out.append(_timeline(job, since, until, start))
        out.append(f'<div class="legend meta">{legend}</div>')
        out.append(
            "<table><tr><th>control</th><th>status</th><th>summary</th><th>evidence</th></tr>"
        )
        for c in job["controls"]:
            out.append(
                f"<tr><td>{_e(c['title'])}</td><td>{_badge(c['status'])}</td>"
                f'<td>{_e(c["summary"])}</td><td class="ids">{_e(_short(c["evidence"]))}</td></tr>'
            )
        out.append("</table>")
        if job["drills"]:
            out.append(
                "<table><tr><th>drill</th><th>time</th><th>verdict</th><th>RTO</th><th>RPO</th>"
                "<th>verified</th><th>evidence</th></tr>"
            )
            for d in job["drills"]:
                out.append(
                    f"<tr><td>{_e(d['drill'])}</td><td>{_e(str(d['time'])[:16])}</td>"
                    f"<td>{_e(d['verdict'])}</td><td>{_e(_rto(d))}</td>"
                    f"<td>{_secs(d['rpo_s'])}</td><td>{_e(d['files_verified'])}"
                    + (
                        f' <span class="sampled">{_e(d["sampled"])}</span>'
                        if d.get("sampled")
                        else ""
                    )
                    + "</td>"
                    f'<td class="ids">{_e(d["evidence"][:12])}</td></tr>'
                )
            out.append("</table>")
        if job["failures"]:
            out.append("<table><tr><th>failure</th><th>error</th><th>evidence</th></tr>")
            for f in job["failures"]:
                out.append(
                    f"<tr><td>{_e(str(f['time'])[:16])}</td><td>{_e(f['error'])}</td>"
                    f'<td class="ids">{_e(f["evidence"][:12])}</td></tr>'
                )
            out.append("</table>")
        out.append("</section>")
    out.append(
        "<section><h2>Repositories</h2><table><tr><th>repository</th><th>encryption</th>"
        "<th>evidence chain</th></tr>"
    )
    for r in doc["repositories"]:
        c = r["chain"]
        out.append(
            f"<tr><td>{_e(r['name'])}<br><code>{_e(r['url'])}</code></td>"
            f"<td>{_e(r['encryption'] or '?')}</td><td>{_badge(c['status'])} "
            f"{_e(c['summary'])}</td></tr>"
        )
    out.append("</table></section>")
    out += _immutability_html(doc)
    heads = [r["head"] for r in doc["repositories"] if r.get("head")]
    if heads:
        out.append(f'<section><h2>Evidence heads</h2><p class="meta">{_e(HEADS_NOTE)}</p>')
        out += [f'<pre class="head">{_e(h["token"])}</pre>' for h in heads]
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
