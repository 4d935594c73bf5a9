"""``report.md`` and a self-contained ``report.html`` (plots embedded) for one run; a search's trace first.

Both link the per-step logs that exist (``logs/<variant>.log``, ``logs/baseline.log``) by
relative paths, so the links work wherever the run folder is copied.
"""

from __future__ import annotations

import base64
import html
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from quantmill.evaluation.results import MetricValue
from quantmill.progress import BASELINE, logs_dir
from quantmill.record import PublishStatus, Regression, RunRecord, VariantRecord, VariantStatus
from quantmill.report.compare import find_regressions
from quantmill.report.plots import plot
from quantmill.report.quality import quality_metric, recovery
from quantmill.report.recommend import recommend
from quantmill.report.search import search_plot, trace_html, trace_markdown
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
    "unmet rule / error",
    "published",
)


def _value(metrics: dict[str, MetricValue], name: str, digits: int = 4) -> str:
    found = metrics.get(name)
    if found is None:
        return "-"
    text = f"{found.value:.{digits}g}"
    return text + (f" ± {found.stderr:.2g}" if found.stderr else "")


def _baseline_metrics(record: RunRecord) -> dict[str, MetricValue]:
    baseline = record.baseline_evaluation()
    return baseline.metrics if baseline else {}


def _published(entry: VariantRecord) -> str:
    publish = entry.publish
    if publish is None:
        return "-"
    if publish.status == PublishStatus.FAILED:  # passed its gates, but the commit did not go through
        return f"publish failed: {publish.error}"
    return publish.url or publish.status.value


def status_counts(record: RunRecord) -> str:
    """``3 passed, 1 failed, 1 inconclusive``: every status that occurs, in the enum's order."""
    counts = Counter(entry.status for entry in record.variants.values())
    return ", ".join(f"{counts[s]} {s.value}" for s in VariantStatus if counts[s]) or "no variants"


def rows(record: RunRecord) -> list[list[str]]:
    quality = quality_metric(record)
    baseline = _baseline_metrics(record)
    table = []
    for name, entry in record.variants.items():
        metrics = entry.evaluation.metrics if entry.evaluation else {}
        recovered = None
        if quality and quality in metrics and quality in baseline:
            recovered = recovery(metrics[quality], baseline[quality])
        table.append(
            [
                name,
                entry.method,
                entry.setting or "-",
                entry.status.value,
                _value(metrics, "size_mb"),
                _value(metrics, "bits_per_weight"),
                _value(metrics, quality) if quality else "-",
                "-" if recovered is None else f"{recovered:.3f}",
                _value(metrics, "ppl"),
                _value(metrics, "decode_tok_s"),
                _value(metrics, "peak_rss_gb"),
                (entry.verdict.describe_unmet() if entry.verdict else "") or entry.error or "-",
                _published(entry),
            ]
        )
    return table


def log_links(run_path: Path, record: RunRecord) -> dict[str, str]:
    """The baseline's and each variant's log, as paths relative to the run folder, for those that exist."""
    folder = logs_dir(run_path)
    relative = folder.relative_to(run_path).as_posix()
    return {
        name: f"{relative}/{quote(name)}.log"
        for name in (BASELINE, *record.variants)
        if (folder / f"{name}.log").is_file()
    }


def _markdown(record: RunRecord, regressions: list[Regression], images: dict[str, Path], logs: dict[str, str]) -> str:
    quality = quality_metric(record) or "n/a"
    lines = [f"# {record.recipe} — run {record.run_id}", ""]
    if regressions:
        lines += ["## ⚠ Regressions since the previous run", ""]
        lines += [f"- **{r.variant}** {r.what}: {r.before} → {r.after} ({r.why})" for r in regressions] + [""]
    model = record.model
    baseline = _baseline_metrics(record)
    lines += [
        f"Model `{model.id if model else None}` at `{model.revision if model else None}` on {record.device or '?'}. "
        f"Quality metric: `{quality}`; baseline {_value(baseline, quality)}, perplexity {_value(baseline, 'ppl')}, "
        f"size {_value(baseline, 'size_mb')} MB." + (f" [Baseline log]({logs[BASELINE]})." if BASELINE in logs else ""),
        "",
    ]
    lines += [f"Verdicts: {status_counts(record)}.", ""]
    if record.search is not None:
        lines += trace_markdown(record.search)
    header = (*COLUMNS, "log")
    lines += ["## Variants", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows(record):
        log = f"[log]({logs[row[0]]})" if row[0] in logs else "-"
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + f" | {log} |")
    lines += ["", "## Recommendation", ""]
    for rec in recommend(record):
        lines.append(f"- **{rec.use_case}**: " + (f"`{rec.variant}` — " if rec.variant else "") + rec.reason)
    for title, image in images.items():
        lines += ["", f"## {title}", "", f"![{title}]({image.name})"]
    return "\n".join(lines) + "\n"


def _html(
    markdown_rows: list[list[str]],
    record: RunRecord,
    regressions: list[Regression],
    images: dict[str, Path],
    logs: dict[str, str],
) -> str:
    def cell(text: str) -> str:
        return html.escape(text)

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{cell(record.recipe)} report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:4px 8px}th{background:#eee}.failed{color:#b00}.passed{color:#070}"
        ".inconclusive{color:#a60}"
        ".regression{background:#fee;padding:1em;border:1px solid #b00}</style></head><body>",
        f"<h1>{cell(record.recipe)} — run {cell(record.run_id)}</h1>",
    ]
    if regressions:
        items = "".join(
            f"<li><b>{cell(r.variant)}</b> {cell(r.what)}: {cell(str(r.before))} → {cell(str(r.after))} "
            f"({cell(r.why)})</li>"
            for r in regressions
        )
        parts.append(f"<div class='regression'><h2>Regressions since the previous run</h2><ul>{items}</ul></div>")

    def log_link(name: str, text: str) -> str:
        return f"<a href='{cell(logs[name])}'>{cell(text)}</a>" if name in logs else "-"

    parts.append(f"<p>Verdicts: {cell(status_counts(record))}.</p>")
    if BASELINE in logs:
        parts.append(f"<p>Baseline: {log_link(BASELINE, 'log')}.</p>")
    if record.search is not None:
        parts.append(trace_html(record.search))
    header = (*COLUMNS, "log")
    parts.append("<h2>Variants</h2><table id='variants'><tr>" + "".join(f"<th>{c}</th>" for c in header) + "</tr>")
    for row in markdown_rows:
        parts.append(
            "<tr>"
            + "".join(f"<td class='{cell(row[3]) if i == 3 else ''}'>{cell(v)}</td>" for i, v in enumerate(row))
            + f"<td>{log_link(row[0], 'log')}</td></tr>"
        )
    parts.append("</table><h2>Recommendation</h2><ul>")
    parts += [
        f"<li><b>{cell(r.use_case)}</b>: {cell(r.variant or '')} {cell(r.reason)}</li>" for r in recommend(record)
    ]
    parts.append("</ul>")
    for title, image in images.items():
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<h2>{cell(title)}</h2><img alt='{cell(title)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_path: Path, record: RunRecord, previous: RunRecord | None = None) -> list[Regression]:
    """Write ``report.md``, ``report.html`` and the plots into ``run_path``; returns regressions found."""
    regressions = find_regressions(previous, record) if previous else []
    images = {}
    for title, cost in (("Quality vs size", "size_mb"), ("Quality vs decode speed", "decode_tok_s")):
        path = plot(record, run_path, cost)
        if path is not None:
            images[title] = path
    searched = search_plot(record.search, run_path) if record.search is not None else None
    if searched is not None:
        images["Search: quality and proxy vs size"] = searched
    logs = log_links(run_path, record)
    atomic_write_text(run_path / "report.md", _markdown(record, regressions, images, logs))
    atomic_write_text(run_path / "report.html", _html(rows(record), record, regressions, images, logs))
    return regressions
