"""A run's outcome (quantmill.outcome), and the exit code and flow state derived from it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from quantmill.errors import GateFailedError, PublishError, RegressionError
from quantmill.outcome import Outcome, headline, run_outcome
from quantmill.record import PublishOutcome, PublishStatus, RunRecord, VariantStatus
from quantmill.runstore import Run

pytestmark = pytest.mark.fast

V1_FIXTURE = Path(__file__).parent / "data" / "results-v1.json"


def record_with(tmp_path: Path, *, publish_failed: bool, failed: bool, regressions: bool) -> RunRecord:
    """The version-1 fixture (every kind of trouble) with the chosen troubles left in."""
    shutil.copy(V1_FIXTURE, tmp_path / "results.json")
    record = Run(tmp_path).read_record()
    if not publish_failed:
        record.variants["rtn-w8-g128"].publish = PublishOutcome(status=PublishStatus.UNCHANGED)
    if not failed:
        for entry in record.variants.values():
            entry.status = VariantStatus.PASSED
    if not regressions:
        record.regressions = []
    return record


@pytest.mark.parametrize(
    ("publish_failed", "failed", "regressions", "outcome", "error", "exit_code"),
    [
        (True, True, True, Outcome.PUBLISH_FAILED, PublishError, 4),
        (False, True, True, Outcome.GATE_FAILED, GateFailedError, 3),
        (True, False, True, Outcome.PUBLISH_FAILED, PublishError, 4),
        (False, False, True, Outcome.REGRESSED, RegressionError, 5),
        (False, False, False, Outcome.PASSED, None, 0),
    ],
)
def test_the_worst_trouble_decides_the_outcome_and_exit_code(
    tmp_path, publish_failed, failed, regressions, outcome, error, exit_code
):
    from quantmill.cli import raise_unless_all_passed

    record = record_with(tmp_path, publish_failed=publish_failed, failed=failed, regressions=regressions)
    found = run_outcome(record)
    assert found.kind == outcome and found.exit_code == exit_code
    assert found.failed == (exit_code in (3, 4))
    if error is None:
        raise_unless_all_passed(record)  # nothing raised: exit 0
        return
    with pytest.raises(error) as raised:
        raise_unless_all_passed(record)
    assert raised.value.exit_code == exit_code and str(raised.value) == found.summary


def test_a_search_is_judged_by_its_winner_not_by_the_candidates_that_lost(tmp_path):
    from quantmill.search.trace import CandidateTrace, SearchTrace

    record = record_with(tmp_path, publish_failed=False, failed=True, regressions=False)
    record.variants["bnb-int8"].status = VariantStatus.PASSED  # the winner; gguf-q8_0 lost (pending)

    def trace(winner: str | None) -> SearchTrace:
        candidate = CandidateTrace(id="bnb-int8", method="bnb", setting="int8", outcome="winner", reason="smallest")
        summary = "bnb-int8 wins" if winner else "no candidate meets every constraint"
        return SearchTrace(
            objective="minimize size_mb", constraints=[], budget=2, full_evaluations=1,
            candidates=[candidate], winner=winner, summary=summary,
        )  # fmt: skip

    record.search = trace("bnb-int8")
    assert run_outcome(record).kind == Outcome.PASSED and run_outcome(record).exit_code == 0
    record.search = trace(None)
    found = run_outcome(record)
    assert found.exit_code == 3
    assert found.summary == "the search found no variant: no candidate meets every constraint"


def test_the_summary_names_the_variants(tmp_path):
    record = record_with(tmp_path, publish_failed=False, failed=True, regressions=True)
    assert run_outcome(record).summary == "2 variant(s) did not pass: bnb-int8 (failed), gguf-q8_0 (pending)"
    record.variants["rtn-w8-g128"].status = VariantStatus.INCONCLUSIVE
    assert "rtn-w8-g128 (inconclusive)" in run_outcome(record).summary  # inconclusive is not a pass
    regressed = record_with(tmp_path, publish_failed=False, failed=False, regressions=True)
    assert run_outcome(regressed).summary == (
        "1 regression(s) since the previous run: rtn-w4-g128 tiny_world_mc/acc 0.95 → 0.9"
    )
    assert run_outcome(record_with(tmp_path, publish_failed=False, failed=False, regressions=False)).summary == (
        "4 passed"
    )


def test_headline_numbers(tmp_path):
    numbers = headline(record_with(tmp_path, publish_failed=True, failed=True, regressions=True))
    assert numbers.quality_metric == "tiny_world_mc/acc" and numbers.baseline_quality == 0.925
    best = numbers.best()
    assert best is not None and best.variant == "rtn-w8-g128"  # 0.92 / 0.925 beats 0.9 / 0.925
    assert best.describe(numbers.quality_metric) == (
        "rtn-w8-g128 passed: tiny_world_mc/acc 0.92 (recovery 0.995) — publish failed: "
        "PublishError: the license of m is unknown: set publish.license in the recipe"
    )


@pytest.mark.parametrize(
    ("publish_failed", "failed", "regressions", "state_type", "state_name"),
    [
        (True, False, False, "FAILED", "Failed"),
        (False, True, False, "FAILED", "Failed"),
        (False, False, True, "COMPLETED", "Regressed"),
        (False, False, False, "COMPLETED", "Completed"),
    ],
)
def test_the_flow_run_ends_in_the_state_its_outcome_calls_for(
    tmp_path, publish_failed, failed, regressions, state_type, state_name
):
    from quantmill.flows.recipe import _final_state, record_of

    record = record_with(tmp_path, publish_failed=publish_failed, failed=failed, regressions=regressions)
    state = _final_state(SimpleNamespace(record=record, path=tmp_path, logger=logging.getLogger("test")))
    assert (state.type.name, state.name) == (state_type, state_name)
    assert state.message == run_outcome(record).summary
    assert record_of(state) == record.to_json() | {"run_path": str(tmp_path)}  # callers get the record back
