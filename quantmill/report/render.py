"""``report.md`` and a self-contained ``report.html`` (plots embedded) for one run."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from quantmill.report.compare import Regression, find_regressions
from quantmill.report.plots import plot, quality_metric
from quantmill.report.recommend import recommend
from quantmill.runstore import atomic_write_text

COLUMNS = (
    "variant",
    "method",
    "setting",
    "status",
    "size MB",
    "bits/w",
    "quality",
    "recovery",
    "ppl",
    "decode tok/s",
    "peak GB",
    "failed rule / error",
    "published",
)


def _value(metrics: dict, name: str, digits: int = 4) -> str:
    found = metrics.get(name)
    if found is None:
        return "-"
    text = f"{found['value']:.{digits}g}"
    return text + (f" ± {found['stderr']:.2g}" if found.get("stderr") else "")


def rows(results: dict[str, Any]) -> list[list[str]]:
    quality = quality_metric(results)
    baseline = ((results.get("baseline") or {}).get("evaluation") or {}).get("metrics", {})
    table = []
    for name, entry in results.get("variants", {}).items():
        metrics = (entry.get("evaluation") or {}).get("metrics", {})
        recovery = "-"
        if quality and quality in metrics and quality in baseline and baseline[quality]["value"]:
            recovery = f"{metrics[quality]['value'] / baseline[quality]['value']:.3f}"
        outcomes = (entry.get("verdict") or {}).get("outcomes", [])
        failed = [
            f"{o['metric']} {o['rule']} {o['threshold']:g}"
            for o in outcomes
            if not o["passed"] and o["level"] == "required"
        ]
        publish = entry.get("publish") or {}
        published = publish.get("url") or publish.get("status") or "-"
        if publish.get("status") == "failed":  # passed its gates, but the commit did not go through
            published = f"publish failed: {publish.get('error')}"
        table.append(
            [
                name,
                entry.get("method", "?"),
                entry.get("setting", "-"),
                entry.get("status", "?"),
                _value(metrics, "size_mb"),
                _value(metrics, "bits_per_weight"),
                _value(metrics, quality) if quality else "-",
                recovery,
                _value(metrics, "ppl"),
                _value(metrics, "decode_tok_s"),
                _value(metrics, "peak_rss_gb"),
                "; ".join(failed) or (entry.get("error") or "-"),
                published,
            ]
        )
    return table


def _markdown(results, regressions, images) -> str:
    quality = quality_metric(results) or "n/a"
    lines = [f"# {results.get('recipe')} — run {results.get('run_id')}", ""]
    if regressions:
        lines += ["## ⚠ Regressions since the previous run", ""]
        lines += [f"- **{r.variant}** {r.what}: {r.before} → {r.after} ({r.why})" for r in regressions] + [""]
    model = results.get("model") or {}
    baseline = ((results.get("baseline") or {}).get("evaluation") or {}).get("metrics", {})
    lines += [
        f"Model `{model.get('id')}` at `{model.get('revision')}` on {results.get('device', '?')}. "
        f"Quality metric: `{quality}`; baseline {_value(baseline, quality)}, perplexity {_value(baseline, 'ppl')}, "
        f"size {_value(baseline, 'size_mb')} MB.",
        "",
    ]
    lines += ["## Variants", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows(results)]
    lines += ["", "## Recommendation", ""]
    for rec in recommend(results):
        lines.append(f"- **{rec.use_case}**: " + (f"`{rec.variant}` — " if rec.variant else "") + rec.reason)
    for title, image in images.items():
        lines += ["", f"## {title}", "", f"![{title}]({image.name})"]
    return "\n".join(lines) + "\n"


def _html(markdown_rows: list[list[str]], results, regressions, images) -> str:
    def cell(text: str) -> str:
        return html.escape(text)

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{cell(str(results.get('recipe')))} report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#eee}.failed{color:#b00}.passed{color:#070}"
        ".regression{background:#fee;padding:1em;border:1px solid #b00}</style></head><body>",
        f"<h1>{cell(str(results.get('recipe')))} — run {cell(str(results.get('run_id')))}</h1>",
    ]
    if regressions:
        items = "".join(
            f"<li><b>{cell(r.variant)}</b> {cell(r.what)}: {cell(str(r.before))} → {cell(str(r.after))} "
            f"({cell(r.why)})</li>"
            for r in regressions
        )
        parts.append(f"<div class='regression'><h2>Regressions since the previous run</h2><ul>{items}</ul></div>")
    parts.append("<h2>Variants</h2><table id='variants'><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>")
    for row in markdown_rows:
        parts.append(
            "<tr>"
            + "".join(f"<td class='{cell(row[3]) if i == 3 else ''}'>{cell(v)}</td>" for i, v in enumerate(row))
            + "</tr>"
        )
    parts.append("</table><h2>Recommendation</h2><ul>")
    parts += [
        f"<li><b>{cell(r.use_case)}</b>: {cell(r.variant or '')} {cell(r.reason)}</li>" for r in recommend(results)
    ]
    parts.append("</ul>")
    for title, image in images.items():
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<h2>{cell(title)}</h2><img alt='{cell(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_path: Path, results: dict[str, Any], previous: dict[str, Any] | None = None) -> list[Regression]:
    """Write ``report.md``, ``report.html`` and the plots into ``run_path``; returns regressions found."""
    regressions = find_regressions(previous, results) if previous else []
    images = {}
    for title, cost in (("Quality vs size", "size_mb"), ("Quality vs decode speed", "decode_tok_s")):
        path = plot(results, run_path, cost)
        if path is not None:
            images[title] = path
    atomic_write_text(run_path / "report.md", _markdown(results, regressions, images))
    atomic_write_text(run_path / "report.html", _html(rows(results), results, regressions, images))
    return regressions
