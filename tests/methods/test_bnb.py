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
