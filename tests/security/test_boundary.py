"""The pieces of the trust boundary, one at a time: no model, no llama.cpp, no Prefect."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from quantmill.errors import PublishError, RecipeError
from quantmill.recipe import load_recipe, load_recipe_text
from quantmill.testing.recipes import DEMO_MODEL, DEMO_TASKS
from quantmill.trust.operator import get_operator

pytestmark = pytest.mark.fast

SENTINEL = "hf_SECURITYsentinelDoNotLeak0123456789"
RECIPE = f"""\
name: unit
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
evaluation: {{tasks: [], metrics: [size]}}
variants:
  methods:
    - {{method: rtn, bits: 8}}
publish: {{target: local, path: zoo, license: mit}}
"""


@pytest.fixture
def operator(monkeypatch):
    """Set operator settings through their environment variables for one test."""

    def configure(**settings):
        for key, value in settings.items():
            text = value if isinstance(value, str) else json.dumps(value)
            monkeypatch.setenv(f"QUANTMILL_{key.upper()}", text)
        get_operator.cache_clear()
        return get_operator()

    yield configure
    monkeypatch.undo()
    get_operator.cache_clear()


def problems_of(text: str, folder: Path) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text, folder)
    return [p.format() for p in caught.value.problems]


# --- the matrix is counted, not built ----------------------------------------------------------


def test_huge_matrix_is_refused_with_its_count_and_never_expanded(tmp_path, monkeypatch):
    from quantmill.recipe import matrix

    def no_expansion(*args, **kwargs):
        raise AssertionError("the matrix was expanded")

    monkeypatch.setattr(matrix, "_expand_row", no_expansion)
    axis = ", ".join(str(i) for i in range(4000))
    text = RECIPE.replace("{method: rtn, bits: 8}", f"{{method: rtn, bits: [{axis}], group_size: [{axis}]}}")
    [problem] = problems_of(text, tmp_path)
    assert "variants.methods: the matrix expands to 16000000 variants, more than the limit of 256" in problem


def test_matrix_limit_is_the_operators(tmp_path, operator):
    operator(max_variants=2)
    text = RECIPE.replace("{method: rtn, bits: 8}", "{method: rtn, bits: [4, 8], group_size: [32, 128]}")
    assert any("4 variants, more than the limit of 2" in p for p in problems_of(text, tmp_path))
    operator(max_variants=4)
    assert len(load_recipe_text(text, tmp_path).variants) == 4


# --- capabilities --------------------------------------------------------------------------------


def test_capabilities_are_listed_and_granted_per_recipe(tmp_path, operator):
    text = RECIPE.replace("metrics: [size]}", f"metrics: [size], include_paths: ['{DEMO_TASKS}']}}")
    loaded = load_recipe_text(text, tmp_path)  # the trusted policy lists them and allows them
    assert {r.capability for r in loaded.capabilities} == {"task_code"}
    assert any("!function utils.load_multiple_choice" in r.detail for r in loaded.capabilities)

    operator(policy="untrusted", data_roots=[str(DEMO_MODEL.parent)])
    refused = problems_of(text, tmp_path)
    assert refused and all("needs capability 'task_code'" in p for p in refused)
    operator(policy="untrusted", data_roots=[str(DEMO_MODEL.parent)], grants={"un*": ["task_code"]})
    assert load_recipe_text(text, tmp_path).capabilities

    # by name: only the file named after the recipe; any other file could say "name: unit"
    (tmp_path / "unit.yaml").write_text(text)
    (tmp_path / "pr").mkdir()
    claim = tmp_path / "pr" / "claims-the-name.yaml"
    claim.write_text(text)
    assert load_recipe(tmp_path / "unit.yaml").capabilities
    with pytest.raises(RecipeError, match="needs capability 'task_code'.*grants it to recipe 'unit'") as refused:
        load_recipe(claim)
    assert f"grants: {{'{claim}': [task_code]}}" in str(refused.value)  # the grant that would hold: its path
    by_path = {str(tmp_path / "pr" / "*"): ["task_code"]}
    operator(policy="untrusted", data_roots=[str(DEMO_MODEL.parent)], grants=by_path)
    assert load_recipe(claim).capabilities  # by path: that file
    # beside the recipe it names, a second file of that name is refused (names pick runs and repos too)
    (tmp_path / "claims-too.yaml").write_text(text)
    with pytest.raises(RecipeError, match="recipe name 'unit' is also the name of unit.yaml"):
        load_recipe(tmp_path / "claims-too.yaml")


def test_the_metrics_that_are_not_code_are_lm_evals_own():
    from quantmill.trust.capabilities import LM_EVAL_METRICS

    # a fresh process: tasks imported by other tests register metrics of their own
    registered = "import json, lm_eval.api.metrics as m, lm_eval.api.registry as r; print(json.dumps(list(r.metric_registry.keys())))"
    names = subprocess.run([sys.executable, "-c", registered], capture_output=True, text=True, check=True).stdout
    assert frozenset(json.loads(names)) == LM_EVAL_METRICS  # lm-eval changed: update the copy


def test_plain_field_access_is_not_task_code():
    from quantmill.trust.capabilities import is_plain_jinja

    assert is_plain_jinja("{{question}} and {{ doc.choices[0] }} {{answers['text']}}")
    for code in ("{% for x in y %}{% endfor %}", "{{ x.__class__ }}", "{{ lipsum() }}", "{{ x|attr('y') }}"):
        assert not is_plain_jinja(code), code


def test_include_paths_walk_is_capped(tmp_path, operator):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for i in range(5):
        (tasks / f"t{i}.txt").write_text("x")
    operator(max_include_files=3)
    text = RECIPE.replace("metrics: [size]}", "metrics: [size], include_paths: [tasks]}")
    assert any("more than 3 files" in p for p in problems_of(text, tmp_path))


def test_a_model_folder_may_link_only_to_files_in_the_roots_and_holds_no_special_files(tmp_path, operator):
    model = tmp_path / "model"
    model.mkdir()
    for file in Path(DEMO_MODEL).iterdir():
        (model / file.name).symlink_to(file)  # links to files in a data root: a Hub cache snapshot looks like this
    operator(policy="untrusted", data_roots=[str(Path(DEMO_MODEL).parent)])
    text = RECIPE.replace(str(DEMO_MODEL), "model")
    load_recipe_text(text, tmp_path)  # accepted

    os.mkfifo(model / "special_tokens_map.json")  # a read that never ends
    (model / "chat_template.jinja").symlink_to("/proc/self/environ")
    (model / "extra").symlink_to(Path(DEMO_MODEL))  # a folder in the roots: not read file by file, so not allowed
    index = {"weight_map": {"lm_head.weight": "../../private/model.safetensors", "x": "model.safetensors"}}
    blob = tmp_path / "blobs" / "0a1b2c"  # as in a Hub cache snapshot, the index is a link to a blob in the roots
    blob.parent.mkdir()
    blob.write_text(json.dumps(index))  # transformers loads what it names, joined to the snapshot folder
    (model / "model.safetensors.index.json").symlink_to(blob)
    problems = problems_of(text, tmp_path)
    assert len(problems) == 4 and all(": model.id: " in p for p in problems), problems
    said = "\n".join(problems)
    assert "the link 'chat_template.jinja' in 'model' points outside the recipe's folder and data roots" in said
    assert "the link 'extra' in 'model' leads to a folder or special file, not a file" in said
    assert "'special_tokens_map.json' in 'model' is not a regular file (a FIFO, socket or device)" in said
    assert "'model.safetensors.index.json' in 'model' names shards outside its folder: ../../private/model" in said


def test_model_code_that_appears_after_validation_is_refused_before_any_variant_is_made(tmp_path):
    from quantmill.errors import QuantmillError
    from quantmill.resolve import resolve_model

    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    gguf = RECIPE.replace(str(DEMO_MODEL), "model").replace("{method: rtn, bits: 8}", "{method: gguf, types: [q8_0]}")
    loaded = load_recipe_text(gguf, tmp_path)
    # what a Hub model brings once downloaded (not on disk at validation): the tokenizer maps to its own code
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(QuantmillError, match=r"auto_map in model/tokenizer_config.json\), which making gguf"):
        resolve_model(loaded)


def test_every_task_config_in_a_task_file_is_checked_for_code_and_data_outside_the_roots(tmp_path, operator):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    inline = [  # a group's inline task configs, at any depth
        {"task": "a", "metric_list": [{"metric": "acc"}, {"metric": "/tmp/x/metric.py"}]},
        {"task": "b", "dataset_path": "text", "dataset_kwargs": {"data_files": {"test": "file:///proc/self/environ"}}},
        {"task": "c", "dataset_path": "json", "dataset_kwargs": {"data_files": ["*/notes.txt", "zip://a::x.zip"]}},
        {"task": "d", "dataset_path": "org/hub-name", "dataset_kwargs": {"data_files": "https://example.org/x.jsonl"}},
    ]
    (tasks / "group.yaml").write_text(json.dumps({"group": "g", "task": inline}))  # JSON is YAML
    operator(policy="untrusted", data_roots=[str(Path(DEMO_MODEL).parent)])
    problems = problems_of(RECIPE.replace("metrics: [size]}", "metrics: [size], include_paths: [tasks]}"), tmp_path)
    said = "\n".join(problems)
    assert (
        "needs capability 'task_code' (group.yaml: metric_list: \"/tmp/x/metric.py\" is not an lm-eval metric" in said
    )
    assert "group.yaml reads data at 'file:///proc/self/environ', outside the recipe's folder" in said
    assert "group.yaml reads data at '*/notes.txt', outside" in said  # relative: from the worker's folder
    assert "group.yaml reads data through 'zip://', which is not allowed" in said
    assert len(problems) == 4, said  # acc is lm-eval's; a Hub id and an https URL are not read from this disk


def test_operator_file_inside_the_recipes_folder_is_refused(tmp_path, operator, monkeypatch):
    (tmp_path / "operator.yaml").write_text("grants: {'*': [task_code]}\n")
    monkeypatch.setenv("QUANTMILL_OPERATOR_FILE", str(tmp_path / "operator.yaml"))
    operator(policy="untrusted", data_roots=[str(DEMO_MODEL)])
    assert any("operator settings file" in p for p in problems_of(RECIPE, tmp_path))


def test_operator_file_sets_grants_and_roots(tmp_path, operator, monkeypatch):
    file = tmp_path / "operator" / "operator.toml"
    file.parent.mkdir()
    file.write_text(f'policy = "untrusted"\ndata_roots = ["{DEMO_MODEL}"]\n[grants]\nunit = ["card_template"]\n')
    monkeypatch.setenv("QUANTMILL_OPERATOR_FILE", str(file))
    settings = operator()
    assert settings.policy == "untrusted" and settings.granted("unit", None) == {"card_template"}
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "card.j2").write_text("{{ card_data }}")
    text = RECIPE.replace("license: mit}", "license: mit, card_template: card.j2}")
    assert [r.capability for r in load_recipe_text(text, tmp_path / "recipes").capabilities] == ["card_template"]


# --- templates -----------------------------------------------------------------------------------


def card_data():
    from huggingface_hub import ModelCardData

    return ModelCardData(license="mit", quantmill={"recipe": "unit"})


def test_sandbox_blocks_the_environment(monkeypatch):
    from quantmill.publish.sandbox import render_model_card

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    with pytest.raises(PublishError, match="SecurityError"):
        render_model_card(card_data(), "{{ cycler.__init__.__globals__.os.environ }}")
    with pytest.raises(PublishError):
        render_model_card(card_data(), "{{ ''.__class__.__mro__[1].__subclasses__() }}")


def test_a_custom_template_renders_and_keeps_quantmill_metadata():
    from quantmill.publish.sandbox import render_model_card

    card = render_model_card(
        card_data(), "# {{ repo_name }}\n{% for r in rows %}- {{ r }}\n{% endfor %}", repo_name="x", rows=[1, 2]
    )
    assert card.text.strip() == "# x\n- 1\n- 2"
    assert card.data.quantmill == {"recipe": "unit"}  # no front matter in the template: quantmill's is added
    card.data.quantmill = {**card.data.quantmill, "fingerprint": "f"}  # what publishing does next


def test_a_card_containing_a_secret_is_not_published(monkeypatch, tmp_path):
    from quantmill.publish.sandbox import render_model_card

    monkeypatch.setenv("SOME_SERVICE_SECRET", "s3cr3t-value-abcdef")
    with pytest.raises(PublishError, match="SOME_SERVICE_SECRET"):
        render_model_card(card_data(), "{{ extras }}", extras="leak: s3cr3t-value-abcdef")


def test_the_hub_token_file_counts_as_a_secret(monkeypatch, tmp_path):
    import huggingface_hub.constants

    from quantmill import redact

    token_file = tmp_path / "token"
    token_file.write_text(SENTINEL + "\n")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(token_file))
    redact._hub_file_token.cache_clear()
    try:
        assert redact.secret_names_in(f"x {SENTINEL} y") == [redact.HUB_TOKEN_FILE]
        assert redact.redact(SENTINEL) == redact.MASK
        assert SENTINEL not in redact.scrubbed_environ({"A": SENTINEL, "B": "ok"}).values()
    finally:
        redact._hub_file_token.cache_clear()


def test_shared_store_credentials_count_as_secrets(monkeypatch, tmp_path):
    from quantmill import redact

    options = {"key": "AKIAEXAMPLEKEYID", "secret": SENTINEL, "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setenv("QUANTMILL_STORE_OPTIONS", json.dumps(options))
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = AKIAOTHER\naws_secret_access_key = fileSecretValue0123\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    redact._aws_file_secrets.cache_clear()
    try:
        said = redact.redact(f"store {SENTINEL} file fileSecretValue0123 region eu-west-1")
        assert said == "store *** file *** region eu-west-1"
        assert redact.secret_names_in(SENTINEL) == ["QUANTMILL_STORE_OPTIONS.secret"]
        env = redact.scrubbed_environ({"QUANTMILL_STORE_OPTIONS": json.dumps(options), "B": "ok"})
        assert env == {"B": "ok"}  # a variable holding a secret inside other text goes too
    finally:
        redact._aws_file_secrets.cache_clear()


# --- logs and subprocesses -----------------------------------------------------------------------


def test_prefect_log_records_are_masked_whatever_their_handler(monkeypatch):
    import io

    import quantmill  # noqa: F401 -- importing the library installs the masking

    monkeypatch.setenv("PREFECT_API_KEY", "pnu_prefect_key_0123456789")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a handler installed after quantmill, as Prefect's are
    logger = logging.getLogger("prefect.flow_runs.test")
    logger.addHandler(handler)
    try:
        logger.warning("key=%s", "pnu_prefect_key_0123456789")
        try:
            raise ValueError("pnu_prefect_key_0123456789")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "pnu_prefect_key_0123456789" not in stream.getvalue()
    assert "key=***" in stream.getvalue() and "ValueError: ***" in stream.getvalue()


def test_llama_cpp_tools_get_no_secret(monkeypatch):
    from quantmill.llamacpp import run_tool

    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.setenv("OTHER_API_KEY", "another-secret-value")
    output = run_tool([sys.executable, "-c", "import os; print(sorted(os.environ.items()))"], what="env")
    assert SENTINEL not in output and "another-secret-value" not in output and "HF_TOKEN" not in output


# --- links ---------------------------------------------------------------------------------------


def test_locks_refuse_links(tmp_path):
    from quantmill.runstore import exclusive_lock, one_of_locks
    from quantmill.trust.files import LinkRefusedError

    precious = tmp_path / "precious"
    precious.write_text("keep me")
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "a.lock").symlink_to(precious)
    with pytest.raises(LinkRefusedError), exclusive_lock(tmp_path / "locks" / "a.lock"):
        pass
    with pytest.raises(LinkRefusedError), one_of_locks([tmp_path / "locks" / "a.lock"]):
        pass
    (tmp_path / "linked").symlink_to(tmp_path / "locks")
    with pytest.raises(LinkRefusedError), exclusive_lock(tmp_path / "linked" / "b.lock"):
        pass
    assert precious.read_text() == "keep me" and not (tmp_path / "locks" / "b.lock").exists()


def test_local_zoo_never_writes_through_a_committed_link(tmp_path):
    from quantmill.publish.targets import LocalZoo

    precious = tmp_path / "precious"
    precious.write_text("keep me")
    repo = tmp_path / "zoo" / "org" / "model"
    repo.mkdir(parents=True)
    (repo / ".commits.jsonl").symlink_to(precious)
    with pytest.raises(PublishError):
        LocalZoo(tmp_path / "zoo").commit("org/model", {"README.md": b"card"}, "m")
    assert precious.read_text() == "keep me"
    collections = tmp_path / "zoo" / "org" / "collections"
    collections.mkdir()
    (collections / "c.tmp").symlink_to(precious)
    LocalZoo(tmp_path / "zoo").add_to_collection("org", "c", "org/model", "note")
    assert precious.read_text() == "keep me"


def test_an_untrusted_recipe_writes_only_repos_its_own_cards_name(tmp_path, operator):
    from quantmill.publish.publisher import commit_unless_present
    from quantmill.publish.targets import LocalZoo
    from quantmill.recipe.schema import Publish

    zoo = LocalZoo(tmp_path / "zoo")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights")

    def publish(recipe: str, repo: str, card_recipe: str) -> str | None:
        print_ = f"{recipe}-{weights.read_bytes().hex()}"  # what the commit would hold
        card = f"---\nquantmill:\n  recipe: {card_recipe}\n  fingerprint: {print_}\n---\ncard {recipe}\n"
        files = {"model.safetensors": weights}
        return commit_unless_present(zoo, repo, files, card, print_, "m", Publish(), recipe)

    assert publish("nightly", "org/Llama-gguf-q4_k_m", "nightly")  # the zoo's production repo (trusted)
    operator(policy="untrusted")
    with pytest.raises(PublishError, match="was published by recipe 'nightly', not by recipe 'pull-request'"):
        publish("pull-request", "org/Llama-gguf-q4_k_m", "pull-request")
    assert "card nightly" in zoo.read_card("org/Llama-gguf-q4_k_m")
    assert publish("pull-request", "org/tiny-gguf-q4_k_m", "pull-request")  # a new repo: its own from now on
    assert publish("pull-request", "org/tiny-gguf-q4_k_m", "pull-request") is None  # unchanged: no commit
    weights.write_bytes(b"weights, retrained")
    assert publish("pull-request", "org/tiny-gguf-q4_k_m", "pull-request")  # its own repo, updated
    assert publish("nightly", "org/Llama-gguf-q4_k_m", "nightly")  # and the owner still can
    zoo.commit("org/hand-made", {"README.md": b"---\nquantmill: just text\n---\n", "w.bin": b"x"}, "by hand")
    with pytest.raises(PublishError, match="was published by someone other than quantmill"):
        publish("pull-request", "org/hand-made", "pull-request")


# --- review: validate, plan, diff ----------------------------------------------------------------


def test_validate_and_plan_list_capabilities(tmp_path, capsys):
    from quantmill.cli import main

    (tmp_path / "card.j2").write_text("{{ card_data }}")
    file = tmp_path / "r.yaml"
    file.write_text(RECIPE.replace("license: mit}", "license: mit, card_template: card.j2}"))
    assert main(["validate", str(file)]) == 0
    assert "capability card_template: card.j2 (at publish.card_template" in capsys.readouterr().out
    assert main(["plan", str(file)]) == 0
    assert "capability card_template: card.j2" in capsys.readouterr().out
    assert main(["plan", "--json", str(file)]) == 0
    assert "capability card_template: card.j2" in capsys.readouterr().err


def test_diff_flags_capabilities_a_change_adds_and_escapes_recipe_text(tmp_path):
    from quantmill.diff import diff_recipes, to_markdown

    base, head = tmp_path / "base", tmp_path / "head"
    base.mkdir()
    head.mkdir()
    (base / "r.yaml").write_text(RECIPE)
    (head / "card.j2").write_text("{{ card_data }}")
    (head / "r.yaml").write_text(
        RECIPE.replace("license: mit}", "license: mit, card_template: card.j2, collection: '<img src=x> @team | x'}")
    )
    [change] = diff_recipes(base, head)
    assert change.capabilities_added == ["card_template: card.j2"]
    markdown = to_markdown([change])
    assert "NEW card_template: card.j2" in markdown and "adds capabilities" in markdown
    assert "<img" not in markdown and "@team" not in markdown and "&#124; x" in markdown


def test_a_run_whose_passing_variant_failed_to_publish_exits_4(tmp_path, monkeypatch):
    from quantmill.cli import main
    from quantmill.record import PublishOutcome, PublishStatus, RunRecord, VariantRecord, VariantStatus
    from quantmill.runstore import Run

    run = Run(tmp_path / "r1")
    run.path.mkdir()
    record = RunRecord(
        recipe="unit", recipe_path=tmp_path / "r.yaml", recipe_sha256="0", run_id="r1", quantmill_version="test"
    )
    failed = PublishOutcome(status=PublishStatus.FAILED, error="AttributeError")
    record.variants["rtn-w8"] = VariantRecord(method="rtn", status=VariantStatus.PASSED, publish=failed)
    run.write_record(record)
    fake = types.ModuleType("quantmill.flows.recipe")
    fake.run_recipe = lambda *args, **kwargs: {"run_path": str(run.path)}  # type: ignore[attr-defined]
    fake.keep_run_logs_off_the_console = lambda: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "quantmill.flows.recipe", fake)
    file = tmp_path / "r.yaml"
    file.write_text(RECIPE)
    assert main(["run", str(file)]) == 4
    record.variants["rtn-w8"].publish = PublishOutcome(status=PublishStatus.PUBLISHED)
    run.write_record(record)
    assert main(["run", str(file)]) == 0


def test_the_demo_recipe_loads_from_the_repo_unchanged():
    """The default (trusted) policy keeps today's recipes working; it only lists what they ask for."""
    loaded = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "demo.yaml")
    assert {r.capability for r in loaded.capabilities} == {"task_code"}


# --- the pull-request workflow -------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_repos_recipes_pass_the_ci_operator_settings(monkeypatch, operator):
    monkeypatch.chdir(REPO_ROOT)  # the CI file's paths are relative to the checkout
    monkeypatch.setenv("QUANTMILL_OPERATOR_FILE", str(REPO_ROOT / "infra" / "operator.ci.yaml"))
    assert operator().policy == "untrusted"
    for recipe in sorted((REPO_ROOT / "recipes").glob("*.yaml")):
        load_recipe(recipe)


def test_the_pr_workflow_keeps_secrets_away_from_pull_request_code():
    import yaml

    jobs = yaml.safe_load((REPO_ROOT / "infra" / "github" / "recipes.yml").read_text())["jobs"]
    for name, job in jobs.items():
        text = json.dumps(job)
        if "pip install" in text:  # the job runs the pull request's code
            assert "secrets." not in text and "write" not in json.dumps(job.get("permissions", {})), name
            assert all(
                "--policy untrusted" in step["run"] for step in job["steps"] if "quantmill " in step.get("run", "")
            ), name
    assert "--no-publish" in json.dumps(jobs["run-recipe"])
    assert jobs["run-recipe"]["steps"][0]["with"]["ref"] == "${{ github.event.pull_request.head.sha }}"
    assert "github.event.action == 'labeled'" in jobs["run-recipe"]["if"]
    assert "synchronize" in jobs["unlabel"]["if"] and "removeLabel" in json.dumps(jobs["unlabel"])
    assert "checkout" not in json.dumps(jobs["comment"])
