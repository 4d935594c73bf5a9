"""Regressions between two runs of a recipe: worse beyond noise, or a flipped verdict."""

from __future__ import annotations

import math

from quantmill.evaluation.results import MetricValue
from quantmill.metrics import metric_direction
from quantmill.record import Regression, RunRecord, VariantStatus

# timings and memory vary with machine load: they are reported, never flagged
_UNSTABLE = ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_gb")


def noise(a: MetricValue, b: MetricValue) -> float:
    """The combined standard error of two measurements (0 when neither has one, e.g. sizes)."""
    return math.sqrt(sum(e * e for e in (a.stderr, b.stderr) if e is not None))


def measured_loss(metric: str, reference: MetricValue, value: MetricValue) -> float | None:
    """How far ``value`` moved from ``reference`` in ``metric``'s bad direction, when that is more
    than their combined stderr (any amount counts when neither has a stderr); None when it did not
    lose beyond noise, and for metrics without a known direction."""
    direction = metric_direction(metric)
    if direction is None:
        return None
    change = value.value - reference.value
    worse = change < 0 if direction == "higher" else change > 0
    return change if worse and abs(change) > noise(reference, value) else None


def find_regressions(before: RunRecord, after: RunRecord) -> list[Regression]:
    """Variants of ``after`` that got worse than in ``before``.

    A metric regresses when it moved in its bad direction by more than its
    combined standard error (by any amount when neither run has a stderr, for
    exact quantities such as size); a verdict regresses when passed became failed or inconclusive.
    """
    found: list[Regression] = []
    for variant, entry in after.variants.items():
        old = before.variants.get(variant)
        if old is None:
            continue
        if old.status == VariantStatus.PASSED and entry.status in (VariantStatus.FAILED, VariantStatus.INCONCLUSIVE):
            why = entry.error or (entry.verdict.describe_unmet() if entry.verdict else "") or "a gate failed"
            found.append(
                Regression(variant=variant, what="verdict", before="passed", after=entry.status.value, why=why)
            )
        if entry.evaluation is None or old.evaluation is None:
            continue
        old_metrics = old.evaluation.metrics
        for metric, value in entry.evaluation.metrics.items():
            if metric not in old_metrics or metric in _UNSTABLE:
                continue
            previous = old_metrics[metric]
            change = measured_loss(metric, previous, value)
            if change is not None:
                found.append(
                    Regression(
                        variant=variant,
                        what=metric,
                        before=previous.value,
                        after=value.value,
                        why=f"changed by {change:+.4g}, beyond its stderr {noise(previous, value):.4g}",
                    )
                )
    return found
