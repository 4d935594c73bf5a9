"""Pass/fail verdicts: a variant's measured metrics against the recipe's rules and the baseline.

A verdict carries, for every rule, the measured value, the baseline value, the
threshold and the outcome, so reports and model cards can say *why*. A variant
whose evaluation failed, or that lacks a measurement a required rule needs, is
``failed``: it never passes by default.

Noise (``significance: k`` on a relative rule, when both values have a stderr):
the noise band is k times the combined stderr, and the *threshold value* is the
observed value that would just meet the rule (``baseline × 0.97`` for
``min_recovery: 0.97``).

* A value that meets the rule passes, as without ``significance`` (noise only
  ever excuses; it never makes a gate stricter).
* A miss by more than the band fails.
* A miss within the band is excused (passed, "within noise") when the
  evaluation resolves the rule: the band is no wider than the distance between
  the baseline and the threshold value. When the band is wider, the evaluation
  is too small to tell a variant as good as the baseline from one below the
  threshold, and the rule is ``inconclusive``; an inconclusive variant is never
  published.

Ratio and percentage rules (``min_recovery``, ``max_drop_pct``,
``max_increase_pct``) need a positive baseline: of 0 they mean nothing, and of a
negative value they invert (a worse variant has a *higher* recovery). Such a
rule is refused: it fails, with the reason in its note. The absolute rules
(``max_drop``, ``max_increase``) measure a difference and hold for any baseline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.recipe.schema import GateRule

Status = Literal["passed", "failed", "inconclusive"]

#: rules whose threshold is a ratio or a percentage of the baseline
RATIO_RULES = ("min_recovery", "max_drop_pct", "max_increase_pct")
#: rules met by a value at or above the threshold value (the others: at or below)
HIGHER_IS_BETTER_RULES = ("min", "max_drop", "max_drop_pct", "min_recovery")


@dataclass(frozen=True)
class RuleOutcome:
    """One rule applied to one variant.

    Attributes:
        metric, rule, threshold, level: the rule.
        observed: the variant's value (None when not measured).
        baseline: the baseline's value, for relative rules.
        compared: what was compared to the threshold (e.g. the recovery ratio).
        passed: whether the rule holds (False when inconclusive).
        note: why, when it is not a plain comparison (not measured, within noise, refused …).
        inconclusive: the evaluation was too small to tell whether the rule holds.
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
    inconclusive: bool = False

    @property
    def result(self) -> Status:
        return "passed" if self.passed else "inconclusive" if self.inconclusive else "failed"


@dataclass(frozen=True)
class Verdict:
    variant: str
    status: Status
    outcomes: tuple[RuleOutcome, ...]
    error: str | None = None

    @property
    def failed_rules(self) -> list[RuleOutcome]:
        """Required rules that failed (inconclusive ones aside)."""
        return [o for o in self.outcomes if o.result == "failed" and o.level == "required"]

    @property
    def inconclusive_rules(self) -> list[RuleOutcome]:
        """Required rules the evaluation was too small to decide."""
        return [o for o in self.outcomes if o.inconclusive and o.level == "required"]

    def describe_unmet(self) -> str:
        """The required rules that did not pass, in words (``t/acc min_recovery 0.97 (inconclusive)``)."""
        return "; ".join(
            f"{o.metric} {o.rule} {o.threshold:g}" + (" (inconclusive)" if o.inconclusive else "")
            for o in self.failed_rules + self.inconclusive_rules
        )

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
    """The quantity the rule's threshold applies to (ratio rules: only for a positive baseline)."""
    if rule in ("min", "max"):
        return observed
    assert baseline is not None
    if rule == "max_drop":
        return baseline - observed
    if rule == "max_increase":
        return observed - baseline
    if rule == "max_drop_pct":
        return (baseline - observed) / baseline * 100
    if rule == "max_increase_pct":
        return (observed - baseline) / baseline * 100
    return observed / baseline  # min_recovery


def _holds(rule: str, compared: float, threshold: float) -> bool:
    return compared >= threshold if rule in ("min", "min_recovery") else compared <= threshold


def threshold_value(rule: str, threshold: float, baseline: float | None) -> float:
    """The observed value that would just meet the rule."""
    if rule in ("min", "max"):
        return threshold
    assert baseline is not None
    return {
        "max_drop": baseline - threshold,
        "max_increase": baseline + threshold,
        "max_drop_pct": baseline * (1 - threshold / 100),
        "max_increase_pct": baseline * (1 + threshold / 100),
        "min_recovery": baseline * threshold,
    }[rule]


def _stderr(value: MetricValue) -> float | None:
    stderr = value.stderr
    return stderr if stderr is not None and math.isfinite(stderr) and stderr >= 0 else None


def apply_rule(gate: GateRule, variant: MetricValue | None, baseline: MetricValue | None) -> RuleOutcome:
    """Apply one rule (see the module docstring for noise and refused baselines).

    Relative rules need the baseline value.
    """
    relative = gate.rule not in ("min", "max")

    def outcome(passed: bool, compared: float | None = None, note: str = "", inconclusive: bool = False):
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
            inconclusive,
        )

    if variant is None or not math.isfinite(variant.value):
        return outcome(False, note="not measured")
    if relative and (baseline is None or not math.isfinite(baseline.value)):
        return outcome(False, note="baseline not measured")
    base = baseline.value if baseline else None
    if gate.rule in RATIO_RULES and base is not None and base <= 0:
        return outcome(
            False,
            note=f"refused: {gate.rule} needs a positive baseline, and the baseline is {base:.4g} "
            f"(a ratio of it {'means nothing' if base == 0 else 'is inverted'}); "
            f"use {'max_drop' if gate.rule in HIGHER_IS_BETTER_RULES else 'max_increase'} instead",
        )
    compared = _compare(gate.rule, variant.value, base)
    holds = _holds(gate.rule, compared, gate.threshold)
    variant_stderr = _stderr(variant)
    baseline_stderr = _stderr(baseline) if baseline else None
    if not (relative and gate.significance and variant_stderr is not None and baseline_stderr is not None):
        return outcome(holds, compared)
    assert base is not None
    band = gate.significance * math.hypot(variant_stderr, baseline_stderr)
    meets_at = threshold_value(gate.rule, gate.threshold, base)
    resolution = abs(base - meets_at)  # how far from the baseline the rule draws its line
    direction = 1 if gate.rule in HIGHER_IS_BETTER_RULES else -1
    margin = (variant.value - meets_at) * direction  # > 0: better than just meeting the rule
    noise = f"{gate.significance:g}·stderr {band:.4g}"
    if holds:  # a value that meets the rule needs no excuse: significance never makes a gate stricter
        return outcome(True, compared)
    if margin < -band:
        return outcome(False, compared, f"misses the threshold value {meets_at:.4g} by more than {noise}")
    if band > resolution:
        return outcome(
            False,
            compared,
            f"inconclusive: {-margin:.4g} short of {meets_at:.4g}, within {noise}, but {noise} exceeds the "
            f"distance {resolution:.4g} between the baseline and {meets_at:.4g}; evaluate on more examples",
            inconclusive=True,
        )
    return outcome(True, compared, f"within noise: {-margin:.4g} short of {meets_at:.4g}, within {noise}")


def check_gates(
    variant_id: str,
    gates: tuple[GateRule, ...] | list[GateRule],
    result: EvaluationResult | None,
    baseline: EvaluationResult | None,
    error: str | None = None,
) -> Verdict:
    """The verdict for one variant: failed when a required rule failed, else inconclusive
    when one was inconclusive, else passed.

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
    required = {o.result for o in outcomes if o.level == "required"}
    status: Status = "failed" if "failed" in required else "inconclusive" if "inconclusive" in required else "passed"
    return Verdict(variant_id, status, outcomes)
