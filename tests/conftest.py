"""Shared test fixtures: the repo's paths and recipe writing helpers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "quantmill" / "demo" / "tiny-llama"
DEMO_TASKS = REPO / "quantmill" / "demo" / "lm_eval_tasks"
DEMO_DATA = DEMO_TASKS / "tiny_world" / "data"
STORIES = REPO.parent / "shared" / "models" / "stories260K"


@pytest.fixture
def stories_hf() -> Path:
    """The shared pretrained stories260K model (HF form); skips when absent."""
    path = STORIES / "hf"
    if not (path / "config.json").is_file():
        pytest.skip(f"shared model not present at {path}")
    return path


BASE_RECIPE = f"""\
name: base
model:
  id: {DEMO_MODEL}
calibration:
  dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  perplexity:
    dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}
variants:
  methods:
    - {{method: gptq, bits: [4, 8], group_size: 128}}
    - {{method: gguf, types: [q4_k_m]}}
gates:
  - {{metric: tiny_world_mc/acc, min_recovery: 0.97}}
"""


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@dataclass
class Made:
    """One variant after quantize → evaluate → gate."""

    variant: object
    artifact: object
    result: object
    verdict: object


@dataclass
class Staged:
    loaded: object
    resolved: object
    baseline: object
    variants: dict[str, Made]


def run_stages(recipe_text: str, folder: Path, *, baseline: bool = True) -> Staged:
    """The pipeline's library calls in sequence for a recipe (what the flow does, minus Prefect)."""
    from quantmill import stages
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    (folder / "recipe.yaml").write_text(recipe_text)
    loaded = load_recipe(folder / "recipe.yaml")
    resolved = resolve_model(loaded)
    calibration = stages.prepare_calibration(loaded, resolved)
    measured_baseline = stages.evaluate_baseline(loaded, resolved, "cpu") if baseline else None
    made = {}
    for variant in loaded.variants:
        artifact = stages.quantize_one(loaded, variant, resolved, calibration, "cpu", folder / "artifacts" / variant.id)
        result = stages.evaluate_variant(loaded, variant, artifact.path, "cpu")
        made[variant.id] = Made(variant, artifact, result, stages.gate_variant(variant, result, measured_baseline))
    return Staged(loaded, resolved, measured_baseline, made)


def lm_eval_directly(task: str) -> dict:
    """``lm_eval.simple_evaluate`` on the demo model with no quantmill in between."""
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(DEMO_MODEL), batch_size=16)
    return simple_evaluate(model=lm, tasks=[task], task_manager=TaskManager(include_path=str(DEMO_TASKS)))["results"][
        task
    ]
