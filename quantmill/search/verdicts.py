"""Between the run record and the strategy: what a fully evaluated variant tells the search, and the
record's account of a decided search (:func:`trace_of`)."""

from __future__ import annotations

from quantmill.gates import Verdict
from quantmill.metrics import BUILTIN_METRICS, metric_direction
from quantmill.record import VariantRecord, VariantStatus
from quantmill.search.strategy import FullMeasurement, Search, SearchResult
from quantmill.search.trace import CandidateTrace, SearchTrace

#: metric groups that measure what a variant costs, not its quality: the proxy does not predict them
COST_GROUPS = ("size", "speed", "memory")


def describe_failures(verdict: Verdict) -> str:
    """The required rules that did not hold, with their numbers: ``tiny_world_mc/acc min_recovery 0.99: 0.85
    (baseline 0.9, 0.944)``."""
    parts = []
    for o in verdict.failed_rules + verdict.inconclusive_rules:
        numbers = "not measured" if o.observed is None else f"{o.observed:.4g}"
        if o.baseline is not None and o.observed is not None:
            numbers += f" (baseline {o.baseline:.4g}" + (f", {o.compared:.4g})" if o.compared is not None else ")")
        parts.append(f"{o.metric} {o.rule} {o.threshold:g}: {numbers}" + (" inconclusive" if o.inconclusive else ""))
    return "; ".join(parts)


def quality_value(entry: VariantRecord, metric: str | None) -> float | None:
    """``metric``'s value in the variant's evaluation, oriented so that higher is better."""
    if metric is None or entry.evaluation is None or metric not in entry.evaluation.metrics:
        return None
    value = entry.evaluation.metrics[metric].value
    return -value if metric_direction(metric) == "lower" else value


def full_measurement(entry: VariantRecord, objective: str, quality_metric: str | None) -> FullMeasurement:
    """What the strategy needs of a fully evaluated variant's record."""
    metrics = entry.evaluation.metrics if entry.evaluation else {}
    verdict = entry.verdict
    failures = describe_failures(verdict) if verdict is not None else ""
    quality_failure = verdict is not None and any(
        o.metric not in BUILTIN_METRICS or BUILTIN_METRICS[o.metric].produced_by not in COST_GROUPS
        for o in verdict.failed_rules + verdict.inconclusive_rules
    )
    return FullMeasurement(
        objective=metrics[objective].value if objective in metrics else None,
        passed=entry.status == VariantStatus.PASSED,
        unmet=entry.error or failures,
        quality_failure=quality_failure and entry.error is None,
        quality=quality_value(entry, quality_metric),
    )


def trace_of(
    search: Search,
    result: SearchResult,
    variants: dict[str, tuple[str, str]],
    *,
    constraints: list[str],
    proxy: str | None,
    quality_metric: str | None,
) -> SearchTrace:
    """The record's account of a decided search; ``variants`` maps candidate ids to (method, setting)."""
    estimates = {c.id: c.estimated_mb for c in search.candidates}
    candidates = []
    for decision in result.decisions:
        name = decision.candidate
        screened, full = search.proxies.get(name), search.full.get(name)
        method, setting = variants[name]
        candidates.append(
            CandidateTrace(
                id=name,
                method=method,
                setting=setting,
                estimated_mb=estimates[name],
                proxy=screened.score if screened else None,
                size_mb=screened.size_mb if screened else None,
                objective=full.objective if full else None,
                quality=full.quality if full else None,
                outcome=decision.outcome.value,
                reason=decision.reason,
            )
        )
    return SearchTrace(
        objective=("minimize " if search.lower_is_better else "maximize ") + search.objective,
        constraints=constraints,
        budget=search.budget,
        proxy=proxy,
        quality_metric=quality_metric,
        full_evaluations=result.full_evaluations,
        candidates=candidates,
        winner=result.winner,
        exhaustive=result.exhaustive,
        frontier=list(result.frontier),
        summary=result.summary,
    )
