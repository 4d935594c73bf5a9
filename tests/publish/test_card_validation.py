"""The test Hub's card-metadata validation: what the real Hub refuses, it refuses (through huggingface_hub's client)."""

from __future__ import annotations

import pytest

from tests.support.hubserver import HubServer

GOOD = """\
---
base_model: demo-org/tiny-llama
base_model_relation: quantized
license: apache-2.0
tags: [quantmill, gguf]
pipeline_tag: text-generation
model-index:
- name: tiny-llama-GGUF
  results:
  - task: {type: text-generation}
    dataset: {type: tiny_world_mc, name: tiny_world_mc}
    metrics: [{type: acc, value: 0.9}]
---

# a card
"""


def validate(hub: HubServer, card: str) -> None:
    """The Hub's ``validate-yaml`` as ``huggingface_hub`` calls it before an upload (ValueError when refused)."""
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.endpoint, token=False)._validate_yaml(card)


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """Let huggingface_hub talk to the local test hub (the suite is offline by default)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server:
        yield server


@pytest.mark.fast
@pytest.mark.hub
def test_a_well_formed_card_passes(hub):
    validate(hub, GOOD)
    validate(hub, GOOD.replace("license: apache-2.0", "license: other\nlicense_name: tiny-license"))


@pytest.mark.fast
@pytest.mark.hub
@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("license: apache-2.0", "license: Apache 2.0"), "license 'Apache 2.0' is not one of the Hub's"),
        (("license: apache-2.0", "license: other"), "license 'other' needs a license_name"),
        (("base_model: demo-org/tiny-llama", "base_model: /models/tiny-llama"), "is not a Hub repo id"),
        (("base_model: demo-org/tiny-llama", "base_model: https://hf.co/x/y"), "is not a Hub repo id"),
        (("base_model: demo-org/tiny-llama\n", ""), "needs a base_model"),
        (("base_model_relation: quantized", "base_model_relation: quantised"), "base_model_relation 'quantised'"),
        (("    metrics: [{type: acc, value: 0.9}]", "    metrics: [{type: acc}]"), "needs a type and a value"),
        (("    dataset: {type: tiny_world_mc, name: tiny_world_mc}", "    dataset: {type: t}"), "type and a name"),
        (("  - task: {type: text-generation}", "  - task: {name: x}"), "task.type is required"),
        (("- name: tiny-llama-GGUF", '- name: ""'), "name must be a non-empty string"),
        (("tags: [quantmill, gguf]", "tags: quantmill"), "tags must be a list of strings"),
        (("license: apache-2.0", "license: [apache-2.0"), "invalid YAML"),
    ],
)
def test_what_the_hub_refuses_is_refused(hub, change, error):
    with pytest.raises(ValueError, match="Invalid metadata in README.md") as refused:
        validate(hub, GOOD.replace(*change))
    assert error in str(refused.value)


@pytest.mark.fast
@pytest.mark.hub
def test_a_commit_with_an_invalid_card_is_refused(hub):
    """huggingface_hub validates a README before committing it, and the Hub refuses one that slips through."""
    import base64
    import json

    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub.endpoint, token=False)
    api.create_repo("org/refused")
    invalid = CommitOperationAdd("README.md", b"---\nbase_model: ../x\n---\n")
    with pytest.raises(ValueError, match="base_model '../x' is not a Hub repo id"):
        api.create_commit("org/refused", [invalid], commit_message="c")
    lines = [
        {"key": "header", "value": {"summary": "c"}},
        {
            "key": "file",
            "value": {
                "path": "README.md",
                "encoding": "base64",
                "content": base64.b64encode(b"---\nlicense: x\n---\n").decode(),
            },
        },
    ]
    raw = httpx.post(
        f"{hub.endpoint}/api/models/org/refused/commit/main",
        content="\n".join(json.dumps(line) for line in lines),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert raw.status_code == 400 and "license 'x'" in raw.text
    assert hub.state.repos["org/refused"].commits == []
    api.create_commit("org/refused", [CommitOperationAdd("README.md", GOOD.encode())], commit_message="c")
    assert len(hub.state.repos["org/refused"].commits) == 1
