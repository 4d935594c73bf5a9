"""A loaded model as the evaluation needs it: an lm-eval LM, a token scorer, a speed probe.

The transformers backend lives here; an output format that transformers cannot
run builds the same :class:`EvalModel` itself (see ``quantmill.methods.formats``).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantmill.evaluation.perplexity import Scorer, torch_scorer

# A fixed prompt set so speed numbers compare across variants and runs.
SPEED_PROMPTS = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the hill.",
    "Question: What is the capital of the country where the river flows into the sea?\nAnswer:",
    "Once upon a time, in a small village by the mountains, there lived a clever girl who",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
)
DECODE_TOKENS = 32


@dataclass
class EvalModel:
    """What evaluation needs from a model, whatever runs it.

    Attributes:
        lm: an ``lm_eval.api.model.LM`` for ``simple_evaluate``.
        scorer: sums log-probabilities of windows (perplexity).
        tokenize: text → token ids, without special tokens.
        prefix_token: the token every document is scored after (BOS, or EOS where it doubles as BOS).
        speed: ``speed(prompts, new_tokens) -> (prefill tok/s, decode tok/s)``.
        release: frees memory once the caller has dropped the model.
    """

    lm: Any
    scorer: Scorer
    tokenize: Callable[[str], list[int]]
    prefix_token: int
    speed: Callable[[Sequence[str], int], tuple[float, float]]
    release: Callable[[], None]


def load_transformers_model(path: Path, dtype: str, device: str, *, trust_remote_code: bool = False):
    """The model in ``path`` on ``device`` (spread over all the running step's GPUs when it holds
    several: ``quantmill.devices.model_placement``); ``trust_remote_code`` lets transformers run its own code."""
    import torch
    from transformers import AutoModelForCausalLM

    from quantmill.devices import model_placement

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype) if dtype != "auto" else "auto", **model_placement(device)}
    return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


def transformers_eval_model(model, tokenizer, batch_size: int | str) -> EvalModel:
    """Wrap a loaded transformers model (any quantization format transformers runs)."""
    import torch
    from lm_eval.models.huggingface import HFLM

    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    device = next(model.parameters()).device
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    def tokenize(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def speed(prompts: Sequence[str], new_tokens: int) -> tuple[float, float]:
        prefill_tokens = decode_tokens = 0
        prefill_seconds = decode_seconds = 0.0
        for prompt in prompts:
            ids = torch.tensor([[prefix, *tokenize(prompt)]], device=device)
            with torch.no_grad():
                model(ids)  # warm-up: first calls pay for allocation and kernel selection
                start = time.perf_counter()
                model(ids)
                prefill = time.perf_counter() - start
                start = time.perf_counter()
                out = model.generate(
                    ids,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
                total = time.perf_counter() - start
            generated = out.shape[1] - ids.shape[1]
            prefill_tokens += ids.shape[1]
            prefill_seconds += prefill
            decode_tokens += generated
            decode_seconds += max(total - prefill, 1e-9)
        return prefill_tokens / prefill_seconds, decode_tokens / decode_seconds

    return EvalModel(lm, torch_scorer(model), tokenize, prefix, speed, free_memory)


def free_memory() -> None:
    """Return memory between models (the caller drops its references first)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
