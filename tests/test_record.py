"""The typed run record: round trips, the version-1 reader, refusing unknown versions, status enums."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from quantmill.errors import RunStoreError
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.gates import RuleOutcome, Verdict
from quantmill.record import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    PublishStatus,
    RunRecord,
    RunStatus,
    VariantRecord,
    VariantStatus,
    parse_record,
)
from quantmill.runstore import Run

pytestmark = pytest.mark.fast

V1_FIXTURE = Path(__file__).parent / "data" / "results-v1.json"


def a_record() -> RunRecord:
    outcome = RuleOutcome("t/acc", "min_recovery", 0.9, "required", 0.5, 0.0, math.inf, True)
    return RunRecord(
        recipe="r",
        recipe_path=Path("/recipes/r.yaml"),
        recipe_sha256="abc",
        run_id="20261127T083000Z-1a2b3c",
        quantmill_version="1.0",
        status=RunStatus.COMPLETED,
        variants={
            "rtn-w4": VariantRecord(
                method="rtn",
                status=VariantStatus.PASSED,
                artifact=Path("/runs/r/artifacts/rtn-w4-0123"),
                evaluation=EvaluationResult({"t/acc": MetricValue(0.5, 0.02)}, {"seed": 1234}),
                verdict=Verdict("rtn-w4", "passed", (outcome,)),
            ),
            "gptq-w4": VariantRecord(method="gptq"),
        },
    )


def test_a_record_survives_results_json_unchanged(tmp_path):
    run = Run(tmp_path)
    record = a_record()
    run.write_record(record)
    assert json.loads(run.results_path.read_text())["schema_version"] == SCHEMA_VERSION == 2
    back = run.read_record()
    assert back == record
    assert back.variants["rtn-w4"].verdict.outcomes[0].compared == math.inf  # Infinity stays Infinity, not null
    assert isinstance(back.variants["rtn-w4"].evaluation, EvaluationResult)
    assert back.variants["gptq-w4"].status is VariantStatus.PENDING


def test_a_version_1_file_reads_as_the_typed_record(tmp_path):
    shutil.copy(V1_FIXTURE, tmp_path / "results.json")
    record = Run(tmp_path).read_record()
    assert record.schema_version == 2 and record.status is RunStatus.COMPLETED
    assert record.model is not None and record.model.revision == "sha256:0123abcd"
    passed = record.variants["rtn-w4-g128"]
    assert passed.status is VariantStatus.PASSED and passed.fully_cached
    assert passed.evaluation is not None and passed.evaluation.value("tiny_world_mc/acc") == 0.9
    assert passed.verdict is not None and passed.verdict.outcomes[1].compared == math.inf
    assert passed.publish is not None and passed.publish.status is PublishStatus.PUBLISHED
    unpublished = record.variants["rtn-w8-g128"].publish
    assert unpublished is not None and unpublished.status is PublishStatus.FAILED and "license" in unpublished.error
    assert record.variants["bnb-int8"].verdict.error.startswith("QuantizationError")
    assert record.variants["gguf-q8_0"].status is VariantStatus.PENDING and record.variants["gguf-q8_0"].cached is None
    assert record.baseline is not None and record.baseline_evaluation().value("ppl") == 2.31
    assert [r.what for r in record.regressions] == ["tiny_world_mc/acc"]
    Run(tmp_path).write_record(record)  # read as version 1, written as version 2, read back the same
    assert json.loads((tmp_path / "results.json").read_text())["schema_version"] == 2
    assert Run(tmp_path).read_record() == record


@pytest.mark.parametrize("version", [3, 0, None, "2", True])
def test_an_unknown_schema_version_is_refused_naming_the_file_and_the_readable_ones(tmp_path, version):
    data = a_record().to_json() | {"schema_version": version}
    if version is None:
        del data["schema_version"]
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunStoreError) as caught:
        Run(tmp_path).read_record()
    message = str(caught.value)
    assert str(tmp_path / "results.json") in message
    assert f"reads versions {', '.join(map(str, READABLE_VERSIONS))}" in message
    assert ("newer quantmill" in message) == (version == 3)


def test_a_record_that_does_not_match_its_version_is_a_clear_error(tmp_path):
    data = a_record().to_json()
    data["variants"]["rtn-w4"]["status"] = "passd"
    (tmp_path / "results.json").write_text(json.dumps(data))
    with pytest.raises(RunStoreError, match=r"not a valid version-2 run record: variants\.rtn-w4\.status"):
        Run(tmp_path).read_record()
    with pytest.raises(RunStoreError, match="not a run record"):
        parse_record([1, 2], "list.json")


def test_statuses_are_enums_that_read_and_write_as_their_words():
    assert [s.value for s in VariantStatus] == ["pending", "passed", "failed", "inconclusive"]
    assert [s.value for s in RunStatus] == ["planned", "running", "completed"]
    assert [s.value for s in PublishStatus] == ["published", "unchanged", "failed"]
    entry = VariantRecord.model_validate({"method": "rtn", "status": "failed"})
    assert entry.status is VariantStatus.FAILED and entry.model_dump(mode="json")["status"] == "failed"
    with pytest.raises(ValueError):
        VariantRecord.model_validate({"method": "rtn", "status": "warned"})
