"""`quantmill validate` on deliberately broken recipes: a precise message for each, never a traceback."""

from __future__ import annotations

import shutil
import struct

import pytest

from quantmill.cli import main
from tests.conftest import BASE_RECIPE, DEMO_MODEL

pytestmark = pytest.mark.fast

GPTQ_ROW = "    - {method: gptq, bits: [4, 8], group_size: 128}\n"
GATE_ROW = "  - {metric: tiny_world_mc/acc, min_recovery: 0.97}\n"


def replace(old: str, new: str) -> str:
    assert old in BASE_RECIPE, old
    return BASE_RECIPE.replace(old, new, 1)


def add_row(row: str) -> str:
    return replace(GPTQ_ROW, GPTQ_ROW + f"    - {row}\n")


def add_gate(gate: str) -> str:
    return replace(GATE_ROW, GATE_ROW + f"  - {gate}\n")


def without_calibration() -> str:
    lines = BASE_RECIPE.splitlines(keepends=True)
    start = lines.index("calibration:\n")
    return "".join(lines[:start] + lines[start + 2 :])


# (case id, recipe text, field path, message fragment, text on the offending line (None: no line check))
CASES = [
    ("unknown-top-level-key", BASE_RECIPE + "modle: x\n", "modle", "unknown key 'modle'", "modle: x"),
    ("did-you-mean-key", BASE_RECIPE + "gate: []\n", "gate", "did you mean 'gates'?", "gate: []"),
    ("missing-model", replace("model:\n", "modelx:\n"), "model", "required key 'model' is missing", None),
    (
        "unknown-method",
        add_row("{method: gtpq, bits: 4}"),
        "variants.methods[1].method",
        "did you mean 'gptq'?",
        "gtpq",
    ),
    (
        "bnb-has-no-3-bit",
        add_row("{method: bnb, types: [nf4, nf3]}"),
        "variants.methods[1].types[1]",
        "'nf3' is not allowed",
        "nf3",
    ),
    (
        "tokenizer-folder-missing",
        replace("model:\n", "model:\n  tokenizer: ./no-tokenizer-here\n"),
        "model.tokenizer",
        "no tokenizer at",
        "tokenizer: ./no-tokenizer-here",
    ),
    ("nan-threshold", add_gate("{metric: ppl, max: .nan}"), "gates[1].max", "should be a finite number", ".nan"),
    (
        "seed-beyond-numpy",
        replace("evaluation:\n", "evaluation:\n  seed: 99999999999999999999\n"),
        "evaluation.seed",
        "less than or equal to 4294967295",
        "seed: 9999",
    ),
    ("awq-only-4-bit", add_row("{method: awq, bits: 3}"), "variants.methods[1].bits", "expected 4", "awq"),
    (
        "group-size-does-not-divide",
        add_row("{method: rtn, bits: 4, group_size: 96}"),
        "variants.methods[1].group_size",
        "group size 96 does not divide the in-features of mlp.down_proj (512)",
        "group_size: 96",
    ),
    (
        "duplicate-variant-id",
        add_row("{method: gptq, bits: 4}"),
        "variants.methods[1]",
        "duplicate variant id 'gptq-w4-g128'",
        "{method: gptq, bits: 4}",
    ),
    (
        "gate-task-not-evaluated",
        add_gate("{metric: arc_easy/acc, min: 0.5}"),
        "gates[1].metric",
        "task 'arc_easy' is not in evaluation.tasks",
        "arc_easy",
    ),
    (
        "gate-rule-wrong-direction",
        add_gate("{metric: ppl, min_recovery: 0.9}"),
        "gates[1].metric",
        "'min_recovery' does not fit 'ppl'",
        "ppl, min_recovery",
    ),
    (
        "gate-two-thresholds",
        add_gate("{metric: ppl, max: 9, max_increase_pct: 5}"),
        "gates[1]",
        "exactly one threshold, got 2",
        "max: 9",
    ),
    (
        "gate-metric-not-produced",
        add_gate("{metric: decode_tok_s, min: 5}").replace("evaluation:\n", "evaluation:\n  metrics: [size]\n", 1),
        "gates[1].metric",
        "no evaluation produces 'decode_tok_s'",
        "decode_tok_s",
    ),
    (
        "gate-unknown-metric",
        add_gate("{metric: acuracy, min: 0.5}"),
        "gates[1].metric",
        "unknown metric 'acuracy'",
        "acuracy",
    ),
    (
        "gate-metric-task-does-not-report",
        add_gate("{metric: tiny_world_mc/f1, min: 0.5}"),
        "gates[1].metric",
        "does not report 'f1'",
        "tiny_world_mc/f1",
    ),
    ("wrong-type", add_row("{method: rtn, bits: four}"), "variants.methods[1].bits", "'four' is not allowed", "four"),
    ("negative-bits", add_row("{method: hqq, bits: -4}"), "variants.methods[1].bits", "-4 is not allowed", "-4"),
    (
        "duplicate-yaml-key",
        replace("name: base\n", "name: base\nname: again\n"),
        "name",
        "duplicate key 'name'",
        "name: again",
    ),
    (
        "yaml-syntax-error",
        replace("  tasks: [tiny_world_mc]\n", "  tasks: [tiny_world_mc\n"),
        "<recipe>",
        "YAML syntax error",
        None,
    ),
    (
        "bad-cron",
        BASE_RECIPE + "schedule: '61 * * * *'\n",
        "schedule",
        "cron minute value '61' is outside 0-59",
        "schedule",
    ),
    (
        "bad-device",
        BASE_RECIPE + "device: gpu\n",
        "device",
        "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'",
        "device: gpu",
    ),
    (
        "model-folder-missing",
        replace("  id: ", "  id: ./no-such-model #"),
        "model.id",
        "no model folder with a config.json",
        "no-such-model",
    ),
    (
        "calibration-file-missing",
        replace("calibration.jsonl", "missing.jsonl"),
        "calibration.dataset.path",
        "data file not found",
        "missing.jsonl",
    ),
    ("calibration-needed", without_calibration(), "calibration", "need calibration data", None),
    (
        "override-unknown-variant",
        BASE_RECIPE.replace("variants:\n", "variants:\n  overrides:\n    gptq-w4-g64: {dampening: 0.1}\n", 1),
        "variants.overrides.gptq-w4-g64",
        "did you mean 'gptq-w4-g128'?",
        "gptq-w4-g64",
    ),
    (
        "override-axis",
        BASE_RECIPE.replace("variants:\n", "variants:\n  overrides:\n    gptq-w4-g128: {bits: 8}\n", 1),
        "variants.overrides.gptq-w4-g128.bits",
        "'bits' is a matrix axis",
        "{bits: 8}",
    ),
    (
        "repo-template-code",
        BASE_RECIPE + "publish:\n  repo_name: '{variant.__class__}'\n",
        "publish.repo_name",
        "template field '{variant.__class__}' is not allowed",
        "repo_name",
    ),
    (
        "bad-namespace",
        BASE_RECIPE + "publish:\n  namespace: my org\n",
        "publish.namespace",
        "invalid namespace 'my org'",
        "namespace",
    ),
    (
        "gguf-type-typo",
        add_row("{method: gguf, types: [Q4_KM]}"),
        "variants.methods[1].types[0]",
        "did you mean 'q4_k_m'?",
        "Q4_KM",
    ),
    (
        "iq-without-imatrix",
        add_row("{method: gguf, type: iq2_xs, imatrix: false}"),
        "variants.methods[1]",
        "needs an importance matrix",
        "iq2_xs",
    ),
    ("unknown-row-key", add_row("{method: rtn, bitz: 4}"), "variants.methods[1].bitz", "did you mean 'bits'?", "bitz"),
    (
        "not-a-bool",
        BASE_RECIPE.replace("  id: ", "  trust_remote_code: yes please\n  id: ", 1),
        "model.trust_remote_code",
        "valid boolean",
        "trust_remote_code",
    ),
    (
        "negative-limit",
        replace("  tasks: [tiny_world_mc]\n", "  tasks: [tiny_world_mc]\n  limit: -1\n"),
        "evaluation.limit",
        "greater than 0",
        "limit: -1",
    ),
    (
        "zero-batch-size",
        replace("  tasks: [tiny_world_mc]\n", "  tasks: [tiny_world_mc]\n  batch_size: 0\n"),
        "evaluation.batch_size",
        "positive integer",
        "batch_size: 0",
    ),
    (
        "stride-over-window",
        replace("  perplexity:\n", "  perplexity:\n    stride: 512\n"),
        "evaluation.perplexity",
        "stride (512) must not exceed max_length (256)",
        None,
    ),
    (
        "id-for-many-variants",
        replace(GPTQ_ROW, "    - {method: gptq, bits: [4, 8], group_size: 128, id: my-gptq}\n"),
        "variants.methods[0].id",
        "this row expands to 2",
        "my-gptq",
    ),
    (
        "id-baseline-reserved",
        replace(GPTQ_ROW, "    - {method: gptq, bits: 4, group_size: 128, id: baseline}\n"),
        "variants.methods[0].id",
        "'baseline' is reserved",
        "id: baseline",
    ),
    (
        "torchao-int4-no-cpu",
        add_row("{method: torchao, scheme: int4-weight-only}") + "device: cpu\n",
        "variants.methods[1].scheme",
        "no CPU kernel",
        "int4-weight-only",
    ),
    (
        "empty-axis-list",
        add_row("{method: rtn, bits: []}"),
        "variants.methods[1].bits",
        "'bits' is an empty list",
        "bits: []",
    ),
    (
        "python-tag",
        BASE_RECIPE + "description: !!python/object/apply:os.system ['echo pwned']\n",
        "description",
        "unsupported YAML tag",
        "description",
    ),
    (
        "endpoint-not-url",
        BASE_RECIPE + "publish:\n  endpoint: localhost:8080\n",
        "publish.endpoint",
        "endpoint must be an http(s) URL",
        "endpoint",
    ),
    (
        "path-too-long",
        replace("  include_paths: [", "  include_paths: [" + "x" * 5000 + ", "),
        "evaluation.include_paths[0]",
        "task folder not found",
        "include_paths",
    ),
    (
        "task-listed-twice",
        replace("  tasks: [tiny_world_mc]", "  tasks: [tiny_world_mc, tiny_world_mc]"),
        "evaluation.tasks",
        "a task is listed twice",
        "tasks:",
    ),
]


def test_the_unbroken_recipe_is_valid(write_recipe, capsys):
    """Every case breaks this recipe in one place, so each problem reported is that case's own."""
    code = main(["validate", str(write_recipe(BASE_RECIPE))])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "problem" not in out.err
    assert ": 3 variants" in " ".join(out.out.split())  # gptq-w4, gptq-w8, gguf-q4_k_m (the console wraps)


@pytest.mark.parametrize(("text", "path", "fragment", "line_text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_recipe_reports_precise_problem(write_recipe, capsys, text, path, fragment, line_text):
    file = write_recipe(text)
    code = main(["validate", str(file)])
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.out + out.err
    problems = [line.strip() for line in out.err.splitlines() if line.startswith("  ")]
    matching = [p for p in problems if f": {path}: " in p and fragment in p]
    assert matching, f"no problem at {path!r} containing {fragment!r} in:\n{out.err}"
    assert matching[0].startswith(str(file))
    if line_text is not None:
        expected_line = next(i for i, line in enumerate(text.splitlines(), 1) if line_text in line)
        assert matching[0].startswith(f"{file}:{expected_line}:"), matching[0]


def test_every_problem_reported_at_once(write_recipe, capsys):
    text = add_row("{method: gtpq}") + "device: gpu\nschedule: 'x'\n"
    code = main(["validate", str(write_recipe(text))])
    err = capsys.readouterr().err
    assert code == 2
    assert "3 problem(s)" in err
    assert "unknown method 'gtpq'" in err and "device must be" in err and "5 fields" in err


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "the recipe is empty"),
        ("- a\n- b\n", "a recipe must be a mapping"),
        (
            "a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
            "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
            "f: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
            "alias bomb",
        ),
        ("x:\n" + "".join("  " * i + f"  k{i}:\n" for i in range(60)), "nesting deeper than 40"),
    ],
    ids=["empty", "list", "alias-bomb", "deep-nesting"],
)
def test_unusable_documents(write_recipe, capsys, content, fragment):
    code = main(["validate", str(write_recipe(content))])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err


def test_binary_garbage_and_directories(tmp_path, capsys):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(b"\x00\xff\xfe binary \x81")
    assert main(["validate", str(garbage)]) == 2
    assert "not UTF-8" in capsys.readouterr().err
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    assert main(["validate", str(folder)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("weights", "config", "fragment"),
    [
        (struct.pack("<Q", 2) + b"[]", None, "its header is not a table of tensors"),
        (b"ab", None, "2 bytes, shorter than a header"),
        (struct.pack("<Q", 10**12) + b"{}", None, "its header claims 1000000000000 bytes"),
        (struct.pack("<Q", 20) + b'{"a":{"shape":"xx"}}', None, "tensor 'a' has no valid shape, dtype and offsets"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", None, "its header is not JSON"),
        (None, "[]", None),  # a config that is not a mapping: no shape, no crash
        (None, '{"text_config": 5, "architectures": "x", "model_type": ["llama"], "head_dim": "x"}', None),
    ],
    ids=["list-header", "two-bytes", "huge-length", "string-shape", "not-utf8", "config-list", "config-odd"],
)
def test_malformed_model_files_are_a_located_problem_not_a_crash(tmp_path, capsys, weights, config, fragment):
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    if weights is not None:
        (model / "model.safetensors").write_bytes(weights)
    if config is not None:
        (model / "config.json").write_text(config)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE_RECIPE.replace(f"id: {DEMO_MODEL}", "id: model"))
    code = main(["validate", str(recipe)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "internal error" not in out.err, out.err
    if fragment is None:
        assert code == 0, out.err
    else:
        assert (
            code == 2
            and f"model.id: {model}: model.safetensors is not a readable safetensors file: {fragment}" in out.err
        )
