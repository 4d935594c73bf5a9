"""Every variant's card says when to prefer each sibling of the same run, from their measured numbers."""

from __future__ import annotations

import pytest

from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.publish.publish_run import prefer_when
from quantmill.record import BaselineRecord, RunRecord, VariantRecord


def measured(**metrics: float) -> EvaluationResult:
    return EvaluationResult({k.replace("__", "/"): MetricValue(v) for k, v in metrics.items()})


@pytest.fixture
def record(tmp_path):
    def variant(**metrics):
        return VariantRecord(method="m", status="passed", evaluation=measured(**metrics))

    return RunRecord(
        recipe="r",
        recipe_path=tmp_path / "r.yaml",
        recipe_sha256="0" * 64,
        run_id="run",
        quantmill_version="test",
        baseline=BaselineRecord(evaluation=measured(t__acc=0.9, size_mb=8)),
        variants={
            "int8": variant(t__acc=0.89, size_mb=2, decode_tok_s=50),
            "int4": variant(t__acc=0.85, size_mb=1, decode_tok_s=40),
            "fp8": variant(t__acc=0.88, size_mb=2, decode_tok_s=90),
        },
    )


@pytest.mark.fast
def test_each_sibling_is_preferred_for_what_it_measured_better(record):
    assert prefer_when(record, "int8", "int4") == "prefer it for less memory (1 MB against 2)"
    assert prefer_when(record, "int8", "fp8") == "prefer it for lower latency (90 decode tokens/s against 50)"
    assert prefer_when(record, "int4", "int8") == (
        "prefer it for lower latency (50 decode tokens/s against 40), more accuracy (t/acc 0.89 against 0.85)"
    )
    assert prefer_when(record, "fp8", "int8") == "prefer it for more accuracy (t/acc 0.89 against 0.88)"


@pytest.mark.fast
def test_perplexity_as_the_quality_metric_prefers_the_lower(record):
    record.baseline.evaluation = measured(ppl=10)
    record.variants["int8"].evaluation = measured(ppl=11, size_mb=2)
    record.variants["int4"].evaluation = measured(ppl=14, size_mb=1)
    assert prefer_when(record, "int4", "int8") == "prefer it for more accuracy (ppl 11 against 14)"
    assert prefer_when(record, "int8", "int4") == "prefer it for less memory (1 MB against 2)"
