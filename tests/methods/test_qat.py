"""QAT at 2 bits on the demo model: on few texts it ends no worse than RTN, its starting point, at any
step count (validation picks the checkpoint and stops early), and its checkpoint reloads exactly."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS
from tests.support.sequential import run_stages

FEW_TEXTS = "batch_size: 8, seq_len: 64, learning_rate: 0.0002, warmup_steps: 10"
# The recipe's 128 calibration texts train both QAT variants: the setting, where QAT used to overfit.
RECIPE = f"""\
name: qat
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 128, seq_len: 64}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
  metrics: [size]
variants:
  methods:
    - {{method: rtn, bits: 2, group_size: 32}}
    - {{method: qat, id: qat-150, bits: 2, group_size: 32, training: {{steps: 150, {FEW_TEXTS}}}}}
    - {{method: qat, id: qat-300, bits: 2, group_size: 32, training: {{steps: 300, {FEW_TEXTS}}}}}
"""


@pytest.fixture(scope="module")
def two_bit(tmp_path_factory):
    staged = run_stages(RECIPE, tmp_path_factory.mktemp("qat"), baseline=False)
    return {variant_id: (m.artifact, m.result) for variant_id, m in staged.variants.items()}


def _scores(two_bit) -> dict[str, tuple[float, float]]:
    return {name: (result.value("ppl"), result.value("tiny_world_mc/acc")) for name, (_, result) in two_bit.items()}


@pytest.mark.slow
@pytest.mark.parametrize("variant_id", ["qat-150", "qat-300"])
def test_qat_on_few_texts_ends_no_worse_than_rtn(two_bit, variant_id):
    """Before validation, 150 steps on 128 texts ended at ppl 2.452 / acc 0.810 against RTN's 2.343 / 0.884.

    RTN is QAT's starting point up to rounding details (torchao's 2-bit grid is not
    compressed-tensors'; the untrained start measures 2.339 / 0.877), hence 0.01 of accuracy
    (3 of 310 questions, about half a standard error) of slack on the task.
    """
    scores = _scores(two_bit)
    print(scores)
    rtn_ppl, rtn_acc = scores["rtn-w2-g32"]
    ppl, acc = scores[variant_id]
    assert ppl <= rtn_ppl and acc >= rtn_acc - 0.01, scores
    training = two_bit[variant_id][0].provenance["details"]["training"]
    validation = training["validation"]
    assert validation["curve"][0]["step"] == 0 and len(validation["curve"]) >= 2
    assert validation["documents"] == 32  # a quarter of the 128 texts, held out of the 96 trained on
    assert training["documents"] == 96
    assert any("small training set" in warning for warning in training["warnings"])


@pytest.mark.slow
def test_qat_records_training_and_reloads_exactly(two_bit):
    from transformers import AutoModelForCausalLM

    artifact, _ = two_bit["qat-300"]
    details = artifact.provenance["details"]
    training = details["training"]
    assert training["planned_steps"] == 300 and training["tokens"] == training["steps"] * 8 * 64
    assert training["stopped_early"] and training["steps"] < 300  # 128 texts: validation stops it
    assert training["loss_curve"][0]["step"] == 1 and training["loss_curve"][-1]["step"] == training["steps"]
    assert all(point["loss"] > 0 for point in training["loss_curve"])
    validation = training["validation"]
    assert [point["step"] for point in validation["curve"]][:3] == [0, 10, 20]
    assert validation["best_step"] > 0 and validation["returned"] == f"step {validation['best_step']}"
    # The method compared the reloaded checkpoint with the in-memory converted model on a probe batch.
    assert details["reload_max_abs_logit_difference"] == 0.0
    model = AutoModelForCausalLM.from_pretrained(artifact.path)
    assert json.loads((artifact.path / "config.json").read_text())["quantization_config"]["quant_method"] == "torchao"
    assert type(model.model.layers[0].mlp.down_proj.weight).__name__ != "Parameter" or hasattr(
        model.model.layers[0].mlp.down_proj.weight, "qdata"
    )
