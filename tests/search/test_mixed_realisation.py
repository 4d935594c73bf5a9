"""Mixed-precision variants through the backends' own per-layer controls: quantize, load in the runtime, evaluate.

Direct stage calls (no flow): llm-compressor ``config_groups`` naming layers for GPTQ/RTN, and
``llama-quantize --tensor-type-file`` for GGUF, on the demo model (and stories260K when present).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from quantmill.errors import RecipeError
from quantmill.publish.card import layer_precision_section
from quantmill.recipe.load import load_recipe_text
from quantmill.resolve import resolve_model
from quantmill.stages import evaluate_variant, prepare_calibration, quantize_one
from tests.conftest import DEMO_DATA, DEMO_MODEL

GPTQ_MIX = {"model.layers.0.mlp.down_proj": 8, "model.layers.1.self_attn.q_proj": 2}
GGUF_MIX = {"blk.0.ffn_down.weight": "q8_0", "attn_q": "q2_k"}
BASELINE_PPL = 2.301  # the demo model unquantized, measured with this module's recipe


def recipe(rows: str, model: Path = DEMO_MODEL) -> str:
    """Perplexity on the demo world's corpus (no lm-eval task: its start-up is most of an evaluation's time here);
    8 calibration samples of 32 tokens: quick, and enough to prove the variant loads and scores text."""
    return f"""\
name: mixed
model: {{id: {model}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 8, seq_len: 32}}
evaluation:
  metrics: [size]
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
variants:
  methods:
{rows}"""


def make_and_evaluate(text: str, folder: Path):
    """Quantize and evaluate the recipe's one variant as a run's steps would; returns (variant, artifact, result)."""
    loaded = load_recipe_text(text, folder)
    (variant,) = loaded.variants
    resolved = resolve_model(loaded)
    artifact = quantize_one(loaded, variant, resolved, prepare_calibration(loaded, resolved), "cpu", folder / "out")
    result = evaluate_variant(loaded, variant, artifact.path, "cpu", resolved.tokenizer_path)
    return variant, artifact, result


@pytest.mark.slow
def test_mixed_gptq_keeps_each_named_layer_at_its_bits_in_transformers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    rows = f"    - {{method: gptq, bits: 4, group_size: 64, layer_bits: {GPTQ_MIX}}}\n"
    variant, artifact, result = make_and_evaluate(recipe(rows), tmp_path)

    assert variant.id.startswith("gptq-w4-g64-mix")
    model = AutoModelForCausalLM.from_pretrained(artifact.path, dtype=torch.float32)
    bits = {
        name: module.quantization_scheme.weights.num_bits
        for name, module in model.named_modules()
        if getattr(module, "quantization_scheme", None) is not None
    }
    assert len(bits) == 14 and {name: b for name, b in bits.items() if b != 4} == GPTQ_MIX
    assert result.value("ppl") < 1.1 * BASELINE_PPL
    section = layer_precision_section(variant, artifact.provenance)["Per-layer precision"]
    assert "| 8-bit, group 64 | `model.layers.0.mlp.down_proj` | 1 |" in section
    assert "| 4-bit, group 64 | every other quantized layer | rest |" in section


@pytest.mark.slow
@pytest.mark.gguf
def test_mixed_gguf_writes_the_named_tensor_types_and_llama_cpp_runs_it(tmp_path):
    rows = f"    - {{method: gguf, type: q4_k_m, tensor_types: {GGUF_MIX}}}\n"
    variant, artifact, result = make_and_evaluate(recipe(rows), tmp_path)

    tensors = artifact.provenance["details"]["tensors"]
    assert tensors["blk.0.ffn_down.weight"] == "Q8_0" and tensors["blk.1.ffn_down.weight"] != "Q8_0"
    assert tensors["blk.0.attn_q.weight"] == tensors["blk.1.attn_q.weight"] == "Q2_K"
    assert result.value("ppl") < 1.1 * BASELINE_PPL  # scored by llama.cpp
    section = layer_precision_section(variant, artifact.provenance)["Per-layer precision"]
    assert "| Q2_K | `blk.0.attn_q.weight`, `blk.1.attn_q.weight` | 2 |" in section


@pytest.mark.slow
def test_mixed_rtn_on_stories260k(tmp_path, stories_hf):
    """A real pretrained model with awkward shapes (in-features 64 and 172): per-channel scales, one layer at 8 bits."""
    rows = "    - {method: rtn, bits: 4, group_size: -1, layer_bits: {model.layers.4.mlp.down_proj: 8}}\n"
    variant, artifact, result = make_and_evaluate(recipe(rows, stories_hf), tmp_path)

    groups = json.loads((artifact.path / "config.json").read_text())["quantization_config"]["config_groups"]
    bits_by_target = {tuple(g["targets"]): g["weights"]["num_bits"] for g in groups.values()}
    assert bits_by_target == {("model.layers.4.mlp.down_proj",): 8, ("Linear",): 4}
    assert variant.id.startswith("rtn-w4-gch-mix") and math.isfinite(result.value("ppl"))


@pytest.mark.fast
def test_unknown_layer_names_and_bad_precisions_are_refused_with_what_would_do(tmp_path):
    rows = (
        "    - {method: gptq, bits: 4, group_size: 64, layer_bits: {model.layers.0.mlp.dwn_proj: 8}}\n"
        "    - {method: gguf, type: q4_k_m, tensor_types: {blk.7.ffn_down.weight: q8_0}}\n"
        "    - {method: rtn, bits: 4, layer_bits: {model.layers.0.mlp.down_proj: 5}}\n"
    )
    with pytest.raises(RecipeError) as failure:
        load_recipe_text(recipe(rows), tmp_path)
    text = str(failure.value)
    assert "no linear layer of this model is called 'model.layers.0.mlp.dwn_proj'" in text
    assert "did you mean 'model.layers.0.mlp.down_proj'" in text
    assert "no tensor of this model is called 'blk.7.ffn_down.weight'" in text
    assert "5 is not allowed; valid: 2, 3, 4, 8" in text
