"""Granted capabilities work: a ``!function`` task and a custom card template, under the untrusted policy.

The library's stages run on the demo model (40 questions, no Prefect), then the variant
is published to a local zoo with ``HF_TOKEN`` set to a sentinel.
"""

from __future__ import annotations

import json

import pytest

from quantmill.publish.publisher import publish_variant
from quantmill.publish.targets import LocalZoo
from quantmill.testing.recipes import DEMO_MODEL, fast_recipe
from quantmill.trust.operator import get_operator
from tests.support.sequential import run_stages

pytestmark = pytest.mark.slow

SENTINEL = "hf_SECURITYsentinelDoNotLeak0123456789"
RECIPE = fast_recipe(
    "    - {method: bnb, types: [int8]}\n",
    gates="  - {metric: tiny_world_mc/acc, min_recovery: 0.5}\n",
    publish="publish: {target: local, path: zoo, license: mit, card_template: card.j2}\n",
)
TEMPLATE = """\
---
{{ card_data }}
---
# Custom card for {{ repo_name }}
{% for row in eval_rows %}
- {{ row.metric }}: {{ row.value }}
{% endfor %}
token: {{ cycler.__init__ is defined }}
"""


@pytest.fixture
def granted(monkeypatch, tmp_path):
    monkeypatch.setenv("QUANTMILL_POLICY", "untrusted")
    monkeypatch.setenv("QUANTMILL_DATA_ROOTS", json.dumps([str(DEMO_MODEL.parent)]))
    # by path: the recipe 'flowtest' is in recipe.yaml, and a name grant holds only for flowtest.yaml
    recipe_file = str((tmp_path / "recipe.yaml").resolve())
    monkeypatch.setenv("QUANTMILL_GRANTS", json.dumps({recipe_file: ["task_code", "card_template"]}))
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    get_operator.cache_clear()
    yield
    monkeypatch.undo()
    get_operator.cache_clear()


def test_granted_function_task_and_custom_card_work(granted, tmp_path):
    (tmp_path / "card.j2").write_text(TEMPLATE)
    staged = run_stages(RECIPE, tmp_path)
    assert {r.capability for r in staged.loaded.capabilities} == {"task_code", "card_template"}
    made = staged.variants["bnb-int8"]
    assert made.result.value("tiny_world_mc/acc") is not None  # the !function task loaded its data and ran
    published = publish_variant(
        staged.loaded,
        made.variant,
        artifact_path=made.artifact.path,
        provenance=made.artifact.provenance,
        evaluation=made.result,
        baseline=staged.baseline,
        verdict=made.verdict,
        revision=staged.resolved.revision,
        target=LocalZoo(tmp_path / "zoo"),
        run_id="run-1",
    )
    card = (tmp_path / "zoo" / published.repo_id / "README.md").read_text()
    assert "# Custom card for tiny-llama-bnb-int8" in card and "- tiny_world_mc/acc: " in card
    assert "fingerprint" in card  # quantmill's metadata survived the custom template
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
