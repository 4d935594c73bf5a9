"""The search's screening proxy: token perplexity of a quantized candidate on a slice of the perplexity corpus.

Cheap where a full evaluation is not: the first ``search.proxy_documents`` documents of the recipe's
perplexity corpus, scored with the same windows as the full perplexity (``quantmill.evaluation.perplexity``),
by whatever runtime the candidate's output format loads it in (transformers, llama.cpp), so it works for
every method. A KL divergence against the baseline's next-token distributions would need each runtime's
full logits; the perplexity needs only the log-probability of the next token, which every format's scorer
gives. Screening also measures the candidate's real size (its weight files), which the strategy orders by.

A recipe without ``evaluation.perplexity`` has no proxy: nothing is screened out (the strategy still orders
and prunes by size).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from quantmill.cachekeys import device_kind, versions
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant


def describe_proxy(loaded: LoadedRecipe) -> str | None:
    """The proxy in words, or None when the recipe has none."""
    search, corpus = loaded.recipe.search, loaded.recipe.evaluation.perplexity
    if search is None or corpus is None:
        return None
    source = Path(corpus.dataset.path).name if corpus.dataset.path else corpus.dataset.hub
    return f"token perplexity on the first {search.proxy_documents} documents of {source}"


def proxy_key(quantize_key: str, variant: Variant, loaded: LoadedRecipe, device: str, data_fingerprint: str) -> str:
    """What determines a candidate's proxy: its quantized output, the corpus slice and windows, the runtime."""
    search, corpus = loaded.recipe.search, loaded.recipe.evaluation.perplexity
    parts = {
        "step": "proxy",
        "quantized": quantize_key,
        "documents": search.proxy_documents if search else None,
        "perplexity": corpus.model_dump(mode="json") if corpus else None,
        "data": data_fingerprint,
        "device": device_kind(device),
        "versions": versions(variant.spec.packages),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def measure_proxy(loaded: LoadedRecipe, variant: Variant, artifact_path: Path, device: str) -> dict[str, Any]:
    """``{"score": slice perplexity or None, "size_mb": weight size}`` of the quantized candidate."""
    from quantmill.evaluation.evaluate import weight_bytes
    from quantmill.evaluation.perplexity import perplexity
    from quantmill.stages import _batch_size  # the batch size evaluation uses on this device
    from quantmill.textdata import load_texts

    output_format = variant.spec.output_format
    size_mb = round(weight_bytes(output_format.weights(artifact_path)) / 1e6, 4)
    corpus, search = loaded.recipe.evaluation.perplexity, loaded.recipe.search
    if corpus is None or search is None:
        return {"score": None, "size_mb": size_mb}
    texts = load_texts(corpus.dataset, loaded.base_dir, limit=search.proxy_documents)
    model = output_format.load_for_evaluation(
        artifact_path, device, _batch_size(loaded, device), trust_remote_code=loaded.trust_remote_code
    )
    try:
        measured = perplexity(texts, model.tokenize, model.prefix_token, model.scorer, corpus.max_length, corpus.stride)
    finally:
        release = model.release
        del model
        release()
    return {"score": measured.ppl, "size_mb": size_mb}
