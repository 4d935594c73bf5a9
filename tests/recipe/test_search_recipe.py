"""A recipe's ``search:`` section: validated like the rest (file, line, field), expanded to candidates, planned."""

from __future__ import annotations

import json

import pytest

from quantmill.cli import main
from tests.conftest import BASE_RECIPE

pytestmark = pytest.mark.fast

MATRIX = """\
variants:
  methods:
    - {method: gptq, bits: [4, 8], group_size: 128}
    - {method: gguf, types: [q4_k_m]}
"""
SEARCH = """\
search:
  objective: {minimize: size_mb}
  constraints:
    - {metric: tiny_world_mc/acc, min_recovery: 0.99}
    - {metric: ppl, max_increase_pct: 5}
  space:
    - {method: rtn, bits: [4, 8], group_size: [32, 64]}
    - {method: gguf, types: [q4_k_m, q8_0]}
    - {mixed: {method: gptq, bits: [2, 4, 8], group_size: 64}}
  budget: {full_evaluations: 3}
"""
assert MATRIX in BASE_RECIPE
SEARCH_RECIPE = BASE_RECIPE.replace(MATRIX, SEARCH)


def broken(old: str, new: str) -> str:
    assert old in SEARCH_RECIPE, old
    return SEARCH_RECIPE.replace(old, new, 1)


# (case id, recipe text, field path, message fragment, text on the offending line (None: no line check))
CASES = [
    (
        "both-matrix-and-search",
        SEARCH_RECIPE + MATRIX,
        "search",
        "give 'variants' or 'search', not both",
        "search:",
    ),
    ("neither", BASE_RECIPE.replace(MATRIX, ""), "", "needs 'variants' (a matrix) or 'search'", None),
    (
        "two-goals",
        broken("{minimize: size_mb}", "{minimize: size_mb, maximize: decode_tok_s}"),
        "search.objective",
        "exactly one of 'minimize' or 'maximize'",
        "objective:",
    ),
    (
        "not-an-objective",
        broken("{minimize: size_mb}", "{minimize: decode_tok_s}"),
        "search.objective.minimize",
        "'decode_tok_s' is not allowed",
        "objective:",
    ),
    (
        "objective-not-measured",
        broken("{minimize: size_mb}", "{maximize: decode_tok_s}").replace(
            "  perplexity:", "  metrics: [size]\n  perplexity:"
        ),
        "search.objective.maximize",
        "add 'speed' to evaluation.metrics",
        "objective:",
    ),
    (
        "constraint-unknown-task",
        broken("tiny_world_mc/acc, min_recovery", "tiny_wrld_mc/acc, min_recovery"),
        "search.constraints[0].metric",
        "task 'tiny_wrld_mc' is not in evaluation.tasks",
        "tiny_wrld_mc",
    ),
    (
        "constraint-two-thresholds",
        broken("{metric: ppl, max_increase_pct: 5}", "{metric: ppl, max_increase_pct: 5, max: 9}"),
        "search.constraints[1]",
        "exactly one threshold",
        "max: 9",
    ),
    (
        "space-row-bad-type",
        broken("types: [q4_k_m, q8_0]", "types: [q4_k_m, q9]"),
        "search.space[1].types[1]",
        "'q9' is not allowed",
        "q9",
    ),
    (
        "space-row-unknown-method",
        broken("{method: rtn,", "{method: rnt,"),
        "search.space[0].method",
        "did you mean 'rtn'?",
        "rnt",
    ),
    (
        "mixed-gguf-with-bits",
        broken("{method: gptq, bits: [2, 4, 8], group_size: 64}", "{method: gguf, bits: [2, 4]}"),
        "search.space[2].mixed",
        "mixed gguf takes its levels in 'types'",
        "mixed:",
    ),
    (
        "mixed-gptq-without-bits",
        broken("{method: gptq, bits: [2, 4, 8], group_size: 64}", "{method: gptq, types: [q4_k, q8_0]}"),
        "search.space[2].mixed",
        "mixed gptq takes its levels in 'bits'",
        "mixed:",
    ),
    (
        "mixed-unknown-key",
        broken("group_size: 64}}", "group_size: 64, step: 3}}"),
        "search.space[2].mixed.step",
        "did you mean 'steps'?",
        "mixed:",
    ),
    (
        "mixed-bits-not-a-width",
        broken("bits: [2, 4, 8], group_size: 64}", "bits: [1, 5, 99], group_size: 64}"),
        "search.space[2].mixed",
        "bits [1, 5, 99] are not all allowed; valid: [2, 3, 4, 8]",
        "mixed:",
    ),
    (
        "mixed-unknown-tensor-type",
        broken("{method: gptq, bits: [2, 4, 8], group_size: 64}", "{method: gguf, types: [q2_k, q9_k]}"),
        "search.space[2].mixed",
        "unknown tensor type(s) ['q9_k']",
        "mixed:",
    ),
    (
        "mixed-entry-repeated",
        broken(
            "group_size: 64}}\n", "group_size: 64}}\n    - {mixed: {method: gptq, bits: [2, 4, 8], group_size: 64}}\n"
        ),
        "search.space[3]",
        "this mixed entry repeats an earlier one",
        None,
    ),
    (
        "too-many-candidates",  # 6 from the rows, up to 4 per mixed entry: 6 + 63 × 4 > 256
        broken(
            "    - {mixed: {method: gptq, bits: [2, 4, 8], group_size: 64}}\n",
            "".join(f"    - {{mixed: {{method: rtn, bits: [2, 8], group_size: {g}}}}}\n" for g in range(1, 64)),
        ),
        "search.space",
        "makes up to 258 candidates (6 from its rows, up to 252 mixed), more than the limit of 256",
        "space:",
    ),
    (
        "too-many-mixed-entries",
        broken(
            "    - {mixed: {method: gptq, bits: [2, 4, 8], group_size: 64}}\n",
            "".join(f"    - {{mixed: {{method: rtn, bits: [2, 8], group_size: {g}}}}}\n" for g in range(1, 10)),
        ),
        "search.space",
        "has 9 mixed entries; at most 8",
        "space:",
    ),
    (
        "qat-row-over-the-training-cap",
        broken(
            "    - {method: gguf, types: [q4_k_m, q8_0]}\n",
            "    - {method: gguf, types: [q4_k_m, q8_0]}\n    - {method: qat, bits: 4, training: {steps: 1000000}}\n",
        ),
        "search.space[2].training",
        "over the limit of",
        "method: qat",
    ),
    (
        "zero-budget",
        broken("{full_evaluations: 3}", "{full_evaluations: 0}"),
        "search.budget.full_evaluations",
        "greater than 0",
        "full_evaluations: 0",
    ),
]


@pytest.mark.parametrize(("text", "path", "fragment", "line_text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_search_reports_precise_problem(write_recipe, capsys, text, path, fragment, line_text):
    file = write_recipe(text)
    code = main(["validate", str(file)])
    out = capsys.readouterr()
    assert code == 2, out.out
    assert "Traceback" not in out.out + out.err
    problems = [line.strip() for line in out.err.splitlines() if line.startswith("  ")]
    matching = [p for p in problems if (f": {path}: " if path else ": ") in p and fragment in p]
    assert matching, f"no problem at {path!r} containing {fragment!r} in:\n{out.err}"
    assert matching[0].startswith(str(file))
    if line_text is not None:
        expected_line = next(i for i, line in enumerate(text.splitlines(), 1) if line_text in line)
        assert matching[0].startswith(f"{file}:{expected_line}:"), matching[0]


def test_search_space_expands_to_candidates_gated_by_the_constraints(write_recipe):
    from quantmill.recipe import load_recipe

    loaded = load_recipe(write_recipe(SEARCH_RECIPE))
    assert [v.id for v in loaded.variants] == [
        "rtn-w4-g32",
        "rtn-w4-g64",
        "rtn-w8-g32",
        "rtn-w8-g64",
        "gguf-q4_k_m",
        "gguf-q8_0",
    ]
    # the recipe's own gate on the same metric (min_recovery 0.97) is replaced by the constraint
    assert {(g.metric, g.rule, g.threshold) for g in loaded.variants[0].gates} == {
        ("tiny_world_mc/acc", "min_recovery", 0.99),
        ("ppl", "max_increase_pct", 5),
    }
    assert [m.model_dump() for m in loaded.mixed_spaces] == [
        {"method": "gptq", "bits": [2, 4, 8], "group_size": 64, "types": None, "steps": 4}
    ]


def test_plan_shows_the_search(write_recipe, capsys):
    file = write_recipe(SEARCH_RECIPE)
    assert main(["plan", str(file), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["search"]["objective"] == "minimize size_mb"
    assert plan["search"]["budget"] == 3
    assert plan["search"]["constraints"] == ["tiny_world_mc/acc min_recovery 0.99", "ppl max_increase_pct 5"]
    assert plan["search"]["mixed"] == ["gptq bits 2/4/8 g64, 4 steps: candidates made at run time"]
    assert "first 8 documents" in plan["search"]["proxy"]
    assert len(plan["variants"]) == 6
    assert main(["plan", str(file)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "search: minimize size_mb" in out and "at most 3 full evaluations" in out


def test_json_schema_knows_the_search_section():
    from quantmill.recipe.jsonschema import recipe_json_schema

    schema = recipe_json_schema()
    space = schema["$defs"]["Search"]["properties"]["space"]["items"]["oneOf"]
    assert {"$ref": "#/$defs/MixedRow"} in space
    assert any(row.get("title") == "gguf row" for row in space)
    assert set(schema["$defs"]["Objective"]["properties"]) == {"minimize", "maximize"}
