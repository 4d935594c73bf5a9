"""``model.trust_remote_code`` reaches every transformers ``from_pretrained`` on the run path, and means it.

One test loads a model whose ``auto_map`` names a Python file that leaves a marker when
imported: refused, transformers loads its own class and the file never runs; trusted, it
runs. The other runs each stage on the demo model and records what every
``from_pretrained`` call was told.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from quantmill.testing.recipes import DEMO_DATA, DEMO_MODEL
from quantmill.trust.operator import get_operator

MARKER_CODE = """\
import os
import pathlib

from transformers import LlamaForCausalLM

pathlib.Path(os.environ["QUANTMILL_TEST_MARKER"]).write_text("the model's own code ran")


class MarkerForCausalLM(LlamaForCausalLM):
    pass
"""


@pytest.fixture
def model_with_code(tmp_path, monkeypatch) -> Path:
    """The demo model, plus ``auto_map`` → ``marker_model.py`` (it writes ``QUANTMILL_TEST_MARKER`` on import)."""
    import transformers.dynamic_module_utils as dynamic

    folder = tmp_path / "model-with-code"
    shutil.copytree(DEMO_MODEL, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "marker_model.MarkerForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "marker_model.py").write_text(MARKER_CODE)
    monkeypatch.setenv("QUANTMILL_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not the user's cache
    return folder


def test_model_code_runs_only_when_trusted(model_with_code, tmp_path):
    from quantmill.evaluation.backends import load_transformers_model

    marker = tmp_path / "marker"
    model = load_transformers_model(model_with_code, "float32", "cpu")
    assert type(model).__name__ == "LlamaForCausalLM" and not marker.exists()

    model = load_transformers_model(model_with_code, "float32", "cpu", trust_remote_code=True)
    assert type(model).__name__ == "MarkerForCausalLM" and marker.exists()


RECIPE = f"""\
name: remote-code
model: {{id: {DEMO_MODEL}, dtype: float32, trust_remote_code: TRUST}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 4, seq_len: 32}}
evaluation: {{tasks: [], metrics: [size]}}
variants:
  methods:
    - {{method: rtn, bits: 8}}
    - {{method: gptq, bits: 4, group_size: 128}}
publish: {{target: none}}
"""


@pytest.fixture
def recorded_loads(monkeypatch) -> list[tuple[str, object]]:
    """(class, its ``trust_remote_code`` argument or ``"absent"``) for every ``from_pretrained`` of the Auto classes."""
    import transformers

    calls: list[tuple[str, object]] = []
    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer, transformers.AutoConfig):
        original = cls.from_pretrained

        def from_pretrained(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("trust_remote_code", "absent")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", staticmethod(from_pretrained))
    return calls


@pytest.mark.parametrize("trust", [True, False])
def test_every_run_path_load_is_told_the_recipes_choice(trust, tmp_path, monkeypatch, recorded_loads):
    from quantmill import pipeline, stages
    from quantmill.evaluation.results import EvaluationResult
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    # only the loading matters (the baseline then generates with the model it loaded)
    monkeypatch.setattr(stages, "evaluate_model", lambda load, weights, setup: (load(), EvaluationResult())[1])
    get_operator.cache_clear()
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("TRUST", str(trust).lower()))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    resolved = resolve_model(loaded)
    variant = loaded.variants[0]

    stages.prepare_calibration(loaded, resolved)
    stages.evaluate_baseline(loaded, resolved, "cpu")
    artifact = stages.quantize_one(loaded, variant, resolved, None, "cpu", tmp_path / "artifact")
    stages.evaluate_variant(loaded, variant, artifact.path, "cpu", resolved.tokenizer_path)
    pipeline.cache_status(loaded, tmp_path / "cache", "cpu")  # the gptq row makes it tokenize

    auto_calls = [(name, told) for name, told in recorded_loads if name != "AutoConfig"]
    assert {name for name, _ in auto_calls} == {"AutoModelForCausalLM", "AutoTokenizer"}
    assert len(auto_calls) >= 5, recorded_loads
    assert all(told is trust for _, told in auto_calls), recorded_loads


def test_a_policy_tightened_after_loading_withholds_remote_code(tmp_path, monkeypatch):
    from quantmill.recipe import load_recipe

    get_operator.cache_clear()
    (tmp_path / "recipe.yaml").write_text(RECIPE.replace("TRUST", "true"))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    assert loaded.trust_remote_code
    monkeypatch.setenv("QUANTMILL_POLICY", "untrusted")
    get_operator.cache_clear()
    try:
        assert not loaded.trust_remote_code
    finally:
        monkeypatch.undo()
        get_operator.cache_clear()


@pytest.mark.fast
def test_results_made_with_the_models_own_code_are_cached_apart():
    """A variant quantized without the model's code is not reused once the recipe trusts it (and back)."""
    from quantmill import cachekeys
    from quantmill.recipe.schema import Evaluation
    from tests.methods.test_quantize_all import make_variant

    variant = make_variant("rtn", {"bits": 8, "group_size": 64})
    plain = cachekeys.quantize_key("rev", variant, None, "float32", "cpu")
    assert cachekeys.quantize_key("rev", variant, None, "float32", "cpu", remote_code=True) != plain
    evaluation = Evaluation(tasks=["tiny_world_mc"])
    base = cachekeys.baseline_key("rev", evaluation, "float32", "cpu", "data")
    assert cachekeys.baseline_key("rev", evaluation, "float32", "cpu", "data", remote_code=True) != base
