"""Pass/fail verdicts: a variant's measured metrics against the recipe's rules and the baseline.

A verdict carries, for every rule, the measured value, the baseline value, the
threshold and the outcome, so reports and model cards can say *why*. A variant
whose evaluation failed, or that lacks a measurement a required rule needs, is
``failed``: it never passes by default.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.recipe.schema import GateRule

Status = Literal["passed", "failed"]


@dataclass(frozen=True)
class RuleOutcome:
    """One rule applied to one variant.

    Attributes:
        metric, rule, threshold, level: the rule.
        observed: the variant's value (None when not measured).
        baseline: the baseline's value, for relative rules.
        compared: what was compared to the threshold (e.g. the recovery ratio).
        passed: whether the rule holds.
        note: why, when it is not a plain comparison (not measured, within noise …).
    """

    metric: str
    rule: str
    threshold: float
    level: str
    observed: float | None
    baseline: float | None
    compared: float | None
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Verdict:
    variant: str
    status: Status
    outcomes: tuple[RuleOutcome, ...]
    error: str | None = None

    @property
    def failed_rules(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if not o.passed and o.level == "required"]

    @property
    def warnings(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if not o.passed and o.level == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "status": self.status,
            "error": self.error,
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            data["variant"], data["status"], tuple(RuleOutcome(**o) for o in data["outcomes"]), data.get("error")
        )


def _compare(rule: str, observed: float, baseline: float | None) -> float:
    """The quantity the rule's threshold applies to."""
    if rule in ("min", "max"):
        return observed
    assert baseline is not None
    if rule == "max_drop":
        return baseline - observed
    if rule == "max_increase":
        return observed - baseline
    if baseline == 0:
        return math.inf if observed != baseline else 0.0
    if rule == "max_drop_pct":
        return (baseline - observed) / abs(baseline) * 100
    if rule == "max_increase_pct":
        return (observed - baseline) / abs(baseline) * 100
    return observed / baseline  # min_recovery


def _holds(rule: str, compared: float, threshold: float) -> bool:
    return compared >= threshold if rule in ("min", "min_recovery") else compared <= threshold


def apply_rule(gate: GateRule, variant: MetricValue | None, baseline: MetricValue | None) -> RuleOutcome:
    """Apply one rule. Relative rules need the baseline value."""
    relative = gate.rule not in ("min", "max")

    def outcome(passed: bool, compared: float | None = None, note: str = "") -> RuleOutcome:
        return RuleOutcome(
            gate.metric,
            gate.rule,
            gate.threshold,
            gate.level,
            variant.value if variant else None,
            baseline.value if baseline else None,
            compared,
            passed,
            note,
        )

    if variant is None or not math.isfinite(variant.value):
        return outcome(False, note="not measured")
    if relative and (baseline is None or not math.isfinite(baseline.value)):
        return outcome(False, note="baseline not measured")
    compared = _compare(gate.rule, variant.value, baseline.value if baseline else None)
    if _holds(gate.rule, compared, gate.threshold):
        return outcome(True, compared)
    if relative and gate.significance and variant.stderr is not None and baseline and baseline.stderr is not None:
        noise = gate.significance * math.hypot(variant.stderr, baseline.stderr)
        change = abs(variant.value - baseline.value)
        if change <= noise:
            return outcome(
                True, compared, f"within noise: |change| {change:.4g} <= {gate.significance:g}·stderr {noise:.4g}"
            )
    return outcome(False, compared)


def check_gates(
    variant_id: str,
    gates: tuple[GateRule, ...] | list[GateRule],
    result: EvaluationResult | None,
    baseline: EvaluationResult | None,
    error: str | None = None,
) -> Verdict:
    """The verdict for one variant.

    Args:
        variant_id: the variant.
        gates: the rules that apply to it.
        result: its evaluation (None when evaluation did not run).
        baseline: the baseline's evaluation.
        error: why quantization or evaluation failed, if it did.
    """
    if error is not None or result is None:
        return Verdict(variant_id, "failed", (), error or "not evaluated")
    outcomes = tuple(
        apply_rule(gate, result.metrics.get(gate.metric), baseline.metrics.get(gate.metric) if baseline else None)
        for gate in gates
    )
    failed = any(not o.passed and o.level == "required" for o in outcomes)
    return Verdict(variant_id, "failed" if failed else "passed", outcomes)
