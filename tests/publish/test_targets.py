"""Targets hold exactly what was last committed (stale files deleted in the same commit, housekeeping kept);
cards name a base_model only when it is a Hub id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantmill.errors import PublishError, RecipeError
from quantmill.publish.card import hub_base_model
from quantmill.publish.targets import HubTarget, LocalZoo
from quantmill.recipe.load import load_recipe_text
from quantmill.testing.recipes import DEMO_MODEL, fast_recipe
from tests.support.hubserver import HubServer

pytestmark = pytest.mark.fast

TOKEN = "hf_targetsTestToken0123456789"
FIRST = {"model.safetensors": b"old weights", "config.json": b"{}", "README.md": b"card 1"}
SECOND = {"model-00001-of-00002.safetensors": b"a", "model-00002-of-00002.safetensors": b"b", "config.json": b"{}"}
SECOND |= {"sub/extra.json": b"[]", "README.md": b"card 2"}


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_local_zoo_republish_leaves_exactly_the_new_files(tmp_path):
    zoo = LocalZoo(tmp_path / "zoo")
    zoo.commit("org/m", dict(FIRST), "one")
    repo = tmp_path / "zoo" / "org" / "m"
    zoo.commit("org/m", dict(SECOND), "two")
    files = tree(repo)
    log = [json.loads(line) for line in files.pop(".commits.jsonl").splitlines()]
    assert files == SECOND  # model.safetensors is gone
    assert [entry["message"] for entry in log] == ["one", "two"]
    assert log[1]["deleted"] == ["model.safetensors"] and log[0]["deleted"] == []
    assert zoo.files("org/m") == set(SECOND) and zoo.files("org/other") == set()
    assert sorted(p.name for p in repo.parent.iterdir()) == ["m"]  # no staging or old copy left behind


def test_a_failed_local_commit_leaves_the_old_version_whole(tmp_path):
    zoo = LocalZoo(tmp_path / "zoo")
    zoo.commit("org/m", dict(FIRST), "one")
    repo = tmp_path / "zoo" / "org" / "m"
    before = tree(repo)
    with pytest.raises(PublishError, match="could not publish org/m"):
        zoo.commit("org/m", {"config.json": b"{}", "weights.bin": tmp_path / "missing.bin"}, "two")
    assert tree(repo) == before and sorted(p.name for p in repo.parent.iterdir()) == ["m"]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The local test hub, with huggingface_hub let online to reach it (the suite is offline by default)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer(token=TOKEN) as server:
        yield server


def test_hub_republish_deletes_stale_files_in_the_same_commit_and_keeps_gitattributes(hub):
    target = HubTarget(endpoint=hub.endpoint)
    target.commit("org/m", dict(FIRST), "one")
    repo = hub.state.repos["org/m"]
    repo.files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"  # as the Hub makes it
    assert target.files("org/m") == set(FIRST)  # housekeeping is not quantmill's to list or delete
    target.commit("org/m", dict(SECOND), "two")
    assert repo.files == SECOND | {".gitattributes": repo.files[".gitattributes"]}
    assert len(repo.commits) == 2
    assert repo.commits[1]["deleted"] == ["model.safetensors"] and repo.commits[1]["files"] == sorted(SECOND)
    assert target.files("org/none") == set()


def test_hub_commit_is_refused_when_the_repo_moved_since_it_was_listed(hub, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    target = HubTarget(endpoint=hub.endpoint)
    target.commit("org/m", dict(FIRST), "one")
    listed = target._head("org/m")
    hub.state.repos["org/m"].commits.append({"oid": "f" * 40, "summary": "someone else", "files": []})
    monkeypatch.setattr(target, "_head", lambda repo_id: listed)
    with pytest.raises(HfHubHTTPError) as caught:
        target.commit("org/m", dict(SECOND), "two")
    assert caught.value.response.status_code == 412
    assert hub.state.repos["org/m"].files == FIRST  # nothing deleted on a stale listing


ROWS = "    - {method: rtn, bits: 8}\n"


def with_model(model: str) -> str:
    return fast_recipe(ROWS).replace(f"{{id: {DEMO_MODEL}, dtype: float32}}", model)


def test_card_base_model_is_a_hub_id_or_absent(tmp_path):
    local = load_recipe_text(with_model(f"{{id: {DEMO_MODEL}}}"), tmp_path)
    assert hub_base_model(local) is None  # a folder path: the Hub would reject it
    named = load_recipe_text(with_model(f"{{id: {DEMO_MODEL}, base_model: demo-org/tiny-llama}}"), tmp_path)
    assert hub_base_model(named) == "demo-org/tiny-llama"
    assert hub_base_model(load_recipe_text(with_model("{id: some-org/tiny-llama}"), tmp_path)) == "some-org/tiny-llama"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"{{id: {DEMO_MODEL}, base_model: not a hub id}}", "must be a Hub model id like 'org/name'"),
        (f"{{id: {DEMO_MODEL}, base_model: org--x/name}}", "not a valid Hub id: 'org--x'"),
        (f"{{id: {DEMO_MODEL}, base_model: {DEMO_MODEL}}}", "must be a Hub model id"),
        ("{id: some-org/tiny-llama, base_model: other/x}", "differs from the Hub model 'some-org/tiny-llama'"),
    ],
)
def test_model_base_model_is_validated_with_its_location(tmp_path, model, message):
    text = with_model(model)
    with pytest.raises(RecipeError) as caught:
        load_recipe_text(text, tmp_path, "r.yaml")
    (problem,) = caught.value.problems
    assert problem.path == "model.base_model" and message in problem.message
    assert problem.file == "r.yaml" and problem.line == 1 + text.splitlines().index(f"model: {model}")


def test_card_gate_table_names_an_inconclusive_rule():
    from quantmill.evaluation.results import EvaluationResult, MetricValue
    from quantmill.gates import check_gates
    from quantmill.publish.card import _gate_rows
    from quantmill.recipe.schema import GateRule

    gate = GateRule(metric="t/acc", min_recovery=0.99, significance=2)
    baseline = EvaluationResult({"t/acc": MetricValue(0.80, 0.02)})
    verdict = check_gates("v", [gate], EvaluationResult({"t/acc": MetricValue(0.78, 0.02)}), baseline)
    (row,) = _gate_rows(verdict)
    assert row["outcome"].startswith("INCONCLUSIVE — inconclusive: 0.012 short of 0.792")
