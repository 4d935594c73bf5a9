"""Fixtures for method tests: the demo model's calibration set and baseline logits."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantmill.calibration import build_calibration_set
from quantmill.dataref import DatasetRef
from quantmill.recipe.schema import Calibration
from tests.conftest import DEMO_DATA, DEMO_MODEL

PROMPTS = [
    "The code of Alice is",
    "Question: Where does Nils live?\nAnswer:",
    "Question: What is three plus four?\nAnswer:",
    "Greta walks the",
]


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_MODEL)


@pytest.fixture(scope="session")
def calibration(tokenizer):
    config = Calibration(dataset=DatasetRef(path=str(DEMO_DATA / "calibration.jsonl")), num_samples=128, seq_len=64)
    return build_calibration_set(config, tokenizer, Path("."))


def prompt_logits(model, tokenizer):
    """Last-position logits for each prompt, as float32 on the CPU."""
    import torch

    rows = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.to(next(model.parameters()).device)
        with torch.no_grad():
            rows.append(model(ids).logits[0, -1].float().cpu())
    return torch.stack(rows)


@pytest.fixture(scope="session")
def baseline_logits(tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32)
    return prompt_logits(model, tokenizer)
