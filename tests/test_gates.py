"""Gate rules: comparisons, directions, significance, and failure when nothing was measured."""

from __future__ import annotations

import pytest

from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.gates import Verdict, apply_rule, check_gates
from quantmill.recipe.schema import GateRule

pytestmark = pytest.mark.fast


def rule(**kwargs) -> GateRule:
    return GateRule(metric=kwargs.pop("metric", "t/acc"), **kwargs)


@pytest.mark.parametrize(
    ("gate", "observed", "baseline", "passed", "compared"),
    [
        (rule(min=0.5), 0.6, None, True, 0.6),
        (rule(min=0.5), 0.4, None, False, 0.4),
        (rule(max=5, metric="size_gb"), 4.0, None, True, 4.0),
        (rule(max_drop=0.02), 0.79, 0.80, True, pytest.approx(0.01)),
        (rule(max_drop=0.02), 0.70, 0.80, False, pytest.approx(0.10)),
        (rule(max_drop_pct=5), 0.77, 0.80, True, pytest.approx(3.75)),
        (rule(min_recovery=0.97), 0.78, 0.80, True, pytest.approx(0.975)),
        (rule(min_recovery=0.97), 0.60, 0.80, False, pytest.approx(0.75)),
        (rule(max_increase=1.0, metric="ppl"), 10.5, 10.0, True, pytest.approx(0.5)),
        (rule(max_increase_pct=5, metric="ppl"), 11.0, 10.0, False, pytest.approx(10.0)),
    ],
)
def test_rules(gate, observed, baseline, passed, compared):
    outcome = apply_rule(gate, MetricValue(observed), MetricValue(baseline) if baseline is not None else None)
    assert outcome.passed is passed
    assert outcome.compared == compared
    assert outcome.observed == observed and outcome.baseline == baseline and outcome.threshold == gate.threshold


def test_significance_forgives_a_drop_within_noise_only():
    gate = rule(min_recovery=0.99, significance=2)
    noisy = apply_rule(gate, MetricValue(0.78, 0.02), MetricValue(0.80, 0.02))
    assert noisy.passed and "within noise" in noisy.note
    real = apply_rule(gate, MetricValue(0.60, 0.02), MetricValue(0.80, 0.02))
    assert not real.passed
    no_stderr = apply_rule(gate, MetricValue(0.78), MetricValue(0.80))
    assert not no_stderr.passed


def test_missing_measurements_fail():
    assert not apply_rule(rule(min=0.1), None, None).passed
    assert apply_rule(rule(min_recovery=0.9), MetricValue(0.5), None).note == "baseline not measured"
    assert not apply_rule(rule(min=0.1), MetricValue(float("nan")), None).passed


def test_verdicts():
    gates = [rule(min_recovery=0.97), rule(metric="size_mb", max=1, level="warn")]
    baseline = EvaluationResult({"t/acc": MetricValue(0.9)})
    good = check_gates("v", gates, EvaluationResult({"t/acc": MetricValue(0.9), "size_mb": MetricValue(2)}), baseline)
    assert good.status == "passed" and [o.metric for o in good.warnings] == ["size_mb"]
    bad = check_gates("v", gates, EvaluationResult({"t/acc": MetricValue(0.5), "size_mb": MetricValue(0.5)}), baseline)
    assert bad.status == "failed" and [o.metric for o in bad.failed_rules] == ["t/acc"]
    crashed = check_gates("v", gates, None, baseline, error="QuantizationError: boom")
    assert crashed.status == "failed" and crashed.error == "QuantizationError: boom"
    assert Verdict.from_dict(bad.to_dict()) == bad
