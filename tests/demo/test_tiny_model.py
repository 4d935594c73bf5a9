"""The project's own tiny Llama: shape, size, reproducible training, and a task it can do."""

from __future__ import annotations

import json

import pytest

from quantmill.demo.train import TrainingConfig, train, write_eval_data
from quantmill.demo.world import build_world
from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS


@pytest.mark.fast
def test_widths_divide_256_and_model_is_small():
    config = json.loads((DEMO_MODEL / "config.json").read_text())
    assert config["hidden_size"] % 256 == 0 and config["intermediate_size"] % 256 == 0
    total = sum(p.stat().st_size for p in DEMO_MODEL.iterdir())
    assert total <= 5 * 1024 * 1024


def test_training_reproduces_the_first_steps_exactly():
    log = json.loads((DEMO_MODEL / "training_log.json").read_text())
    assert log["config"] == TrainingConfig().__dict__
    _, _, losses, init_fingerprint = train(TrainingConfig(), steps=5, progress=False)
    assert init_fingerprint == log["init_fingerprint"]
    assert losses == log["losses"][:5]


@pytest.mark.fast
def test_eval_data_is_what_the_world_generates(tmp_path):
    write_eval_data(build_world(TrainingConfig().seed), tmp_path)
    for name in ("tiny_world_mc.jsonl", "tiny_world_ppl.jsonl", "calibration.jsonl"):
        assert (tmp_path / name).read_bytes() == (DEMO_DATA / name).read_bytes(), name


@pytest.mark.slow
def test_model_loads_and_beats_chance_on_the_local_task():
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=32)
    results = simple_evaluate(
        model=lm,
        tasks=["tiny_world_mc", "tiny_world_ppl"],
        task_manager=TaskManager(include_path=str(DEMO_TASKS)),
        log_samples=False,
    )["results"]
    items = [json.loads(line) for line in (DEMO_DATA / "tiny_world_mc.jsonl").read_text().splitlines()]
    chance = sum(1 / len(item["choices"]) for item in items) / len(items)
    accuracy = results["tiny_world_mc"]["acc,none"]
    assert chance < 0.2
    assert accuracy > 4 * chance, (accuracy, chance)
    assert 1.0 < results["tiny_world_ppl"]["byte_perplexity,none"] < 3.0
