"""The report's account of a search: every candidate (estimated size, proxy, full numbers, outcome) as a table,
and a plot of size against quality and proxy with the winner marked."""

from __future__ import annotations

import html
from pathlib import Path

from quantmill.search.trace import SearchTrace

TRACE_COLUMNS = ("candidate", "setting", "est. MB", "proxy", "size MB", "objective", "quality", "outcome", "why")


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def trace_rows(trace: SearchTrace) -> list[list[str]]:
    """One row per candidate, in search order (smallest first)."""
    return [
        [
            c.id,
            f"{c.method} {c.setting}",
            _number(c.estimated_mb),
            _number(c.proxy),
            _number(c.size_mb),
            _number(c.objective),
            _number(c.quality),
            c.outcome,
            c.reason,
        ]
        for c in trace.candidates
    ]


def _goal(trace: SearchTrace) -> str:
    proxy = trace.proxy or "none (no perplexity corpus)"
    return (
        f"Goal: {trace.objective} under {'; '.join(trace.constraints)}; {trace.full_evaluations} of at most "
        f"{trace.budget} full evaluations used; screening proxy: {proxy}; quality: {trace.quality_metric or 'n/a'}."
    )


def _frontier(trace: SearchTrace) -> str:
    kind = "the exhaustive grid's" if trace.exhaustive else "among the fully evaluated candidates (not exhaustive)"
    return f"Frontier ({trace.objective.split()[-1]} vs quality), {kind}: {', '.join(trace.frontier) or 'none'}."


def trace_markdown(trace: SearchTrace) -> list[str]:
    """The report's ``## Search`` section, as markdown lines."""
    lines = ["## Search", "", f"**{trace.summary}**", "", _goal(trace), ""]
    lines += ["| " + " | ".join(TRACE_COLUMNS) + " |", "|" + "---|" * len(TRACE_COLUMNS)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in trace_rows(trace)]
    return [*lines, "", _frontier(trace), ""]


def trace_html(trace: SearchTrace) -> str:
    """The same section for ``report.html``."""
    cells = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in trace_rows(trace)
    )
    header = "".join(f"<th>{c}</th>" for c in TRACE_COLUMNS)
    return (
        f"<h2>Search</h2><p><b>{html.escape(trace.summary)}</b></p><p>{html.escape(_goal(trace))}</p>"
        f"<table id='search'><tr>{header}</tr>{cells}</table><p>{html.escape(_frontier(trace))}</p>"
    )


def search_plot(trace: SearchTrace, out: Path) -> Path | None:
    """``search.png``: quality (fully evaluated candidates) and proxy (screened ones) against size, the winner
    marked with a star; None when nothing was measured."""
    sized = [c for c in trace.candidates if c.size_mb is not None]
    if not sized:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"winner": "tab:green", "failed a constraint": "tab:red", "screened out by proxy": "tab:orange"}
    fig, (quality_ax, proxy_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, value, label in (
        (quality_ax, lambda c: c.quality, f"{trace.quality_metric or 'quality'} (higher is better)"),
        (proxy_ax, lambda c: c.proxy, "proxy perplexity (lower is better)"),
    ):
        points = [(c, value(c)) for c in sized if value(c) is not None]
        for candidate, y in points:
            winner = candidate.id == trace.winner
            ax.scatter(
                candidate.size_mb,
                y,
                color=colors.get(candidate.outcome, "tab:gray"),
                marker="*" if winner else "o",
                s=160 if winner else 40,
                zorder=3,
            )
            ax.annotate(candidate.id, (candidate.size_mb, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel("weights on disk, MB")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.margins(0.15)
    fig.suptitle(
        f"search ({trace.objective}): winner {trace.winner or 'none'} (star); red failed, orange screened out, "
        "gray not chosen",
        fontsize=9,
    )
    fig.tight_layout()
    path = out / "search.png"
    fig.savefig(path)
    plt.close(fig)
    return path
