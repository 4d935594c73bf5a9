"""Validation against the real pretrained stories260K model, whose widths are 64 and 172."""

from __future__ import annotations

import pytest

from quantmill.errors import RecipeError
from quantmill.recipe import load_recipe


def recipe_for(model_dir, rows: str) -> str:
    return f"""\
model: {{id: {model_dir}}}
evaluation: {{metrics: [size]}}
variants:
  methods:
{rows}
"""


@pytest.mark.fast
def test_group_sizes_are_checked_against_the_real_shape(stories_hf, write_recipe):
    rows = "    - {method: rtn, bits: 4, group_size: 128}\n    - {method: hqq, bits: 4, group_size: 32}\n"
    with pytest.raises(RecipeError) as caught:
        load_recipe(write_recipe(recipe_for(stories_hf, rows)))
    messages = [p.format() for p in caught.value.problems]
    assert len(messages) == 2, messages
    assert "group size 128 does not divide the in-features of mlp.down_proj (172)" in messages[0]
    assert "self_attn.o_proj (64)" in messages[0]
    assert "valid group sizes for this model: none, or -1 for per-channel" in messages[0]
    assert "group size 32 does not divide the in-features of mlp.down_proj (172)" in messages[1]


@pytest.mark.fast
def test_methods_without_groups_validate_on_the_real_shape(stories_hf, write_recipe):
    rows = (
        "    - {method: rtn, bits: 8, group_size: -1}\n    - {method: bnb, types: [nf4, int8]}\n"
        "    - {method: gguf, types: [q8_0, q4_k_m]}\n"
    )
    loaded = load_recipe(write_recipe(recipe_for(stories_hf, rows)))
    assert [v.id for v in loaded.variants] == ["rtn-w8-gch", "bnb-nf4", "bnb-int8", "gguf-q8_0", "gguf-q4_k_m"]
    assert loaded.shape.linear_in_features["mlp.down_proj"] == 172
    assert loaded.shape.parameters is not None


@pytest.mark.slow
def test_each_method_works_or_is_refused_up_front_on_the_real_model(stories_hf, write_recipe, tmp_path):
    """Widths 64 and 172: grouped methods are refused by validation; the rest quantize and reload."""
    from quantmill import stages
    from quantmill.resolve import resolve_model

    refused = {
        "gptq": "{method: gptq, bits: 4, group_size: 128}",
        "awq": "{method: awq, bits: 4, group_size: 64}",
        "hqq": "{method: hqq, bits: 4, group_size: 64}",
        "rtn": "{method: rtn, bits: 4, group_size: 32}",
        "qat": "{method: qat, bits: 4, group_size: 32}",
        "torchao": "{method: torchao, scheme: int8-dynamic-intx, group_size: 32}",
    }
    for method, row in refused.items():
        with pytest.raises(RecipeError) as caught:
            load_recipe(write_recipe(recipe_for(stories_hf, f"    - {row}\n")))
        assert any("does not divide the in-features" in p.message for p in caught.value.problems), method
    works = [
        "{method: gptq, bits: 8, group_size: -1}",
        "{method: rtn, bits: 4, group_size: -1}",
        "{method: int8}",
        "{method: fp8}",
        "{method: bnb, types: [nf4, int8]}",
        "{method: torchao, scheme: int8-weight-only}",
    ]
    text = recipe_for(stories_hf, "".join(f"    - {row}\n" for row in works)).replace(
        "evaluation: {metrics: [size]}",
        f"evaluation: {{metrics: [size]}}\ncalibration: {{dataset: {{path: {tmp_path / 'c.txt'}}}}}",
    )
    (tmp_path / "c.txt").write_text(
        "Once upon a time, there was a little girl named Lily.\nShe loved to play outside.\n" * 20
    )
    loaded = load_recipe(write_recipe(text))
    resolved = resolve_model(loaded)
    calibration = stages.prepare_calibration(loaded, resolved)
    for variant in loaded.variants:
        artifact = stages.quantize_one(loaded, variant, resolved, calibration, "cpu", tmp_path / variant.id)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(artifact.path)
        assert model.config.vocab_size == 512, variant.id
