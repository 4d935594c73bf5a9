"""Sliding-window perplexity on a text corpus, for any model that can score tokens.

Definitions (the same as lm-eval's ``loglikelihood_rolling`` tasks, e.g. wikitext):

* every document is scored on its own, after a BOS token (lm-eval's prefix token);
* a document longer than ``max_length`` is scored in windows advancing by
  ``stride`` tokens, each token scored once, with up to ``max_length - stride``
  tokens of context carried over;
* ``ppl`` (what quantmill gates on) is token perplexity: exp(−Σ log p / tokens);
* ``word_perplexity`` and ``byte_perplexity`` divide the same sum by whitespace
  words and UTF-8 bytes, exactly as lm-eval does. When a document fits in one
  window the log-likelihood equals lm-eval's, so these two agree with lm-eval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# A scorer takes windows of (token ids, how many trailing tokens to score) and
# returns the summed log-probability of those trailing tokens, one per window.
Scorer = Callable[[Sequence[tuple[list[int], int]]], list[float]]


@dataclass(frozen=True)
class PerplexityResult:
    ppl: float
    word_perplexity: float
    byte_perplexity: float
    bits_per_byte: float
    tokens: int
    words: int
    bytes: int
    documents: int
    loglikelihood: float


def windows_for(ids: list[int], bos: int, max_length: int, stride: int) -> list[tuple[list[int], int]]:
    """The scoring windows of one document (``[bos] + ids``), each token scored exactly once."""
    sequence = [bos, *ids]
    windows = []
    scored_until = 1  # position of the next token to score (the BOS is context only)
    while scored_until < len(sequence):
        end = min(len(sequence), scored_until + stride if scored_until > 1 else max_length)
        start = max(0, end - max_length)
        windows.append((sequence[start:end], end - scored_until))
        scored_until = end
    return windows


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))  # lm-eval's word count for rolling tasks


def perplexity(
    texts: Sequence[str], tokenize: Callable[[str], list[int]], bos: int, scorer: Scorer, max_length: int, stride: int
) -> PerplexityResult:
    """Perplexity of ``texts`` as defined in this module's docstring."""
    windows: list[tuple[list[int], int]] = []
    tokens = 0
    for text in texts:
        ids = tokenize(text)
        tokens += len(ids)
        windows.extend(windows_for(ids, bos, max_length, stride))
    loglikelihood = sum(scorer(windows))
    words = sum(count_words(t) for t in texts)
    size = sum(len(t.encode("utf-8")) for t in texts)
    return PerplexityResult(
        ppl=math.exp(-loglikelihood / tokens),
        word_perplexity=math.exp(-loglikelihood / words),
        byte_perplexity=math.exp(-loglikelihood / size),
        bits_per_byte=-loglikelihood / size / math.log(2),
        tokens=tokens,
        words=words,
        bytes=size,
        documents=len(texts),
        loglikelihood=loglikelihood,
    )


def torch_scorer(model, batch_size: int = 16) -> Scorer:
    """Score windows with a transformers causal LM (right-padded batches)."""
    import torch

    device = next(model.parameters()).device

    def score(windows: Sequence[tuple[list[int], int]]) -> list[float]:
        results: list[float] = []
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, _) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            with torch.no_grad():
                logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
            logprobs = torch.log_softmax(logits, dim=-1).cpu()
            for row, (ids, n_scored) in enumerate(batch):
                targets = torch.tensor(ids[len(ids) - n_scored :])
                positions = torch.arange(len(ids) - n_scored - 1, len(ids) - 1)
                results.append(float(logprobs[row, positions, targets].sum()))
        return results

    return score
