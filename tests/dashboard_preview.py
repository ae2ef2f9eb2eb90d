"""A picture of monitoring/bcdr-dashboard.json without a Grafana server: the series of
tests/monitoring_series.py are backfilled into a real Prometheus (Debian's, on loopback), every
panel's queries are run against it as Grafana would run them (``$plan`` and ``$job`` as "All"),
and the answers are drawn in the dashboard's own grid and screenshotted with headless Chromium.

    .venv/bin/python -m tests.dashboard_preview docs/images/dashboard.png

The test suite runs the same path (tests/test_monitoring.py) and checks that every query
answers.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bcdr.scheduler.metrics import METRICS
from tests.monitoring_series import SCRAPE, START, Recording, record

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "monitoring" / "bcdr-dashboard.json"
WIDTH = 1600  # px for the dashboard's 24 columns
ROW_PX = 32
COLOURS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#96d98d"]


def openmetrics(rec: Recording) -> str:
    """The scrapes as OpenMetrics with timestamps, for ``promtool tsdb create-blocks-from``."""
    families: dict[str, list[str]] = {}
    for (name, labels), values in rec.series().items():
        family = name.removesuffix("_total") if name.endswith("_total") else name
        text = ",".join(f'{k}="{v}"' for k, v in labels)
        lines = families.setdefault(family, [])
        for i, v in enumerate(values):
            if v is not None:
                when = (START + i * SCRAPE).timestamp()
                lines.append(f"{name}{{{text}}} {v!r} {when:.0f}")
    out = []
    for family, lines in sorted(families.items()):
        kind = METRICS.get(family, ("gauge",))[0]
        out += [f"# TYPE {family} {kind}", *lines]
    return "\n".join(out) + "\n# EOF\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def prometheus(rec: Recording, folder: Path) -> Iterator[str]:
    """A real Prometheus on loopback holding the recording; its URL."""
    promtool, server = shutil.which("promtool"), shutil.which("prometheus")
    if promtool is None or server is None:
        raise RuntimeError("Debian's prometheus is needed (make test installs it)")
    data = folder / "tsdb"
    source = folder / "series.om"
    source.write_text(openmetrics(rec))
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    config = folder / "prometheus.yml"
    config.write_text("global: {evaluation_interval: 1h}\nscrape_configs: []\n")
    port = _free_port()
    log = (folder / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            server,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "prometheus did not start: " + (folder / "prometheus.log").read_text()[-2000:]
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def query(url: str, expr: str, end: datetime, span: timedelta | None) -> list[dict[str, Any]]:
    """One query as Grafana sends it: a range over ``span`` ending at ``end``, or instant."""
    if span is None:
        path = "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": end.timestamp()})
    else:
        path = "/api/v1/query_range?" + urllib.parse.urlencode(
            {
                "query": expr,
                "start": (end - span).timestamp(),
                "end": end.timestamp(),
                "step": 900,
            }
        )
    with urllib.request.urlopen(url + path, timeout=30) as r:
        doc = json.load(r)
    if doc.get("status") != "success":
        raise RuntimeError(f"{expr}: {doc}")
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def grafana_expr(expr: str) -> str:
    """``$plan`` and ``$job`` as Grafana sends them with "All" chosen."""
    return expr.replace("$plan", ".*").replace("$job", ".*")


@dataclass
class Answer:
    panel: dict[str, Any]
    results: list[tuple[dict[str, Any], list[dict[str, Any]]]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(r for _, r in self.results)


def ask(url: str, dashboard: dict[str, Any], end: datetime, span: timedelta) -> list[Answer]:
    """Every panel's targets, answered."""
    out = []
    for panel in dashboard["panels"]:
        answer = Answer(panel)
        instant = panel["type"] in ("stat", "table")
        for target in panel.get("targets", []):
            expr = grafana_expr(target["expr"])
            answer.results.append((target, query(url, expr, end, None if instant else span)))
        out.append(answer)
    return out


# --- drawing ----------------------------------------------------------------------------------


def fmt(value: float, unit: str | None) -> str:
    if math.isnan(value) or math.isinf(value):
        return "–"
    if unit == "s":
        v = abs(value)
        for size, name in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
            if v >= size:
                return f"{value / size:.3g} {name}"
        return f"{value * 1000:.3g} ms"
    if unit == "bytes":
        v = abs(value)
        for size, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if v >= size:
                return f"{value / size:.3g} {name}"
        return f"{value:.0f} B"
    return f"{value:.4g}"


def legend(target: dict[str, Any], metric: dict[str, str]) -> str:
    text: str = target.get("legendFormat") or ""
    for k, v in metric.items():
        text = text.replace("{{" + k + "}}", v)
    return text or ",".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")


def _timeseries(a: Answer, w: int, h: int) -> str:
    unit = a.panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
    lines = []
    for target, result in a.results:
        for series in result:
            points = [(float(t), float(v)) for t, v in series["values"]]
            points = [(t, v) for t, v in points if math.isfinite(v)]
            if points:
                lines.append((legend(target, series["metric"]), points))
    if not lines:
        return '<div class="nodata">No data</div>'
    # a never-succeeded job's age (decades) would flatten every other line: clip at 10x the
    # largest target-like value, as a y-axis max would in Grafana
    ys = sorted(v for _, pts in lines for _, v in pts)
    top = ys[-1]
    if top > 50 * (ys[len(ys) // 2] or 1):
        top = ys[int(len(ys) * 0.9)] * 1.5 or top
    lo = min(0.0, ys[0])
    t0 = min(t for _, pts in lines for t, _ in pts)
    t1 = max(t for _, pts in lines for t, _ in pts)
    pw, ph, left, bottom = w - 70, h - 95, 62, 22
    parts = [f'<svg width="{w - 10}" height="{h - 60}">']
    for i in range(5):
        y = 8 + ph * i / 4
        value = top - (top - lo) * i / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">')
        parts.append(f"{html.escape(fmt(value, unit))}</text>")
    for i in range(5):
        t = t0 + (t1 - t0) * i / 4
        x = left + pw * i / 4
        label = datetime.fromtimestamp(t, UTC).strftime("%a %H:%M")
        parts.append(f'<text x="{x:.1f}" y="{ph + bottom}" class="axis" text-anchor="middle">')
        parts.append(f"{label}</text>")
    for n, (_, pts) in enumerate(lines):
        colour = COLOURS[n % len(COLOURS)]
        xy = []
        for t, v in pts:
            v = min(max(v, lo), top)
            x = left + pw * (t - t0) / ((t1 - t0) or 1)
            y = 8 + ph * (1 - (v - lo) / ((top - lo) or 1))
            xy.append(f"{x:.1f},{y:.1f}")
        dash = ' stroke-dasharray="8 6"' if "RPO" in lines[n][0] or "target" in lines[n][0] else ""
        parts.append(
            f'<polyline points="{" ".join(xy)}" fill="none" stroke="{colour}" '
            f'stroke-width="1.6"{dash}/>'
        )
    parts.append("</svg><div class='legend'>")
    for n, (name, _) in enumerate(lines):
        colour = COLOURS[n % len(COLOURS)]
        parts.append(f'<span><i style="background:{colour}"></i>{html.escape(name)}</span>')
    parts.append("</div>")
    return "".join(parts)


def _stat(a: Answer) -> str:
    defaults = a.panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit")
    values = [float(s["value"][1]) for _, r in a.results for s in r]
    if not values:
        return '<div class="nodata">No data</div>'
    value = values[0]
    colour = "#73bf69"
    for step in defaults.get("thresholds", {}).get("steps", []):
        if step.get("value") is None or value >= step["value"]:
            colour = step["color"]
    colour = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830"}.get(colour, colour)
    text = fmt(value, unit)
    for mapping in defaults.get("mappings", []):
        hit = mapping.get("options", {}).get(f"{value:g}")
        if hit:
            text = hit["text"]
    return f'<div class="stat" style="color:{colour}">{html.escape(text)}</div>'


def _table(a: Answer) -> str:
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for target, result in a.results:
        for s in result:
            m = s["metric"]
            row = rows.setdefault((m.get("plan", ""), m.get("job", "")), {})
            value = float(s["value"][1])
            if target["refId"] == "A":
                row["state"] = m.get("state", "")
            elif target["refId"] == "B":
                row["since success"] = "never" if value > 1e8 else fmt(value, "s")
            else:
                row["failures"] = f"{value:g}"
    head = "<tr><th>plan</th><th>job</th><th>state</th><th>since success</th><th>failures</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(p)}</td><td>{html.escape(j)}</td>"
        f"<td class='st-{html.escape(r.get('state', ''))}'>{html.escape(r.get('state', ''))}</td>"
        f"<td>{html.escape(r.get('since success', ''))}</td><td>{r.get('failures', '')}</td></tr>"
        for (p, j), r in sorted(rows.items())
    )
    return f"<table>{head}{body}</table>"


def page(dashboard: dict[str, Any], answers: list[Answer], end: datetime) -> str:
    col = WIDTH / 24
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    parts = [
        "<!doctype html><meta charset=utf-8><style>",
        "body{margin:0;background:#111217;color:#ccccdc;",
        "font:13px Inter,Helvetica,Arial,sans-serif}",
        "header{padding:10px 16px;font-size:17px;color:#fff}",
        "header small{color:#8e8e9f;font-size:12px;margin-left:12px}",
        ".p{position:absolute;background:#181b1f;border:1px solid #2c3235;border-radius:3px;"
        "box-sizing:border-box;padding:6px 8px;overflow:hidden}",
        ".p h3{margin:0 0 4px;font-size:13px;font-weight:500;color:#d8d9da}",
        ".grid{stroke:#2c3235}.axis{fill:#8e8e9f;font-size:10px}",
        ".legend span{margin-right:12px;font-size:11px;white-space:nowrap}",
        ".legend i{display:inline-block;width:12px;height:3px;margin-right:4px;"
        "vertical-align:middle}",
        ".stat{font-size:42px;font-weight:500;text-align:center;margin-top:14px}",
        ".nodata{color:#8e8e9f;text-align:center;margin-top:30px}",
        "table{width:100%;border-collapse:collapse;font-size:12px}",
        "th{color:#6e9fff;text-align:left;border-bottom:1px solid #2c3235;padding:3px}",
        "td{padding:3px;border-bottom:1px solid #22252b}",
        ".st-ok{color:#73bf69}.st-failed{color:#f2495c}.st-partial{color:#ff9830}",
        "</style>",
        f"<header>{html.escape(dashboard['title'])}<small>plan: All · job: All · "
        f"last 84 h up to {end:%Y-%m-%d %H:%M} UTC · rendered from the test suite's recorded "
        "series through a real Prometheus, without Grafana</small></header>",
        f'<div style="position:relative;height:{bottom * ROW_PX + 10}px">',
    ]
    for a in answers:
        g = a.panel["gridPos"]
        x, y, w, h = g["x"] * col, g["y"] * ROW_PX, g["w"] * col - 6, g["h"] * ROW_PX - 6
        kind = a.panel["type"]
        if kind == "timeseries":
            body = _timeseries(a, int(w), int(h))
        elif kind == "stat":
            body = _stat(a)
        else:
            body = _table(a)
        parts.append(
            f'<div class="p" style="left:{x + 4:.0f}px;top:{y:.0f}px;width:{w:.0f}px;'
            f'height:{h:.0f}px"><h3>{html.escape(a.panel["title"])}</h3>{body}</div>'
        )
    parts.append("</div>")
    return "\n".join(parts)


def screenshot(page_html: str, out: Path, height: int, folder: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("Debian's chromium is needed (make test installs it)")
    source = folder / "dashboard.html"
    source.write_text(page_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={folder / 'chromium'}",
            f"--screenshot={out}",
            f"--window-size={WIDTH + 10},{height}",
            source.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def render(out: Path, folder: Path, rec: Recording | None = None) -> list[Answer]:
    """Record (unless given), backfill, query, draw and screenshot; the answers."""
    rec = rec or record(folder / "story")
    dashboard = json.loads(DASHBOARD.read_text())
    end = START + SCRAPE * (len(rec.scrapes) - 1)
    with prometheus(rec, folder) as url:
        answers = ask(url, dashboard, end, end - START)
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    screenshot(page(dashboard, answers, end), out, bottom * ROW_PX + 60, folder)
    return answers


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/dashboard.png").resolve()
    with tempfile.TemporaryDirectory(prefix="bcdr-dashboard-") as tmp:
        answers = render(out, Path(tmp))
    empty = [a.panel["title"] for a in answers if a.empty]
    print(f"wrote {out}" + (f"; panels without data: {', '.join(empty)}" if empty else ""))
    return 1 if empty else 0


if __name__ == "__main__":
    raise SystemExit(main())
