"""Valid recipes: validate, plan (table and JSON), schema, init."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest

from quantmill.cli import main
from quantmill.plan import Plan
from quantmill.recipe import load_recipe
from quantmill.yamlio import load_yaml_file
from tests.conftest import BASE_RECIPE, REPO

pytestmark = pytest.mark.fast

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert "demo.yaml" in names and len(names) >= 3


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(recipe, capsys):
    assert main(["validate", str(recipe)]) == 0
    assert "✓" in capsys.readouterr().out


def test_validate_a_folder(capsys):
    assert main(["validate", str(REPO / "recipes")]) == 0
    assert capsys.readouterr().out.count("✓") == len(RECIPES)


def test_matrix_expansion_and_ids():
    loaded = load_recipe(REPO / "recipes" / "demo.yaml")
    ids = [v.id for v in loaded.variants]
    assert ids == [
        "gptq-w4-g128",
        "gptq-w8-g128",
        "rtn-w2-g64",
        "bnb-nf4",
        "bnb-int8",
        "gguf-q8_0",
        "gguf-q4_k_m",
        "gguf-q2_k",
    ]
    assert loaded.variant("gguf-q4_k_m").params.type == "q4_k_m"
    assert all(len(v.gates) == 3 for v in loaded.variants)


def test_overrides_and_variant_gates(write_recipe):
    text = BASE_RECIPE.replace(
        "variants:\n",
        "variants:\n  overrides:\n    gptq-w8-g128:\n      dampening: 0.1\n"
        "      gates: [{metric: tiny_world_mc/acc, max_drop: 0.01}]\n",
        1,
    )
    loaded = load_recipe(write_recipe(text))
    w8, w4 = loaded.variant("gptq-w8-g128"), loaded.variant("gptq-w4-g128")
    assert w8.params.dampening == 0.1 and w4.params.dampening == 0.01
    assert [g.rule for g in w8.gates] == ["max_drop"]  # replaces the global rule on the same metric
    assert [g.rule for g in w4.gates] == ["min_recovery"]


def test_plan_table(capsys):
    assert main(["plan", str(REPO / "recipes" / "demo.yaml")]) == 0
    out = capsys.readouterr().out
    for variant in ("gptq-w4-g128", "bnb-nf4", "gguf-q2_k"):
        assert variant in out
    assert "gates for every variant" in out and "publish target" in out


def test_plan_json_round_trips(capsys):
    assert main(["plan", str(REPO / "recipes" / "demo.yaml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    plan = Plan.from_dict(data)
    assert plan.to_dict() == data
    sizes = {v.id: v.expected_bytes for v in plan.variants}
    assert sizes["gptq-w4-g128"] < sizes["gptq-w8-g128"] < plan.baseline_bytes
    # where the publisher writes: the demo sets no repo_name, so its GGUF types share one repo
    destinations = {v.id: v.publish_to.rsplit("/", 2)[-2:] for v in plan.variants if v.publish_to}
    assert destinations["gguf-q2_k"] == destinations["gguf-q8_0"] == ["quantmill-demo", "tiny-llama-GGUF"]
    assert destinations["gptq-w4-g128"] == ["quantmill-demo", "tiny-llama-gptq-w4-g128"]


def test_schema_accepts_shipped_recipes_and_rejects_unknown_keys(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for recipe in RECIPES:
        errors = list(validator.iter_errors(load_yaml_file(recipe).data))
        assert not errors, (recipe, [e.message for e in errors][:3])
    bad = load_yaml_file(REPO / "recipes" / "demo.yaml").data | {"modle": 1}
    assert list(validator.iter_errors(bad))


def test_init_writes_a_valid_recipe_and_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "recipe.yaml"
    assert main(["init", str(target)]) == 0
    assert target.read_text().startswith("# A quantmill recipe")
    assert main(["validate", str(target)]) == 0
    assert main(["init", str(target)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_trust_remote_code_is_echoed(write_recipe, capsys):
    text = BASE_RECIPE.replace("  id: ", "  trust_remote_code: true\n  id: ", 1)
    assert main(["validate", str(write_recipe(text))]) == 0
    assert "trust_remote_code: true" in capsys.readouterr().out


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from quantmill.cli import build_parser; build_parser().format_help(); "
        "import quantmill.recipe; print(sorted(m for m in ('torch', 'transformers', 'prefect', 'lm_eval') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_help_exits_zero():
    result = subprocess.run([sys.executable, "-m", "quantmill.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "validate" in result.stdout and "Exit codes" in result.stdout


def test_plan_of_a_rerun_says_what_failed_last_time_and_the_built_in_checks(tmp_path, monkeypatch, capsys):
    from quantmill.pipeline import start_run
    from quantmill.record import RunStatus, VariantStatus
    from quantmill.runstore import RunStore
    from quantmill.settings import get_settings

    monkeypatch.setenv("QUANTMILL_RUNS_DIR", str(tmp_path / "runs"))
    get_settings.cache_clear()
    try:
        recipe = REPO / "recipes" / "demo.yaml"
        run = start_run(load_recipe(recipe), only=["gguf-q8_0", "bnb-int8"], store=RunStore(tmp_path / "runs"))
        run.record.variants["gguf-q8_0"].status = VariantStatus.FAILED
        run.record.variants[
            "gguf-q8_0"
        ].error = "TokenizerDriftError: tokenizer drift: 6 of 6 texts tokenize differently"
        run.record.variants["bnb-int8"].status = VariantStatus.PASSED
        run.record.status = RunStatus.COMPLETED
        run.run.write_record(run.record)
        assert main(["plan", str(recipe), "--json"]) == 0
        rows = {v["id"]: v["last_run"] for v in json.loads(capsys.readouterr().out)["variants"]}
        assert rows["gguf-q8_0"] == "failed: TokenizerDriftError: tokenizer drift: 6 of 6 texts tokenize differently"
        assert rows["bnb-int8"] == "passed" and rows["gptq-w4-g128"] is None  # not in that run
        assert main(["plan", str(recipe)]) == 0
        out = capsys.readouterr().out
        assert "last run" in out
        assert "last run: gguf-q8_0 failed: TokenizerDriftError: tokenizer drift: 6 of 6 texts" in out
        assert "built-in checks for every variant: tokenizer fidelity" in out and "servable" in out
    finally:
        get_settings.cache_clear()
