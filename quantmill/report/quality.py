"""The metric a run's report calls "quality", and a variant's recovery of the baseline's value."""

from __future__ import annotations

from quantmill.evaluation.results import MetricValue
from quantmill.record import RunRecord


def quality_metric(record: RunRecord) -> str | None:
    """The first task metric the baseline reports, else perplexity."""
    baseline = record.baseline_evaluation()
    metrics = baseline.metrics if baseline else {}
    tasks = [m for m in metrics if "/" in m]
    return tasks[0] if tasks else ("ppl" if "ppl" in metrics else None)


def recovery(variant: MetricValue, baseline: MetricValue) -> float | None:
    """The variant's value as a fraction of the baseline's; None when the baseline's is 0."""
    return variant.value / baseline.value if baseline.value else None
