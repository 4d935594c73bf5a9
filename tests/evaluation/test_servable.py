"""Servable before publishable: a fresh process loads each variant from exactly its upload, or it fails.

One sequential run on the demo model (published to a local zoo) holds a good variant, one whose
``config.json`` lost its ``quantization_config`` after quantization, one at 2 bits, and a GGUF
truncated after it was written and evaluated; a flow run checks the same through Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantmill.evaluation.servable import (
    BASELINE_DETAILS,
    MAX_NEW_TOKENS,
    PROMPTS,
    greedy_agreement,
    run_usage_snippet,
    stage_snapshot,
)
from quantmill.testing.recipes import fast_recipe

GATES = "  - {metric: tiny_world_mc/acc, min_recovery: 0.5}\n  - {metric: greedy_agreement, min: 0.8}\n"
GOOD, BROKEN, TWO_BIT, GGUF = "rtn-w8-g128", "rtn-w4-g128", "rtn-w2-g128", "gguf-q8_0"


def zoo_publish(zoo: Path) -> str:
    return f"publish: {{target: local, path: {zoo}, namespace: org, license: mit}}\n"


def drop_quantization_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))


def has_llama_cpp_tools() -> bool:
    from quantmill.llamacpp import find_llama_cpp

    found = find_llama_cpp()
    return found is not None and found.tool("llama-quantize") is not None


@pytest.fixture(scope="module")
def servable_run(tmp_path_factory):
    """The sequential run: (its record, the zoo). Damage is done through the stages, as a crash or a bug would."""
    from quantmill import stages
    from quantmill.pipeline import run_sequential

    folder = tmp_path_factory.mktemp("servable")
    rows = "    - {method: rtn, bits: [8, 4, 2], group_size: 128}\n"
    if has_llama_cpp_tools():
        rows += "    - {method: gguf, type: q8_0}\n"
    (folder / "recipe.yaml").write_text(fast_recipe(rows, gates=GATES, publish=zoo_publish(folder / "zoo")))
    quantize, evaluate = stages.quantize_one, stages.evaluate_variant

    def quantize_then_lose_config(loaded, variant, *args):
        artifact = quantize(loaded, variant, *args)
        if variant.id == BROKEN:
            drop_quantization_config(artifact.path)
        return artifact

    def evaluate_then_truncate(loaded, variant, path, *args):
        result = evaluate(loaded, variant, path, *args)
        if variant.method == "gguf":
            weights = variant.spec.output_format.weights(path)
            with weights.open("r+b") as file:
                file.truncate(weights.stat().st_size // 2)
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages, "quantize_one", quantize_then_lose_config)
        patch.setattr(stages, "evaluate_variant", evaluate_then_truncate)
        run = run_sequential(folder / "recipe.yaml", runs_dir=folder / "runs")
    return run.record, folder / "zoo" / "org"


@pytest.mark.slow
def test_the_baseline_keeps_its_greedy_tokens_for_the_fixed_prompts(servable_run):
    record, _ = servable_run
    greedy = record.baseline_evaluation().details[BASELINE_DETAILS]
    assert greedy["prompts"] == list(PROMPTS) and greedy["max_new_tokens"] == MAX_NEW_TOKENS
    assert len(greedy["tokens"]) == len(PROMPTS) and all(0 < len(t) <= MAX_NEW_TOKENS for t in greedy["tokens"])
    assert greedy["chat_template"] is False  # the demo tokenizer has none


@pytest.mark.slow
def test_a_good_variant_records_greedy_agreement_passes_and_is_published(servable_run):
    from quantmill.publish.publisher import upload_files

    record, zoo = servable_run
    good = record.variants[GOOD]
    assert good.status == "passed" and good.error is None, good.error
    assert good.evaluation.value("greedy_agreement") >= 0.95  # 8 bits: the same greedy text as the baseline
    probe = good.evaluation.details["servable"]
    assert probe["repo_id"] == f"org/tiny-llama-{GOOD}" and probe["runtime"] == "transformers"
    assert probe["files"] == sorted(upload_files(good.artifact))  # exactly what publishing uploads
    (outcome,) = [o for o in good.verdict.outcomes if o.metric == "greedy_agreement"]
    assert outcome.passed and outcome.observed == good.evaluation.value("greedy_agreement")
    assert (zoo / f"tiny-llama-{GOOD}").is_dir()


@pytest.mark.slow
def test_a_gate_on_greedy_agreement_fails_a_variant_that_generates_differently(servable_run):
    record, zoo = servable_run
    two_bit = record.variants[TWO_BIT]
    agreement = two_bit.evaluation.value("greedy_agreement")
    (outcome,) = [o for o in two_bit.verdict.outcomes if o.metric == "greedy_agreement"]
    assert agreement < 0.8 and outcome.observed == agreement and not outcome.passed
    assert two_bit.status == "failed" and not (zoo / f"tiny-llama-{TWO_BIT}").exists()


@pytest.mark.slow
def test_a_variant_whose_config_lost_its_quantization_config_is_not_servable_nor_published(servable_run):
    record, zoo = servable_run
    broken = record.variants[BROKEN]
    assert broken.status == "failed" and broken.publish is None
    assert broken.error.startswith("NotServableError: not servable: LlamaForCausalLM loads incompletely"), broken.error
    assert "weights missing from the files" in broken.error
    assert not (zoo / f"tiny-llama-{BROKEN}").exists()


@pytest.mark.slow
@pytest.mark.gguf
def test_a_gguf_truncated_after_writing_is_not_servable_nor_published(servable_run):
    if not has_llama_cpp_tools():
        pytest.skip("llama.cpp tools are not built here")
    record, zoo = servable_run
    truncated = record.variants[GGUF]
    assert truncated.evaluation is not None  # it was measured before the damage
    assert truncated.status == "failed" and truncated.publish is None
    assert truncated.error.startswith("NotServableError: not servable: the card's usage snippet failed"), (
        truncated.error
    )
    assert not (zoo / f"tiny-llama-{GGUF}").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_the_flow_fails_a_variant_that_is_not_servable_and_publishes_the_other(tmp_path, monkeypatch):
    from quantmill import stages
    from quantmill.flows.recipe import run_recipe

    quantize = stages.quantize_one

    def quantize_then_lose_config(loaded, variant, *args):
        artifact = quantize(loaded, variant, *args)
        if variant.id == BROKEN:
            drop_quantization_config(artifact.path)
        return artifact

    monkeypatch.setattr(stages, "quantize_one", quantize_then_lose_config)
    recipe = tmp_path / "recipe.yaml"
    rows = "    - {method: rtn, bits: [8, 4], group_size: 128}\n"
    recipe.write_text(fast_recipe(rows, gates=GATES, publish=zoo_publish(tmp_path / "zoo")))
    results = run_recipe(str(recipe), runs_dir=str(tmp_path / "runs"))
    good, broken = results["variants"][GOOD], results["variants"][BROKEN]
    assert good["status"] == "passed" and good["publish"]["status"] == "published"
    assert good["evaluation"]["metrics"]["greedy_agreement"]["value"] >= 0.95
    assert broken["status"] == "failed" and broken["publish"] is None
    assert broken["error"].startswith("NotServableError: not servable: LlamaForCausalLM loads incompletely")
    assert sorted(p.name for p in (tmp_path / "zoo" / "org").iterdir()) == [f"tiny-llama-{GOOD}"]


@pytest.mark.fast
def test_greedy_agreement_counts_identical_tokens_over_the_longer_generation():
    assert greedy_agreement([[1, 2, 3], [4]], [[1, 2, 3], [4]]) == 1.0
    assert greedy_agreement([[1, 2, 3, 4]], [[1, 9, 3]]) == 2 / 4  # same place, same token; the missing one differs
    assert greedy_agreement([[1]], [[1, 5, 6]]) == 1 / 3  # going on past the baseline's end differs too
    assert greedy_agreement([[]], [[]]) == 1.0
    with pytest.raises(ValueError):
        greedy_agreement([[1]], [[1], [2]])


@pytest.mark.fast
def test_the_staged_snapshot_is_a_hub_cache_revision_holding_exactly_the_files(tmp_path, monkeypatch):
    from huggingface_hub import snapshot_download

    files = {"config.json": tmp_path / "a.json", "sub/model.gguf": tmp_path / "b.gguf"}
    for path in files.values():
        path.write_text(path.name)
    snapshot = stage_snapshot(files, "org/name", tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = Path(snapshot_download("org/name", cache_dir=tmp_path / "hub", local_files_only=True))
    assert found == snapshot
    assert sorted(str(p.relative_to(found)) for p in found.rglob("*") if p.is_file()) == sorted(files)
    assert (found / "sub" / "model.gguf").stat().st_ino == files["sub/model.gguf"].stat().st_ino  # a hard link


@pytest.mark.fast
def test_a_card_without_a_python_snippet_or_with_a_failing_one_is_not_servable():
    from quantmill.errors import NotServableError

    with pytest.raises(NotServableError, match="no Python snippet"):
        run_usage_snippet("```bash\nllama-cli -hf org/name\n```")
    with pytest.raises(NotServableError, match="snippet failed: ZeroDivisionError"):
        run_usage_snippet("```python\nx = 1\n```\n\n```python\ny = x / 0\n```")
    assert run_usage_snippet("```python\nx = 1\n```\n```python\ny = x + 1\n```")["y"] == 2


@pytest.mark.fast
def test_a_recipe_may_gate_on_greedy_agreement(tmp_path):
    from quantmill.recipe import load_recipe

    (tmp_path / "recipe.yaml").write_text(fast_recipe("    - {method: rtn, bits: 8}\n", gates=GATES))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    assert [g.metric for g in loaded.recipe.gates] == ["tiny_world_mc/acc", "greedy_agreement"]


def _vllm_and_gpu() -> str | None:
    """Why the vLLM check cannot run here (None when it can)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.mark.slow
def test_vllm_serves_a_staged_compressed_tensors_variant(tmp_path):
    """bench/gpu.py's vLLM check on an 8-bit variant of the demo model: vLLM loads the uploaded files and
    generates greedily like the baseline."""
    reason = _vllm_and_gpu()
    if reason:
        pytest.skip(f"needs a GPU and vLLM: {reason}")
    import sys

    from quantmill import stages
    from quantmill.publish.publisher import upload_files
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model
    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from gpu import vllm_generate  # type: ignore[import-not-found]

    (tmp_path / "recipe.yaml").write_text(fast_recipe("    - {method: rtn, bits: 8}\n").replace("cpu", "cuda"))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    resolved = resolve_model(loaded)
    baseline = stages.evaluate_baseline(loaded, resolved, "cuda")
    artifact = stages.quantize_one(loaded, loaded.variants[0], resolved, None, "cuda", tmp_path / "variant")
    tokens = vllm_generate(upload_files(artifact.path), tmp_path / "staged", PROMPTS, MAX_NEW_TOKENS)
    assert greedy_agreement(baseline.details[BASELINE_DETAILS]["tokens"], tokens) >= 0.9


@pytest.mark.fast
def test_a_sequential_run_without_the_servable_check_cannot_publish(tmp_path):
    from quantmill.pipeline import run_sequential

    with pytest.raises(ValueError, match="cannot publish"):
        run_sequential(tmp_path / "recipe.yaml", servable=False)


@pytest.mark.slow
def test_a_probe_forked_from_the_zygote_generates_what_a_fresh_process_generates(servable_run, tmp_path, monkeypatch):
    """The zygote only saves the import time: same tokens; a zygote that died is replaced, never trusted."""
    from quantmill.errors import NotServableError
    from quantmill.evaluation import servable, serve_zygote
    from quantmill.publish.publisher import upload_files
    from quantmill.quantize import read_artifact

    record, _ = servable_run
    good = record.variants[GOOD]

    def probe(timeout_s: float = servable.PROBE_TIMEOUT_S):
        return servable.probe_servable(
            "rtn",
            upload_files(good.artifact),
            "org/name",
            read_artifact(good.artifact).provenance,
            record.baseline_evaluation(),
            "cpu",
            scratch=tmp_path,
            timeout_s=timeout_s,
        ).details["servable"]["tokens"]

    forked = probe()
    zygote = serve_zygote._zygote
    assert zygote is not None and zygote.process.poll() is None  # the probe went through a live zygote
    assert not any(zygote.hub.iterdir())  # the staged snapshot is gone after the probe
    with pytest.raises(NotServableError, match="did not finish within 0.01 s"):
        probe(timeout_s=0.01)  # the zygote kills its own child, answers, and serves the next probe
    assert serve_zygote._zygote is zygote and zygote.process.poll() is None
    zygote.process.kill()
    zygote.process.wait()
    assert probe() == forked  # a dead zygote is replaced
    assert serve_zygote._zygote is not zygote
    with monkeypatch.context() as patch:
        patch.setattr(servable, "_zygote_for", lambda method, scratch: None)
        assert probe() == forked  # a fresh process generates the same tokens
