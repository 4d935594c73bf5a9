"""The plots people look for first: quality against size (Pareto frontier marked) and against speed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from quantmill.errors import QuantmillError
from quantmill.methods.base import package_version
from quantmill.record import RunRecord, VariantStatus
from quantmill.report.labels import place_labels
from quantmill.report.pareto import Point, pareto_frontier
from quantmill.report.quality import quality_metric
from quantmill.runstore import atomic_write_bytes
from quantmill.settings import get_settings

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STATUS_COLORS = {VariantStatus.PASSED: "tab:green", VariantStatus.INCONCLUSIVE: "tab:orange"}  # others: red


def _points(record: RunRecord, quality: str, cost: str) -> list[Point]:
    points = []
    sign = -1 if quality == "ppl" else 1  # the frontier maximises quality
    for name, entry in record.variants.items():
        metrics = entry.evaluation.metrics if entry.evaluation else {}
        if quality in metrics and cost in metrics:
            value = metrics[cost].value
            points.append(Point(name, 1 / value if cost == "decode_tok_s" else value, sign * metrics[quality].value))
    return points


def quality_figure(record: RunRecord, cost: str) -> Figure | None:
    """Quality against ``cost`` ('size_mb' or 'decode_tok_s'), every variant labelled without overlaps and the
    Pareto frontier drawn through the passing variants only; None without data. Its layout is final: save it
    with its own dpi and no ``bbox_inches``, or the labels' placement no longer holds."""
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
    # a failed variant may be smaller and better, but it is no choice: the frontier is among passing ones
    passing = [p for p in points if record.variants[p.name].status == VariantStatus.PASSED]
    frontier = pareto_frontier(passing)
    if frontier:
        ax.plot(
            [x(p) for p in frontier],
            [sign * p.quality for p in frontier],
            "--",
            color="tab:blue",
            marker="o",  # a ring around each frontier point: visible even when the frontier is one variant
            markersize=11,
            markerfacecolor="none",
            label="Pareto frontier (passing variants)",
            zorder=2,
        )
    baseline = record.baseline_evaluation()
    if baseline is not None and quality in baseline.metrics:
        ax.axhline(baseline.metrics[quality].value, color="gray", linestyle=":", label="baseline")
    ax.set_xlabel("decode tokens/s (higher is better)" if speed else "weights on disk, MB (lower is better)")
    ax.set_ylabel(f"{quality} ({'lower' if quality == 'ppl' else 'higher'} is better)")
    ax.set_title(
        f"{record.recipe}: {quality} vs {'speed' if speed else 'size'} (green passed, red failed, orange inconclusive)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.margins(0.15)  # room around the outermost points for their labels
    legend = ax.legend(fontsize=8) if ax.get_legend_handles_labels()[0] else None
    fig.tight_layout()
    fig.canvas.draw()  # fixes the layout and where "best" put the legend, before labels are placed around it
    if legend is not None:
        legend.set_loc(tuple(legend.get_window_extent().transformed(ax.transAxes.inverted()).p0))
    place_labels(fig, ax, [(p.name, x(p), sign * p.quality) for p in points], obstacles=[legend] if legend else [])
    return fig


def plot(record: RunRecord, out: Path, cost: str) -> Path | None:
    """Write ``quality_vs_size.png`` (``cost='size_mb'``) or ``quality_vs_speed.png``; None without data.

    Drawing costs ~1 s (matplotlib's import and layout), most of an unchanged rerun: a figure is
    kept in quantmill's cache folder under a digest of what it draws (:func:`figure_digest`) and
    copied when a run draws the same again."""
    digest = figure_digest(record, cost)
    if digest is None:
        return None
    path = out / ("quality_vs_speed.png" if cost == "decode_tok_s" else "quality_vs_size.png")
    kept = get_settings().cache_dir / "plots" / f"{digest}.png"
    if kept.is_file():
        shutil.copyfile(kept, path)
        return path
    fig = quality_figure(record, cost)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path)
    plt.close(fig)
    with contextlib.suppress(QuantmillError):  # a cache that cannot be written only costs the next run a drawing
        atomic_write_bytes(kept, path.read_bytes())
    return path


_DRAWING_CODE = ("plots.py", "labels.py", "pareto.py", "quality.py")


def figure_digest(record: RunRecord, cost: str) -> str | None:
    """A digest of everything :func:`quality_figure` draws from: the recipe's name, the quality metric, each
    point with its status, the baseline, the drawing code and matplotlib's version; None when it draws nothing."""
    quality = quality_metric(record)
    points = _points(record, quality, cost) if quality else []
    if not points:
        return None
    baseline = record.baseline_evaluation()
    drawn = {
        "recipe": record.recipe,
        "quality": quality,
        "cost": cost,
        "points": [(p.name, p.cost, p.quality, record.variants[p.name].status.value) for p in points],
        "baseline": baseline.metrics[quality].value if baseline and quality in baseline.metrics else None,
        "matplotlib": package_version("matplotlib"),
    }
    digest = hashlib.sha256(json.dumps(drawn, sort_keys=True).encode())
    for name in _DRAWING_CODE:
        digest.update((Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()
