"""Architectures beyond the demo's Llama: GPT-2's Conv1D layers, Qwen2's biases and tied head, Phi-3's fused
projections, OPT (which llama.cpp cannot convert). The full arch × method matrix is ``bench/architectures.py``."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

from quantmill.errors import QuantizationError
from quantmill.methods.layers import linear_layers
from quantmill.modelinfo import is_block_linear, linear_weight_bytes, read_model_shape
from quantmill.registry import get_method

# safetensors tensor names and shapes of one block of each layout (as transformers saves them)
GPT2 = {
    "transformer.wte.weight": [768, 256],
    "transformer.h.0.ln_1.weight": [256],
    "transformer.h.0.attn.c_attn.weight": [256, 768],  # Conv1D: (in, out)
    "transformer.h.0.attn.c_attn.bias": [768],
    "transformer.h.0.attn.c_proj.weight": [256, 256],
    "transformer.h.0.mlp.c_fc.weight": [256, 1024],
    "transformer.h.0.mlp.c_proj.weight": [1024, 256],
    "transformer.ln_f.weight": [256],
}
PHI3 = {
    "model.embed_tokens.weight": [768, 256],
    "model.layers.0.input_layernorm.weight": [256],
    "model.layers.0.self_attn.qkv_proj.weight": [768, 256],
    "model.layers.0.self_attn.o_proj.weight": [256, 256],
    "model.layers.0.mlp.gate_up_proj.weight": [1024, 256],
    "model.layers.0.mlp.down_proj.weight": [256, 512],
    "lm_head.weight": [768, 256],
}
NEOX = {
    "gpt_neox.layers.0.attention.query_key_value.weight": [768, 256],
    "gpt_neox.layers.0.attention.dense.weight": [256, 256],
    "gpt_neox.layers.0.mlp.dense_h_to_4h.weight": [512, 256],
    "gpt_neox.layers.0.mlp.dense_4h_to_h.weight": [256, 512],
    "gpt_neox.layers.0.post_attention_layernorm.weight": [256],
}


def write_header_only(folder, tensors, model_type, architecture):
    """A model folder whose safetensors file has only a header: all that shape reading looks at."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [architecture]}))
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded)
    return folder


@pytest.mark.fast
@pytest.mark.parametrize(
    ("tensors", "model_type", "architecture", "expected"),
    [
        (
            GPT2,
            "gpt2",
            "GPT2LMHeadModel",
            {"attn.c_attn": 256, "attn.c_proj": 256, "mlp.c_fc": 256, "mlp.c_proj": 1024},
        ),
        (
            PHI3,
            "phi3",
            "Phi3ForCausalLM",
            {"self_attn.qkv_proj": 256, "self_attn.o_proj": 256, "mlp.gate_up_proj": 256, "mlp.down_proj": 512},
        ),
        (
            NEOX,
            "gpt_neox",
            "GPTNeoXForCausalLM",
            {
                "attention.query_key_value": 256,
                "attention.dense": 256,
                "mlp.dense_h_to_4h": 256,
                "mlp.dense_4h_to_h": 512,
            },
        ),
    ],
    ids=["gpt2-conv1d", "phi3-fused", "gpt-neox"],
)
def test_shape_is_read_from_the_weights_of_any_layout(tmp_path, tensors, model_type, architecture, expected):
    shape = read_model_shape(write_header_only(tmp_path / model_type, tensors, model_type, architecture))

    assert shape is not None and shape.linear_in_features == expected
    assert shape.model_type == model_type and shape.architecture == architecture
    assert shape.conv1d_linears is (model_type == "gpt2")
    linear = {k: v for k, v in tensors.items() if len(v) == 2 and is_block_linear(k.removesuffix(".weight"))}
    assert shape.linear_parameters == sum(a * b for a, b in linear.values())
    # one rule: the layers a per-layer map may name are exactly those counted as linear parameters
    assert set(linear_layers(shape)) == {k.removesuffix(".weight") for k in linear}
    assert linear_weight_bytes(tmp_path / model_type) == 4 * shape.linear_parameters


@pytest.mark.fast
def test_quantized_tensors_count_towards_their_layer():
    assert is_block_linear("model.decoder.layers.0.fc1") and is_block_linear("transformer.h.3.mlp.c_fc")
    assert not is_block_linear("model.layers.0.input_layernorm") and not is_block_linear("transformer.h.0.ln_1")
    assert not is_block_linear("model.embed_tokens") and not is_block_linear("lm_head")


@pytest.mark.fast
@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "int8", "fp8", "torchao", "hqq"])
def test_linear_only_methods_refuse_conv1d_models_at_validation(tmp_path, method):
    shape = read_model_shape(write_header_only(tmp_path / "gpt2", GPT2, "gpt2", "GPT2LMHeadModel"))
    spec = get_method(method)

    findings = spec.check(spec.params(), shape, "cpu")

    assert any("Conv1D" in f.message and "GPT2LMHeadModel" in f.message for f in findings), findings
    phi3 = read_model_shape(write_header_only(tmp_path / "phi3", PHI3, "phi3", "Phi3ForCausalLM"))
    assert not [f for f in spec.check(spec.params(), phi3, "cpu") if f.field == "method"]


@pytest.mark.fast
def test_hqq_refuses_a_decoder_outside_model_layers_at_validation(tmp_path):
    spec = get_method("hqq")
    neox = read_model_shape(write_header_only(tmp_path / "neox", NEOX, "gpt_neox", "GPTNeoXForCausalLM"))

    findings = spec.check(spec.params(), neox, "cpu")

    assert [f.field for f in findings] == ["method"]
    assert "GPTNeoXForCausalLM" in findings[0].message and "gpt_neox.layers.0" in findings[0].message


@pytest.mark.fast
def test_gguf_refuses_an_architecture_llama_cpp_cannot_convert(tmp_path):
    from quantmill.llamacpp import find_llama_cpp

    if find_llama_cpp() is None:
        pytest.skip("llama.cpp is not set up here (quantmill setup llama-cpp)")
    spec = get_method("gguf")
    opt = {"model.decoder.layers.0.fc1.weight": [512, 256], "model.decoder.layers.0.fc2.weight": [256, 512]}
    shape = read_model_shape(write_header_only(tmp_path / "opt", opt, "opt", "OPTForCausalLM"))

    findings = spec.check(spec.params(), shape, "cpu")

    assert [f.field for f in findings] == ["method"] and "OPTForCausalLM" in findings[0].message
    phi3 = read_model_shape(write_header_only(tmp_path / "phi3", PHI3, "phi3", "Phi3ForCausalLM"))
    assert spec.check(spec.params(), phi3, "cpu") == []


# --- real (tiny, random) models through quantize and reload -------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from quantmill.testing.architectures import build_model

    root = tmp_path_factory.mktemp("architectures")
    return lambda name: build_model(name, root / name)


def quantize(method, params, model_dir, out_dir):
    from quantmill.quantize import quantize_variant
    from quantmill.recipe.matrix import Variant

    spec = get_method(method)
    validated = spec.params.model_validate(params)
    variant = Variant(spec.variant_id(validated), method, validated, (), 0)
    return quantize_variant(variant, source_dir=model_dir, out_dir=out_dir, calibration=None, dtype="float32")


def logits(folder):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([[1, 17, 99, 230, 5, 400, 12, 33]])).logits[0]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2", "phi3"])
def test_rtn_w8_reloads_close_to_the_baseline(models, tmp_path, family):
    """Qwen2 (q/k/v biases, tied head) and Phi-3 (fused qkv_proj, gate_up_proj): every block linear is quantized
    and the reload computes what the baseline does."""
    source = models(family)
    out = tmp_path / family

    quantize("rtn", {"bits": 8, "group_size": 64}, source, out)

    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    base_linear = read_model_shape(source).linear_parameters
    assert linear_weight_bytes(out) < base_linear * 4 / 3  # 8-bit from 32-bit, with scales: about 1/4
    base, quantized = logits(source), logits(out)
    assert float((quantized - base).norm() / base.norm()) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "params", "error"),
    [
        # llm-compressor's own count of the layers it quantized
        ("rtn", {"bits": 8, "group_size": 64}, "quantized no layer of this GPT2LMHeadModel"),
        # any method: the saved folder's decoder linears are all still plain float weights
        ("torchao", {"scheme": "int8-weight-only"}, "quantized none of the 8 linear layers of GPT2LMHeadModel"),
    ],
    ids=["llm-compressor", "any-method"],
)
def test_a_method_that_quantizes_nothing_never_saves_the_baseline(models, tmp_path, method, params, error):
    """Past validation (a config read elsewhere), a backend's silent no-op on GPT-2's Conv1D fails the variant."""
    with pytest.raises(QuantizationError, match=error):
        quantize(method, params, models("gpt2"), tmp_path / "gpt2")
    assert not (tmp_path / "gpt2").exists()


@pytest.mark.fast
@pytest.mark.parametrize(
    ("config", "restored"),
    [
        ({"model_type": "gpt2", "n_positions": 1024}, {"n_ctx": 1024}),
        ({"model_type": "gpt2", "n_positions": 1024, "n_ctx": 2048}, None),  # a config that has it keeps its own
        ({"model_type": "llama", "hidden_size": 256}, None),
    ],
    ids=["gpt2", "has-it", "llama"],
)
def test_llama_cpp_converter_gets_the_config_keys_transformers_5_no_longer_writes(tmp_path, config, restored):
    from quantmill.methods._gguf import converter_config

    (tmp_path / "config.json").write_text(json.dumps(config))

    patched = converter_config(tmp_path)

    assert patched == (None if restored is None else {**config, **restored})


@pytest.mark.fast
def test_a_second_checkpoint_beside_the_model_is_not_counted(tmp_path):
    from quantmill.testing.recipes import DEMO_MODEL

    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    alone = read_model_shape(model)
    shutil.copy(model / "model.safetensors", model / "consolidated.safetensors")  # as Mistral's repos ship
    beside = read_model_shape(model)
    assert alone is not None and beside is not None
    assert (beside.parameters, beside.linear_parameters) == (alone.parameters, alone.linear_parameters)
