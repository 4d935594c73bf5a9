"""Gate rules: comparisons, directions, noise, inconclusive evaluations, refused baselines, and
failure when nothing was measured. The properties check the rules against an oracle written here."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from quantmill.errors import GateFailedError
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.gates import Verdict, apply_rule, check_gates
from quantmill.recipe.schema import GateRule
from quantmill.record import RunRecord, VariantRecord, VariantStatus

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
        (rule(max_drop=0.1), -1.05, -1.0, True, pytest.approx(0.05)),  # absolute rules hold for any baseline
        (rule(max_increase=0.1, metric="ppl"), 0.2, 0.0, False, pytest.approx(0.2)),
    ],
)
def test_rules(gate, observed, baseline, passed, compared):
    outcome = apply_rule(gate, MetricValue(observed), MetricValue(baseline) if baseline is not None else None)
    assert outcome.passed is passed and not outcome.inconclusive
    assert outcome.compared == compared
    assert outcome.observed == observed and outcome.baseline == baseline and outcome.threshold == gate.threshold


def test_the_issue_example_a_large_drop_never_passes_on_noise():
    """0.80 → 0.55 with min_recovery 0.97, significance 2 used to pass on a small evaluation (|change| <= 2·stderr)."""
    gate = rule(min_recovery=0.97, significance=2)

    def stderr(p: float, n: int) -> float:  # a binomial accuracy's stderr, as lm-eval reports it
        return math.sqrt(p * (1 - p) / (n - 1))

    for limit in (10, 20, 40):  # 2·stderr is wider than the 0.024 between baseline and 0.776
        small = apply_rule(gate, MetricValue(0.55, stderr(0.55, limit)), MetricValue(0.80, stderr(0.80, limit)))
        assert not small.passed, limit
        assert small.inconclusive or "misses the threshold value" in small.note, (limit, small)
    assert apply_rule(gate, MetricValue(0.55, stderr(0.55, 20)), MetricValue(0.80, stderr(0.80, 20))).inconclusive
    large = apply_rule(gate, MetricValue(0.55, stderr(0.55, 5000)), MetricValue(0.80, stderr(0.80, 5000)))
    assert not large.passed and not large.inconclusive


def test_noise_excuses_only_a_miss_within_the_band_of_the_threshold_value():
    gate = rule(min_recovery=0.90, significance=2)  # threshold value 0.72; band 2·hypot(.01, .01) = 0.028 < 0.08
    within = apply_rule(gate, MetricValue(0.70, 0.01), MetricValue(0.80, 0.01))
    assert within.passed and "within noise" in within.note
    beyond = apply_rule(gate, MetricValue(0.69, 0.01), MetricValue(0.80, 0.01))
    assert not beyond.passed and not beyond.inconclusive
    no_stderr = apply_rule(gate, MetricValue(0.70), MetricValue(0.80))
    assert not no_stderr.passed and not no_stderr.inconclusive


def test_a_too_small_evaluation_cannot_excuse_a_miss():
    gate = rule(min_recovery=0.99, significance=2)  # threshold value 0.792, 0.008 from the baseline; band 0.057
    unsure = apply_rule(gate, MetricValue(0.78, 0.02), MetricValue(0.80, 0.02))
    assert unsure.inconclusive and not unsure.passed and unsure.note.startswith("inconclusive:")
    assert apply_rule(gate, MetricValue(0.80, 0.02), MetricValue(0.80, 0.02)).passed  # meets it: nothing to excuse
    clear_miss = apply_rule(gate, MetricValue(0.70, 0.02), MetricValue(0.80, 0.02))
    assert not clear_miss.passed and not clear_miss.inconclusive


@pytest.mark.parametrize("gate", [rule(min_recovery=0.9), rule(max_drop_pct=5), rule(max_increase_pct=5, metric="ppl")])
@pytest.mark.parametrize("baseline", [0.0, -0.5])
def test_ratio_rules_refuse_a_zero_or_negative_baseline(gate, baseline):
    for observed in (baseline, -1.0, 0.0, 2.0):
        outcome = apply_rule(gate, MetricValue(observed, 0.1), MetricValue(baseline, 0.1))
        assert not outcome.passed and not outcome.inconclusive and outcome.note.startswith("refused:"), outcome
        assert "positive baseline" in outcome.note and outcome.compared is None


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


def test_inconclusive_verdicts_lose_to_failures_and_survive_the_record():
    unsure = rule(min_recovery=0.99, significance=2)
    sure = rule(metric="ppl", max_increase_pct=5)
    baseline = EvaluationResult({"t/acc": MetricValue(0.80, 0.02), "ppl": MetricValue(10.0)})
    measured = EvaluationResult({"t/acc": MetricValue(0.78, 0.02), "ppl": MetricValue(10.0)})
    undecided = check_gates("v", [unsure, sure], measured, baseline)
    assert undecided.status == "inconclusive" and undecided.failed_rules == []
    assert [o.metric for o in undecided.inconclusive_rules] == ["t/acc"]
    assert undecided.describe_unmet() == "t/acc min_recovery 0.99 (inconclusive)"
    worse = EvaluationResult({"t/acc": MetricValue(0.78, 0.02), "ppl": MetricValue(12.0)})
    assert check_gates("v", [unsure, sure], worse, baseline).status == "failed"
    warned = check_gates("v", [unsure.model_copy(update={"level": "warn"})], worse, baseline)
    assert warned.status == "passed" and warned.warnings[0].inconclusive

    record = RunRecord(
        recipe="r",
        recipe_path="/r.yaml",
        recipe_sha256="x",
        run_id="run",
        quantmill_version="t",
        variants={"v": VariantRecord(method="rtn", status=undecided.status, verdict=undecided)},
    )
    back = RunRecord.model_validate_json(record.model_dump_json())
    assert back.variants["v"].status is VariantStatus.INCONCLUSIVE and back.variants["v"].verdict == undecided
    from quantmill.cli import raise_unless_all_passed

    with pytest.raises(GateFailedError, match=r"v \(inconclusive\)") as caught:  # never "ok": exit 3
        raise_unless_all_passed(back)
    assert caught.value.exit_code == 3


# -- properties, against an oracle written independently of quantmill.gates ---------------------------

RELATIVE = {  # rule → (threshold strategy, value that just meets it, higher is better)
    "max_drop": (st.floats(0, 1), lambda b, t: b - t, True),
    "max_drop_pct": (st.floats(0, 60), lambda b, t: b - b * t / 100, True),
    "min_recovery": (st.floats(0.5, 1.1), lambda b, t: b * t, True),
    "max_increase": (st.floats(0, 1), lambda b, t: b + t, False),
    "max_increase_pct": (st.floats(0, 60), lambda b, t: b + b * t / 100, False),
}
RATIO = ("max_drop_pct", "min_recovery", "max_increase_pct")
RANK = {"failed": 0, "inconclusive": 1, "passed": 2}
values = st.floats(-3, 3, allow_nan=False)
stderrs = st.one_of(st.none(), st.floats(0, 0.5))


@st.composite
def cases(draw, positive_baseline: bool = True, noisy: bool = False):
    """(rule, baseline, variant stderr, baseline stderr); ``noisy``: always with significance and stderrs."""
    name = draw(st.sampled_from(sorted(RELATIVE)))
    thresholds, _, _ = RELATIVE[name]
    significance = draw(st.floats(0.5, 4) if noisy else st.one_of(st.none(), st.floats(0.5, 4)))
    gate = GateRule(metric="m", significance=significance, **{name: draw(thresholds)})
    baseline = draw(st.floats(0.05, 3) if positive_baseline and name in RATIO else values)
    errors = st.floats(0, 0.2) if noisy else stderrs
    return gate, baseline, draw(errors), draw(errors)


def oracle(gate: GateRule, baseline: float, observed: float, se_v, se_b):
    """(margin: how far the observed value is better than just meeting the rule, noise band or None, resolution)."""
    _, meets_at, higher = RELATIVE[gate.rule]
    at = meets_at(baseline, gate.threshold)
    margin = (observed - at) if higher else (at - observed)
    band = gate.significance * math.hypot(se_v, se_b) if gate.significance and None not in (se_v, se_b) else None
    return margin, band, abs(baseline - at)


def judge(gate, baseline, observed, se_v, se_b):
    return apply_rule(gate, MetricValue(observed, se_v), MetricValue(baseline, se_b))


def at_bands(gate, baseline, se_v, se_b, bands: float) -> float:
    """The observed value ``bands`` noise bands better (negative: worse) than the value that just meets the rule."""
    _, meets_at, higher = RELATIVE[gate.rule]
    _, band, _ = oracle(gate, baseline, 0.0, se_v, se_b)
    return meets_at(baseline, gate.threshold) + (bands if higher else -bands) * band


@given(st.one_of(cases(), cases(noisy=True)), values)
def test_property_no_pass_beyond_the_band(case, observed):
    gate, baseline, se_v, se_b = case
    margin, band, _ = oracle(gate, baseline, observed, se_v, se_b)
    outcome = judge(gate, baseline, observed, se_v, se_b)
    if outcome.passed:
        assert margin >= -(band or 0) - 1e-9, (outcome, margin, band)


@given(cases(noisy=True), st.floats(1.001, 10))
def test_property_a_miss_beyond_the_band_fails(case, bands):
    gate, baseline, se_v, se_b = case
    assume(oracle(gate, baseline, 0.0, se_v, se_b)[1] > 1e-6)
    outcome = judge(gate, baseline, at_bands(gate, baseline, se_v, se_b, -bands), se_v, se_b)
    assert not outcome.passed and not outcome.inconclusive, outcome


@given(cases(noisy=True), st.floats(0.001, 0.999))
def test_property_a_miss_within_the_band_passes_or_is_inconclusive_by_the_rule_width(case, bands):
    gate, baseline, se_v, se_b = case
    _, band, resolution = oracle(gate, baseline, 0.0, se_v, se_b)
    assume(band > 1e-6 and abs(band - resolution) > 1e-9)
    outcome = judge(gate, baseline, at_bands(gate, baseline, se_v, se_b, -bands), se_v, se_b)
    assert outcome.result == ("inconclusive" if band > resolution else "passed"), outcome


@given(cases(noisy=True), st.floats(0.001, 10))
def test_property_significance_never_fails_a_value_that_meets_the_rule(case, bands):
    gate, baseline, se_v, se_b = case
    assume(oracle(gate, baseline, 0.0, se_v, se_b)[1] > 1e-6)
    assert judge(gate, baseline, at_bands(gate, baseline, se_v, se_b, bands), se_v, se_b).passed


@given(cases(), values)
def test_property_without_stderr_a_plain_comparison(case, observed):
    gate, baseline, se_v, se_b = case
    margin, band, _ = oracle(gate, baseline, observed, se_v, se_b)
    assume(band is None and abs(margin) > 1e-9)
    outcome = judge(gate, baseline, observed, se_v, se_b)
    assert outcome.passed is (margin > 0) and not outcome.inconclusive and outcome.note == ""


@given(st.one_of(cases(), cases(noisy=True)), values, values)
def test_property_a_better_value_never_judges_worse(case, one, other):
    gate, baseline, se_v, se_b = case
    worse, better = sorted((one, other)) if RELATIVE[gate.rule][2] else sorted((one, other), reverse=True)
    before = judge(gate, baseline, worse, se_v, se_b).result
    after = judge(gate, baseline, better, se_v, se_b).result
    assert RANK[after] >= RANK[before], (before, after)


@given(st.one_of(cases(), cases(noisy=True)), values)
def test_property_inconclusive_iff_a_miss_within_a_band_wider_than_the_rule(case, observed):
    gate, baseline, se_v, se_b = case
    margin, band, resolution = oracle(gate, baseline, observed, se_v, se_b)
    outcome = judge(gate, baseline, observed, se_v, se_b)
    if outcome.inconclusive:
        assert band is not None and band > resolution - 1e-9 and -band - 1e-9 <= margin <= 1e-9
        assert not outcome.passed
    if band is not None:
        assume(abs(band - resolution) > 1e-9 and abs(margin + band) > 1e-9 and abs(margin) > 1e-9)
        assert outcome.inconclusive is (band > resolution and -band < margin < 0), (outcome, margin, band)
    else:
        assert not outcome.inconclusive


@given(cases(positive_baseline=False), values)
def test_property_zero_or_negative_baselines_never_pass_ratio_rules(case, observed):
    gate, baseline, se_v, se_b = case
    assume(gate.rule in RATIO and baseline <= 0)
    outcome = judge(gate, baseline, observed, se_v, se_b)
    assert not outcome.passed and not outcome.inconclusive and outcome.note.startswith("refused:")
