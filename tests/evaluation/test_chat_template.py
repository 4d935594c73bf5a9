"""``apply_chat_template: true`` on a GGUF variant and an HF variant: both see the template, rendered alike."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import DEMO_MODEL, DEMO_TASKS
from tests.methods.test_gguf import llama  # noqa: F401 -- the llama.cpp tools fixture
from tests.support.sequential import run_stages

# The EOS text inside the template must be read as the EOS token by both tokenizers.
TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.mark.slow
@pytest.mark.gguf
def test_gguf_and_hf_variants_are_evaluated_through_the_chat_template(llama, tmp_path, monkeypatch):  # noqa: F811
    from lm_eval.models.huggingface import HFLM

    from quantmill.methods._gguf_eval import LlamaCppLM

    model = tmp_path / "chat-llama"
    shutil.copytree(DEMO_MODEL, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))

    contexts: dict[str, list[str]] = {"gguf": [], "hf": []}
    for name, backend in (("gguf", LlamaCppLM), ("hf", HFLM)):

        def seen(self, requests, *args, _original=backend.loglikelihood, _name=name, **kwargs):
            contexts[_name] += [r.args[0] for r in requests]
            return _original(self, requests, *args, **kwargs)

        monkeypatch.setattr(backend, "loglikelihood", seen)

    staged = run_stages(
        f"""\
name: chat
model: {{id: {model}, dtype: float32}}
device: cpu
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  limit: 8
  apply_chat_template: true
  metrics: [size]
variants:
  methods:
    - {{method: gguf, types: [q8_0]}}
    - {{method: rtn, bits: 8, group_size: 128}}
""",
        tmp_path,
    )
    gguf, rtn = staged.variants["gguf-q8_0"].result, staged.variants["rtn-w8-g128"].result
    for result in (gguf, rtn):
        assert result.details["lm_eval"]["apply_chat_template"] is True
        assert "tiny_world_mc/acc" in result.metrics
    # baseline and rtn went through HFLM, the GGUF through llama.cpp: the same templated contexts
    assert contexts["gguf"] and set(contexts["gguf"]) == set(contexts["hf"])
    templated = [
        c for c in contexts["gguf"] if c.startswith("<|user|>\nQuestion:") and c.endswith("</s>\n<|assistant|>\n")
    ]
    assert templated == contexts["gguf"], contexts["gguf"][:2]
    # the fidelity check read the templated texts too: "</s>" is one token on both sides
    assert gguf.details["tokenizer_fidelity"]["sources"]["chat_template"] > 0
    assert gguf.value("tokenizer_agreement") == 1.0
