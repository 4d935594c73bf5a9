"""The plots people look for first: quality against size (Pareto frontier marked) and against speed."""

from __future__ import annotations

from pathlib import Path

from quantmill.record import RunRecord, VariantStatus
from quantmill.report.pareto import Point, pareto_frontier

STATUS_COLORS = {VariantStatus.PASSED: "tab:green", VariantStatus.INCONCLUSIVE: "tab:orange"}  # others: red


def quality_metric(record: RunRecord) -> str | None:
    """The first task metric the baseline reports, else perplexity."""
    baseline = record.baseline_evaluation()
    metrics = baseline.metrics if baseline else {}
    tasks = [m for m in metrics if "/" in m]
    return tasks[0] if tasks else ("ppl" if "ppl" in metrics else None)


def _points(record: RunRecord, quality: str, cost: str) -> list[Point]:
    points = []
    sign = -1 if quality == "ppl" else 1  # the frontier maximises quality
    for name, entry in record.variants.items():
        metrics = entry.evaluation.metrics if entry.evaluation else {}
        if quality in metrics and cost in metrics:
            value = metrics[cost].value
            points.append(Point(name, 1 / value if cost == "decode_tok_s" else value, sign * metrics[quality].value))
    return points


def plot(record: RunRecord, out: Path, cost: str) -> Path | None:
    """Write ``quality_vs_size.png`` (``cost='size_mb'``) or ``quality_vs_speed.png``; None without data."""
    quality = quality_metric(record)
    if quality is None:
        return None
    points = _points(record, quality, cost)
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sign = -1 if quality == "ppl" else 1
    speed = cost == "decode_tok_s"
    x = lambda p: 1 / p.cost if speed else p.cost  # noqa: E731
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for p in points:
        color = STATUS_COLORS.get(record.variants[p.name].status, "tab:red")
        ax.scatter(x(p), sign * p.quality, color=color, s=40, zorder=3)
        ax.annotate(p.name, (x(p), sign * p.quality), textcoords="offset points", xytext=(4, 4), fontsize=7)
    frontier = pareto_frontier(points)
    ax.plot(
        [x(p) for p in frontier],
        [sign * p.quality for p in frontier],
        "--",
        color="tab:blue",
        label="Pareto frontier",
        zorder=2,
    )
    baseline = record.baseline_evaluation()
    if baseline is not None and quality in baseline.metrics:
        ax.axhline(baseline.metrics[quality].value, color="gray", linestyle=":", label="baseline")
    ax.set_xlabel("decode tokens/s (higher is better)" if speed else "weights on disk, MB (lower is better)")
    ax.set_ylabel(f"{quality} ({'lower' if quality == 'ppl' else 'higher'} is better)")
    ax.set_title(
        f"{record.recipe}: {quality} vs {'speed' if speed else 'size'} (green passed, red failed, orange inconclusive)"
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / ("quality_vs_speed.png" if speed else "quality_vs_size.png")
    fig.savefig(path)
    plt.close(fig)
    return path
