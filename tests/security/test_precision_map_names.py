"""Per-layer precision maps come from recipes (untrusted): their names reach llm-compressor's targets and a
file llama-quantize parses, and their patterns run in Python at validation and in llama.cpp's std::regex."""

from __future__ import annotations

import pytest

from quantmill.errors import RecipeError
from quantmill.recipe.load import load_recipe_text
from tests.search.test_mixed_realisation import recipe

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    "pattern",
    [
        ".*=tq1_0 |attn_q",  # llama.cpp splits its file on whitespace: a second, unchecked line with another type
        "(.|.)*x",  # backtracks exponentially in Python's re and in std::regex
        "a*b*c*",  # more repetitions than a pattern needs
        "ATTN_Q",  # llama.cpp lowercases patterns: \\D would become \\d
        "attn_q\nblk=q2_k",
    ],
)
def test_a_tensor_pattern_outside_the_safe_grammar_is_refused_with_file_line_and_field(tmp_path, pattern):
    text = recipe(f"    - {{method: gguf, type: q4_k_m, tensor_types: {{{pattern!r}: q4_k}}}}\n".replace("'", '"'))
    with pytest.raises(RecipeError) as raised:
        load_recipe_text(text, tmp_path)
    message = str(raised.value)
    assert "tensor_types" in message and "is not allowed" in message and ":" in message.split("tensor_types")[0]


def test_plain_tensor_names_and_simple_patterns_are_accepted(tmp_path):
    row = "    - {method: gguf, type: q4_k_m, tensor_types: {blk.0.ffn_down.weight: q8_0, attn_v: q6_k}}\n"
    variant = load_recipe_text(recipe(row), tmp_path).variants[0]
    assert dict(variant.params.tensor_types) == {"blk.0.ffn_down.weight": "q8_0", "attn_v": "q6_k"}


@pytest.mark.parametrize("name", ["re:.*", "model.layers.*", "model.layers.0.mlp.down_proj;rm"])
def test_layer_bits_name_only_modules_literally(tmp_path, name):
    with pytest.raises(RecipeError, match="is not a module name"):
        load_recipe_text(recipe(f'    - {{method: rtn, bits: 4, layer_bits: {{"{name}": 8}}}}\n'), tmp_path)
