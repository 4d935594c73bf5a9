"""Publishing: cards from measured numbers, one commit per variant, idempotence, a real HTTP hub."""

from __future__ import annotations

import json
import shutil

import pytest

from quantmill.errors import PublishError
from quantmill.gates import Verdict
from quantmill.publish.publish_run import prefer_when, publish_run
from quantmill.publish.publisher import publish_variant, repo_id_for
from quantmill.publish.targets import HubTarget, LocalZoo, front_matter
from quantmill.recipe import load_recipe
from quantmill.record import BaselineRecord, ModelRef, RunRecord, VariantRecord
from quantmill.runstore import Run
from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS
from tests.support.hubserver import HubServer
from tests.support.sequential import run_stages

SENTINEL = "hf_SENTINELtokenDoNotLeak0123456789"

RECIPE = f"""\
name: publishing
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  limit: 40
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
variants:
  methods:
    - {{method: bnb, types: [int8, nf4]}}
gates:
  - {{metric: tiny_world_mc/acc, min_recovery: 0.95}}
publish:
  namespace: zoo-org
  license: apache-2.0
  collection: Tiny zoo
"""


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The recipe, its baseline, and both variants quantized, evaluated and gated, once."""
    staged = run_stages(RECIPE, tmp_path_factory.mktemp("publishing"))
    variants = {v: (m.variant, m.artifact, m.result, m.verdict) for v, m in staged.variants.items()}
    return staged.loaded, staged.resolved, staged.baseline, variants


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Let huggingface_hub talk to the local test hub (the suite is offline by default)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", SENTINEL)


def publish(made, variant_id, target, loaded=None, **kwargs):
    """Publish a variant of ``made`` (with ``loaded``, a recipe of its own, when given)."""
    made_loaded, resolved, baseline, variants = made
    variant, artifact, result, verdict = variants[variant_id]
    return publish_variant(
        loaded or made_loaded,
        variant,
        artifact_path=kwargs.pop("artifact_path", artifact.path),
        provenance=artifact.provenance,
        evaluation=result,
        baseline=baseline,
        verdict=kwargs.pop("verdict", verdict),
        revision=resolved.revision,
        target=target,
        run_id="run-1",
        **kwargs,
    )


@pytest.mark.slow
def test_local_zoo_card_and_idempotence(made, tmp_path):
    from huggingface_hub import ModelCard

    zoo = LocalZoo(tmp_path / "zoo")
    first = publish(made, "bnb-int8", zoo)
    assert first.status == "published" and first.repo_id == "zoo-org/tiny-llama-bnb-int8"
    repo = tmp_path / "zoo" / "zoo-org" / "tiny-llama-bnb-int8"
    assert {"README.md", "model.safetensors", "config.json", "quantmill.json"} <= {p.name for p in repo.iterdir()}
    card = ModelCard((repo / "README.md").read_text())
    meta = card.data.to_dict()
    assert "base_model" not in meta and "base_model_relation" not in meta  # a local folder has no Hub id
    assert meta["license"] == "apache-2.0" and "quantmill" in meta["tags"] and "bitsandbytes" in meta["tags"]
    assert meta["model-index"][0]["results"][0]["metrics"][0]["type"] == "acc"
    assert meta["quantmill"]["fingerprint"] == first.fingerprint
    _, _, baseline, variants = made
    measured = f"{variants['bnb-int8'][2].value('tiny_world_mc/acc'):.4g}"
    assert measured in card.text and f"{baseline.value('tiny_world_mc/acc'):.4g}" in card.text
    assert "quantmill run recipe.yaml --only bnb-int8" in card.text

    again = publish(made, "bnb-int8", zoo)
    assert again.status == "unchanged" and again.fingerprint == first.fingerprint
    assert len((repo / ".commits.jsonl").read_text().splitlines()) == 1
    collection = json.loads((tmp_path / "zoo" / "zoo-org" / "collections" / "tiny-zoo.json").read_text())
    assert [item["id"] for item in collection["items"]] == ["zoo-org/tiny-llama-bnb-int8"]


@pytest.mark.slow
def test_failed_variant_is_refused_unless_forced(made, tmp_path):
    loaded, _, _, variants = made
    failed = Verdict("bnb-int8", "failed", variants["bnb-int8"][3].outcomes)
    zoo = LocalZoo(tmp_path / "zoo")
    with pytest.raises(PublishError, match="only variants that pass"):
        publish(made, "bnb-int8", zoo, verdict=failed)
    assert not (tmp_path / "zoo").exists()
    forced = publish(made, "bnb-int8", zoo, verdict=failed, force=True)
    card = (tmp_path / "zoo" / forced.repo_id / "README.md").read_text()
    assert "Published with `--force`" in card and front_matter(card)["quantmill"]["forced"] is True


@pytest.mark.slow
def test_license_must_be_known(made, tmp_path, write_recipe):
    loaded = load_recipe(write_recipe(RECIPE.replace("  license: apache-2.0\n", "")))
    with pytest.raises(PublishError, match="license .* is unknown"):
        publish(made, "bnb-int8", LocalZoo(tmp_path), loaded=loaded)


@pytest.mark.slow
@pytest.mark.hub
def test_hub_commit_idempotence_collection_and_reload(made, tmp_path, online):
    with HubServer(token=SENTINEL) as hub:
        target = HubTarget(endpoint=hub.endpoint)
        first = publish(made, "bnb-int8", target)
        assert first.status == "published"
        repo = hub.state.repos["zoo-org/tiny-llama-bnb-int8"]
        assert len(repo.commits) == 1
        assert set(repo.commits[0]["files"]) >= {"README.md", "model.safetensors", "config.json", "quantmill.json"}
        assert "COMPLETE" not in repo.files
        assert "bnb-int8" in repo.commits[0]["summary"] and "run-1" in repo.commits[0]["summary"]
        assert publish(made, "bnb-int8", target).status == "unchanged"
        assert len(repo.commits) == 1
        publish(made, "bnb-nf4", target)
        (collection,) = hub.state.collections.values()
        assert [i["id"] for i in collection["items"]] == ["zoo-org/tiny-llama-bnb-int8", "zoo-org/tiny-llama-bnb-nf4"]

        from huggingface_hub import snapshot_download
        from transformers import AutoModelForCausalLM

        local = snapshot_download("zoo-org/tiny-llama-bnb-int8", endpoint=hub.endpoint, cache_dir=tmp_path / "dl")
        model = AutoModelForCausalLM.from_pretrained(local)
        assert model.config.quantization_config.load_in_8bit is True


@pytest.mark.slow
@pytest.mark.hub
def test_hub_rejects_a_wrong_token_with_a_clear_error(made, tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with HubServer(token=SENTINEL) as hub:
        from huggingface_hub.errors import HfHubHTTPError

        with pytest.raises(HfHubHTTPError) as caught:
            publish(made, "bnb-int8", HubTarget(endpoint=hub.endpoint))
        assert caught.value.response.status_code == 401
        assert hub.state.commits() == []


@pytest.mark.slow
@pytest.mark.hub
def test_transient_errors_are_retried_to_exactly_one_commit(made, tmp_path, online, prefect_server):
    from quantmill.tasks.steps import publish_task

    loaded, resolved, baseline, variants = made
    variant, artifact, result, verdict = variants["bnb-int8"]
    record = RunRecord(
        recipe=loaded.name,
        recipe_path=loaded.path,
        recipe_sha256=loaded.sha256,
        run_id="run-2",
        quantmill_version="test",
        model=ModelRef(id=resolved.id, revision=resolved.revision),
        baseline=BaselineRecord(evaluation=baseline),
        variants={
            variant.id: VariantRecord(
                method=variant.method, status="passed", artifact=artifact.path, evaluation=result, verdict=verdict
            )
        },
    )
    with HubServer(token=SENTINEL) as hub:
        recipe = loaded.recipe.model_copy(
            update={"publish": loaded.recipe.publish.model_copy(update={"endpoint": hub.endpoint})}
        )
        hub_loaded = type(loaded)(
            recipe, loaded.variants, loaded.name, loaded.path, loaded.base_dir, loaded.text, loaded.shape
        )
        hub.state.fail_next("POST", r"/commit/", 500)
        hub.state.fail_next("POST", r"/api/repos/create", 429)
        outcome = publish_task.with_options(retry_delay_seconds=0)(hub_loaded, record, variant.id, "hub", [])
        assert outcome.status == "published"
        assert len(hub.state.repos[repo_id_for(hub_loaded, variant)].commits) == 1
        assert ("POST", f"/api/models/{outcome.repo_id}/commit/main") in hub.state.requests


@pytest.mark.slow
def test_concurrent_publishes_of_the_same_variant_make_one_commit(made, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    zoo = LocalZoo(tmp_path / "zoo")
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = sorted(r.status for r in pool.map(lambda _: publish(made, "bnb-int8", zoo), range(2)))
    assert outcomes == ["published", "unchanged"]
    log = tmp_path / "zoo" / "zoo-org" / "tiny-llama-bnb-int8" / ".commits.jsonl"
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.slow
def test_card_names_the_declared_base_model(made, tmp_path, write_recipe):
    named = RECIPE.replace("dtype: float32}", "dtype: float32, base_model: demo-org/tiny-llama}")
    outcome = publish(made, "bnb-int8", LocalZoo(tmp_path / "zoo"), loaded=load_recipe(write_recipe(named)))
    meta = front_matter((tmp_path / "zoo" / outcome.repo_id / "README.md").read_text())
    assert meta["base_model"] == "demo-org/tiny-llama" and meta["base_model_relation"] == "quantized"


@pytest.mark.slow
def test_publish_run_uses_the_runs_recipe_snapshot(made, tmp_path):
    """The recipe file changed (namespace, zoo path), then vanished: the run still publishes as it ran."""
    loaded = made[0]
    (ran,) = (loaded.path.parent / "runs" / loaded.name).glob("*/results.json")
    run_path = tmp_path / "runs" / loaded.name / ran.parent.name
    shutil.copytree(ran.parent, run_path)
    recipe_file = tmp_path / "recipes" / "recipe.yaml"
    recipe_file.parent.mkdir()
    record = Run(run_path).read_record()
    Run(run_path).write_record(record.model_copy(update={"recipe_path": recipe_file}))
    recipe_file.write_text(loaded.text.replace("namespace: zoo-org", "namespace: changed-org\n  path: elsewhere"))

    passed = sorted(v for v, e in record.variants.items() if e.status == "passed")
    outcomes = publish_run(run_path, force=[])
    assert [o.status for o in outcomes] == ["published"] * len(passed) and passed
    zoo = tmp_path / "recipes" / "zoo"  # publish.path "zoo" of the snapshot, beside the recipe as it was
    assert sorted(o.repo_id for o in outcomes) == [f"zoo-org/tiny-llama-{v}" for v in passed]
    assert all((zoo / o.repo_id / "README.md").is_file() for o in outcomes)
    for this in outcomes:  # each card links its siblings of the run, saying when to prefer each
        card = (zoo / this.repo_id / "README.md").read_text()
        for other in outcomes:
            if other.variant != this.variant:
                advice = prefer_when(record, this.variant, other.variant)
                assert f"- [{other.variant}]({other.url}): bnb; {advice}\n" in card
    assert not (tmp_path / "recipes" / "elsewhere").exists()

    recipe_file.unlink()
    assert [o.status for o in publish_run(run_path, force=[])] == ["unchanged"] * len(passed)
    (run_path / "recipe.yaml").unlink()
    with pytest.raises(PublishError, match="has no recipe.yaml"):
        publish_run(run_path, force=[])


def _with_sharded_weights(artifact_path, folder):
    """A copy of a variant's files whose weights file has another name (a changed file set)."""
    copy = folder / "changed"
    shutil.copytree(artifact_path, copy)
    (copy / "model.safetensors").rename(copy / "model-00001-of-00001.safetensors")
    return copy


@pytest.mark.slow
@pytest.mark.hub
def test_hub_republish_of_a_changed_file_set_deletes_the_stale_weights(made, tmp_path, online):
    with HubServer(token=SENTINEL) as hub:
        target = HubTarget(endpoint=hub.endpoint)
        publish(made, "bnb-int8", target)
        _, artifact, _, _ = made[3]["bnb-int8"]
        again = publish(made, "bnb-int8", target, artifact_path=_with_sharded_weights(artifact.path, tmp_path))
        assert again.status == "published"
        repo = hub.state.repos[again.repo_id]
        assert "model.safetensors" not in repo.files and "model-00001-of-00001.safetensors" in repo.files
        assert len(repo.commits) == 2 and repo.commits[1]["deleted"] == ["model.safetensors"]


@pytest.mark.slow
def test_local_republish_removes_files_left_by_an_older_quantmill(made, tmp_path):
    zoo = LocalZoo(tmp_path / "zoo")
    first = publish(made, "bnb-int8", zoo)
    leftover = tmp_path / "zoo" / first.repo_id / "old-model.safetensors"  # an earlier publish never deleted it
    leftover.write_bytes(b"stale")
    assert publish(made, "bnb-int8", zoo).status == "published" and not leftover.exists()
    assert publish(made, "bnb-int8", zoo).status == "unchanged"


@pytest.mark.slow
@pytest.mark.hub
def test_every_card_passes_the_hubs_metadata_validation(made, tmp_path, online, write_recipe):
    """Each variant's card, with and without a Hub base model, as the Hub's validate-yaml judges it."""
    from huggingface_hub import HfApi

    named = load_recipe(
        write_recipe(RECIPE.replace("dtype: float32}", "dtype: float32, base_model: demo-org/tiny-llama}"))
    )
    zoo = LocalZoo(tmp_path / "zoo")
    with HubServer() as hub:
        api = HfApi(endpoint=hub.endpoint, token=False)
        for loaded in (made[0], named):
            for variant_id in made[3]:
                outcome = publish(made, variant_id, zoo, loaded=loaded)
                api._validate_yaml((tmp_path / "zoo" / outcome.repo_id / "README.md").read_text())
        assert len([r for r in hub.state.requests if r == ("POST", "/api/validate-yaml")]) == 2 * len(made[3])
