"""Tiny random-weight models of the architecture families users bring, for tests and ``bench/architectures.py``.

Each family is built from its transformers config at a size where every method's rules hold
(hidden 256, MLP 512, head dim 64: multiples of 256 for the K-quants and of every group size),
with random weights, so only the *plumbing* is exercised: which layers a method finds, whether
the output reloads, converts and serves. Quality numbers of random weights mean little; a
quantized/unquantized perplexity ratio far from 1 for 8-bit still exposes a silent error.

Tokenizers: ``"demo"`` (the default, instant) reuses the demo model's SentencePiece tokenizer and
sizes the vocabulary to it. ``"gguf"`` builds the family's real tokenizer from a vocab-only GGUF
of llama.cpp's source tree (``models/ggml-vocab-*.gguf``; GPT-2 BPE, Qwen2, Llama-3 BPE), which
llama.cpp's converter recognises by its pre-tokenizer hash; converting one takes 15 s to minutes,
so it is cached under ``cache_dir``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantmill.testing.recipes import DEMO_MODEL

HIDDEN = 256
INTERMEDIATE = 512
HEADS = 4
LAYERS = 2
#: wider than transformers' 0.02, so random weights give peaked next-token distributions: with nearly
#: uniform ones every quantization error would vanish into a perplexity ratio of 1
INIT_RANGE = 0.1


@dataclass(frozen=True)
class Family:
    """One architecture family: how to build its config, and its real tokenizer's vocab-only GGUF (if any)."""

    name: str
    model_type: str
    config: Callable[[int], dict[str, Any]]  # vocab size → config keyword arguments
    vocab_gguf: str | None = None


def _llama_like(vocab: int) -> dict[str, Any]:
    return {
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS // 2,
        "head_dim": HIDDEN // HEADS,
        "max_position_embeddings": 512,
    }


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        # SmolLM / Llama-3 style: tied embeddings, grouped-query attention, BPE tokenizer
        Family("llama", "llama", lambda v: {**_llama_like(v), "tie_word_embeddings": True}, "llama-bpe"),
        # q/k/v biases, tied embeddings
        Family("qwen2", "qwen2", lambda v: {**_llama_like(v), "tie_word_embeddings": True}, "qwen2"),
        Family("mistral", "mistral", lambda v: {**_llama_like(v), "tie_word_embeddings": False}, "llama-spm"),
        # fused qkv_proj and gate_up_proj
        Family(
            "phi3",
            "phi3",
            lambda v: {**_llama_like(v), "num_key_value_heads": HEADS, "tie_word_embeddings": False},
        ),
        Family("gemma2", "gemma2", lambda v: {**_llama_like(v), "query_pre_attn_scalar": HIDDEN // HEADS}),
        # Conv1D layers (transposed weights), tied head, learned positions
        Family(
            "gpt2",
            "gpt2",
            lambda v: {"vocab_size": v, "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_positions": 512},
            "gpt-2",
        ),
        Family(
            "gpt_neox",
            "gpt_neox",
            lambda v: {
                "vocab_size": v,
                "hidden_size": HIDDEN,
                "intermediate_size": INTERMEDIATE,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS,
                "max_position_embeddings": 512,
                "tie_word_embeddings": False,
            },
        ),
        Family(
            "opt",
            "opt",
            lambda v: {
                "vocab_size": v,
                "hidden_size": HIDDEN,
                "ffn_dim": INTERMEDIATE,
                "num_hidden_layers": LAYERS,
                "num_attention_heads": HEADS,
                "word_embed_proj_dim": HIDDEN,
                "max_position_embeddings": 512,
            },
        ),
    )
}

LLAMA_CPP_MODELS = Path("~/.cache/quantmill/llama.cpp/0.3.36/src/vendor/llama.cpp/models").expanduser()
DEFAULT_CACHE = Path("~/.cache/quantmill/architectures").expanduser()


def real_tokenizer(family: Family, cache_dir: Path = DEFAULT_CACHE):
    """The family's real tokenizer, built once from llama.cpp's vocab-only GGUF and cached (None when it has none)."""
    from transformers import AutoTokenizer

    if family.vocab_gguf is None:
        return None
    cached = cache_dir / "tokenizers" / family.vocab_gguf
    if not (cached / "tokenizer_config.json").is_file():
        source = LLAMA_CPP_MODELS / f"ggml-vocab-{family.vocab_gguf}.gguf"
        if not source.is_file():
            return None
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        partial = cached.with_name(cached.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(cached, ignore_errors=True)
        partial.rename(cached)
    return AutoTokenizer.from_pretrained(cached)


def build_model(name: str, out_dir: Path, *, tokenizer: str = "demo", seed: int = 0, dtype: str = "float32") -> Path:
    """Write a tiny random ``name`` model (a key of :data:`FAMILIES`) with its tokenizer into ``out_dir``.

    ``tokenizer``: ``"demo"`` (the demo model's, vocabulary sized to it) or ``"gguf"`` (the family's real
    one, :func:`real_tokenizer`; a family without one falls back to the demo's). Reuses a complete folder.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    family = FAMILIES[name]
    if (out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors")):
        return out_dir
    tok = real_tokenizer(family) if tokenizer == "gguf" else None
    if tok is None:
        tok = AutoTokenizer.from_pretrained(DEMO_MODEL)
    special = {
        key: getattr(tok, f"{key}_id")
        for key in ("bos_token", "eos_token", "pad_token")
        if getattr(tok, f"{key}_id", None) is not None
    }
    config = AutoConfig.for_model(
        family.model_type,
        **family.config(len(tok)),
        **{f"{k}_id": v for k, v in special.items()},
        initializer_range=INIT_RANGE,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.generation_config.pad_token_id = special.get("pad_token", special.get("eos_token"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    if tokenizer == "gguf" and family.vocab_gguf is not None:
        tok.save_pretrained(out_dir)
    else:  # the demo's files as they are (a save would drop tokenizer.model, which llama.cpp reads)
        for file in DEMO_MODEL.glob("tokenizer*"):
            shutil.copyfile(file, out_dir / file.name)
    return out_dir
