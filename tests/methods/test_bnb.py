"""bitsandbytes: the saved checkpoint reloads to exactly the in-memory quantized model."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantmill.quantize import quantize_variant
from tests.conftest import DEMO_MODEL
from tests.methods.conftest import prompt_logits
from tests.methods.test_quantize_all import make_variant


def _avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nf4", "fp4"])
def test_reload_equals_in_memory_model(kind, tmp_path, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    variant = make_variant("bnb", {"type": kind})
    quantize_variant(variant, source_dir=DEMO_MODEL, out_dir=tmp_path / "q", calibration=None, dtype="float32")
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=kind,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    in_memory = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, dtype=torch.float32, quantization_config=config)
    expected = prompt_logits(in_memory, tokenizer)
    reloaded = prompt_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "q"), tokenizer)
    assert torch.equal(expected, reloaded)

    if _avx512_bf16():
        # The trap quantmill avoids: saving after a forward pass writes repacked weights.
        in_memory.save_pretrained(tmp_path / "after-forward")
        wrong = prompt_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "after-forward"), tokenizer)
        assert not torch.equal(expected, wrong)


# A held-out text in TinyStories' style (stories260K was trained on TinyStories; these lines are not from it).
STORY = [
    "Once upon a time, there was a small dog named Max. Max liked to run in the big green park with his friend Sam.",
    "One day, Sam found a red ball under a tree. He gave the ball to Max, and Max was very happy.",
    "Lily had a little cat. The cat was soft and white. Every night, the cat slept next to Lily on her bed.",
    "Tom wanted to help his mom. He picked up his toys and put them in the box. His mom smiled and gave him a hug.",
    "The sun was warm and the sky was blue. Anna and Ben went to the beach to play in the sand.",
    "A little bird sat on a branch. It sang a happy song, and all the children stopped to listen.",
]


@pytest.mark.slow
def test_nf4_evaluates_odd_shapes_on_a_cpu_that_repacks(stories_hf, tmp_path, monkeypatch):
    """stories260K's MLP is 172 wide: bitsandbytes' AVX512-BF16 repacking (blocks of 32) cannot take it."""
    import json

    import bitsandbytes.nn.modules
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from quantmill.evaluation.backends import transformers_eval_model
    from quantmill.evaluation.perplexity import perplexity
    from quantmill.methods.bnb import keep_cpu_layout
    from tests.support.sequential import run_stages

    corpus = tmp_path / "story.jsonl"
    corpus.write_text("".join(json.dumps({"text": text}) + "\n" for text in STORY))
    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    in_memory = AutoModelForCausalLM.from_pretrained(stories_hf, dtype=torch.float32, quantization_config=config)
    keep_cpu_layout(in_memory)  # a no-op on CPUs without AVX512-BF16; where they have it, the same layout
    model = transformers_eval_model(in_memory, AutoTokenizer.from_pretrained(stories_hf), 1)
    expected = perplexity(STORY, model.tokenize, model.prefix_token, model.scorer, 64, 32).ppl

    # Every Linear4bit made from here on believes the CPU has AVX512-BF16, as the machine did.
    monkeypatch.setattr(bitsandbytes.nn.modules, "has_avx512bf16", lambda: True)
    recipe = f"""\
name: bnb-stories
model: {{id: {stories_hf}, dtype: float32}}
device: cpu
evaluation:
  tasks: []
  perplexity: {{dataset: {{path: {corpus}}}, max_length: 64, stride: 32}}
variants:
  methods:
    - {{method: bnb, type: nf4}}
"""
    (tmp_path / "run").mkdir()
    staged = run_stages(recipe, tmp_path / "run", baseline=False)
    measured = staged.variants["bnb-nf4"].result.value("ppl")
    print({"in_memory": expected, "pipeline": measured})
    assert measured == pytest.approx(expected, rel=1e-3)
