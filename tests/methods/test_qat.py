"""QAT: fake-quant fine-tuning beats post-training quantization at 2 bits; the checkpoint reloads exactly."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS
from tests.support.sequential import run_stages

RECIPE = f"""\
name: qat
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 2000, seq_len: 64}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
  metrics: [size]
variants:
  methods:
    - {{method: rtn, bits: 2, group_size: 32}}
    - {{method: gptq, bits: 2, group_size: 32}}
    - {{method: qat, bits: 2, group_size: 32, training: {{steps: 300, batch_size: 8, seq_len: 64, learning_rate: 0.0002, warmup_steps: 20}}}}
"""


@pytest.fixture(scope="module")
def two_bit(tmp_path_factory):
    staged = run_stages(RECIPE, tmp_path_factory.mktemp("qat"), baseline=False)
    return {m.variant.method: (m.artifact, m.result) for m in staged.variants.values()}


@pytest.mark.slow
def test_qat_beats_rtn_and_gptq_at_two_bits(two_bit):
    ppl = {method: result.value("ppl") for method, (_, result) in two_bit.items()}
    acc = {method: result.value("tiny_world_mc/acc") for method, (_, result) in two_bit.items()}
    print({"ppl": ppl, "acc": acc})
    assert ppl["qat"] < min(ppl["rtn"], ppl["gptq"]), ppl
    assert acc["qat"] >= max(acc["rtn"], acc["gptq"]) - 0.01, acc


@pytest.mark.slow
def test_qat_records_training_and_reloads_exactly(two_bit):
    from transformers import AutoModelForCausalLM

    artifact, _ = two_bit["qat"]
    details = artifact.provenance["details"]
    training = details["training"]
    assert training["steps"] == 300 and training["tokens"] == 300 * 8 * 64
    assert training["loss_curve"][0]["step"] == 1 and len(training["loss_curve"]) >= 15
    assert all(point["loss"] > 0 for point in training["loss_curve"])
    # The method compared the reloaded checkpoint with the in-memory converted model on a probe batch.
    assert details["reload_max_abs_logit_difference"] == 0.0
    model = AutoModelForCausalLM.from_pretrained(artifact.path)
    assert json.loads((artifact.path / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ != "Parameter" or hasattr(
        model.model.layers[0].mlp.down_proj.weight, "qdata"
    )
