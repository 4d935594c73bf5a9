"""The pipeline core without Prefect or models: error precedence, slot policy, cache repair, recording a run."""

from __future__ import annotations

import json

import pytest

from quantmill.cacheentry import PLAIN_JSON_SERIALIZER
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.gates import check_gates
from quantmill.pipeline import cached_result, discard_unreadable_cache_entry, slot_policy, start_run
from quantmill.recipe import load_recipe
from quantmill.record import CachedSteps, PublishOutcome, PublishStatus, RunStatus, VariantStatus
from quantmill.runstore import RunStore
from tests.conftest import REPO

pytestmark = pytest.mark.fast


@pytest.fixture
def demo_run(tmp_path):
    def start():
        loaded = load_recipe(REPO / "recipes" / "demo.yaml")
        return start_run(loaded, only=["bnb-int8", "gguf-q8_0"], store=RunStore(tmp_path / "runs"))

    return start


def test_the_first_failed_step_wins_then_the_baseline(demo_run):
    run = demo_run()
    run.record_baseline(None, "OSError: disk full")
    assert (
        run.variant_error("QuantizationError: oom", "EvaluationError: nothing to evaluate") == "QuantizationError: oom"
    )
    assert run.variant_error(None, "EvaluationError: nan") == "EvaluationError: nan"
    assert run.variant_error(None, None) == "baseline failed: OSError: disk full"
    run.record_baseline(EvaluationResult(), None)
    assert run.variant_error(None, None) is None


def test_slot_policy_one_slot_for_the_run_none_when_cached_each_task_in_other_processes():
    from quantmill.devices import CPU, Placement
    from quantmill.pipeline import StepSlot

    on_gpu = Placement("cuda:1", (1,))
    run = slot_policy("gpu", tasks_in_this_process=True, all_cached=False)
    assert run.run == "gpu" and run.for_step(needs_gpu=True, run_placement=on_gpu) == StepSlot(None, on_gpu)
    cached = slot_policy("gpu", tasks_in_this_process=True, all_cached=True)
    assert cached.run is None  # a cached step's body never runs, so the slot it would take costs nothing
    workers = slot_policy("cpu-heavy", tasks_in_this_process=False, all_cached=False)
    assert workers.run is None and workers.for_step(needs_gpu=True, run_placement=None) == StepSlot("cpu-heavy")
    assert run.for_step(needs_gpu=False, run_placement=on_gpu) == StepSlot("cpu-heavy")  # e.g. GGUF on a GPU run
    cpu_run = slot_policy("cpu-heavy", tasks_in_this_process=True, all_cached=False)
    assert cpu_run.for_step(needs_gpu=False, run_placement=CPU) == StepSlot(None, CPU)


@pytest.mark.fast
def test_only_a_plain_json_result_is_read_as_cached(tmp_path):
    """A replay reads what the flow would get back: a JSON result that Prefect's decoder returns as it is."""
    (tmp_path / "keys").mkdir()
    (tmp_path / "results").mkdir()
    json_serializer = PLAIN_JSON_SERIALIZER
    own_decoder = {**PLAIN_JSON_SERIALIZER, "object_decoder": "os.system"}
    entries = {
        "plain": ({"serializer": json_serializer}, {"metrics": {"acc": {"value": 0.9}}}),
        "own-decoder": ({"serializer": own_decoder}, {"metrics": {}}),
        "pickled": ({"serializer": {"type": "pickle"}}, {"metrics": {}}),
        "expiring": ({"serializer": json_serializer, "expiration": "2030-01-01T00:00:00Z"}, {"metrics": {}}),
        "an-object": ({"serializer": json_serializer}, {"when": [{"__class__": "datetime.datetime", "data": "x"}]}),
        "not-a-dict": ({"serializer": json_serializer}, [1, 2]),
    }
    for key, (record, result) in entries.items():
        (tmp_path / "results" / f"r-{key}").write_text(json.dumps(result))
        (tmp_path / "keys" / key).write_text(json.dumps({"storage_key": f"r-{key}", **record}))
    (tmp_path / "keys" / "cut").write_text('{"storage_key": "r-cu')
    assert cached_result(tmp_path, "plain") == {"metrics": {"acc": {"value": 0.9}}}
    for key in ("own-decoder", "pickled", "expiring", "an-object", "not-a-dict", "cut", "absent"):
        assert cached_result(tmp_path, key) is None, key


def test_an_unreadable_cache_entry_is_discarded_and_a_readable_one_kept(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "results").mkdir()
    for key, result in (("good", '{"result": 1}'), ("cut", '{"resu')):
        (tmp_path / "results" / f"r-{key}").write_text(result)
        (tmp_path / "keys" / key).write_text(json.dumps({"storage_key": f"r-{key}"}))
    (tmp_path / "keys" / "garbled").write_text("not json")
    assert discard_unreadable_cache_entry(tmp_path, "good") is False
    assert discard_unreadable_cache_entry(tmp_path, "cut") is True
    assert discard_unreadable_cache_entry(tmp_path, "garbled") is True
    assert discard_unreadable_cache_entry(tmp_path, "absent") is False
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["good"]


def test_a_run_records_each_outcome_as_it_happens_and_regressions_against_the_last_completed_run(demo_run):
    def measured(acc: float) -> EvaluationResult:
        return EvaluationResult(
            {"tiny_world_mc/acc": MetricValue(acc, 0.01), "ppl": MetricValue(2.0), "size_mb": MetricValue(1.0)}
        )

    outcomes = []
    for acc in (0.9, 0.5):
        run = demo_run()
        variant = run.loaded.variant("bnb-int8")
        run.record_baseline(measured(0.92), None)
        verdict = check_gates(variant.id, variant.gates, measured(acc), measured(0.92))
        run.record_variant(
            variant, error=None, artifact=None, evaluation=measured(acc), verdict=verdict, cached=CachedSteps()
        )
        on_disk = run.run.read_record()  # written at once, before the run finishes
        assert on_disk.variants["bnb-int8"].status == verdict.status and on_disk.status is RunStatus.PLANNED
        assert on_disk.variants["gguf-q8_0"].status is VariantStatus.PENDING
        run.record_publish("bnb-int8", PublishOutcome(status=PublishStatus.FAILED, error="PublishError: no license"))
        outcomes.append(run.finish())
        assert run.run.read_record().status is RunStatus.COMPLETED
        assert "publish failed: PublishError: no license" in (run.path / "report.md").read_text()
    assert outcomes[0] == []
    assert {(r.variant, r.what) for r in outcomes[1]} == {("bnb-int8", "verdict"), ("bnb-int8", "tiny_world_mc/acc")}
    assert run.run.read_record().regressions == outcomes[1]


def test_the_core_the_record_and_the_shared_helpers_import_no_prefect():
    import subprocess
    import sys

    modules = "quantmill.pipeline, quantmill.record, quantmill.publish.publish_run, quantmill.report.render"
    helpers = "quantmill.testing.recipes, quantmill.testing.fuzzing, quantmill.testing.prefect_server"
    code = f"import sys, {modules}, {helpers}; print('prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "False"


@pytest.mark.fast
def test_a_method_without_a_gpu_is_keyed_by_the_cpu_it_runs_on():
    """On a CUDA run GGUF steps run on the CPU: their results are the CPU's and share the CPU run's keys; a GPU
    method's results are keyed apart (what it measures on a GPU is not what it measures on a CPU)."""
    from pathlib import Path

    from quantmill.pipeline import step_keys
    from quantmill.resolve import ResolvedModel

    loaded = load_recipe(REPO / "recipes" / "demo.yaml")
    resolved = ResolvedModel(id="m", path=Path("/m"), revision="sha256:0", tokenizer_path=Path("/m"))
    on_cpu, on_gpu = (step_keys(loaded, loaded.variants, resolved, None, device) for device in ("cpu", "cuda"))
    assert on_gpu.quantize["gguf-q4_k_m"] == on_cpu.quantize["gguf-q4_k_m"]
    assert on_gpu.evaluate["gguf-q4_k_m"] == on_cpu.evaluate["gguf-q4_k_m"]
    assert on_gpu.quantize["gptq-w4-g128"] != on_cpu.quantize["gptq-w4-g128"]
    assert on_gpu.baseline != on_cpu.baseline
