"""Calibration samples: drawn once per recipe, tokenized once, reused by every variant."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from quantmill.recipe.schema import Calibration
from quantmill.textdata import load_texts


@dataclass(frozen=True)
class CalibrationSet:
    """Tokenized calibration samples and a fingerprint of exactly what was fed.

    Attributes:
        input_ids: one list of token ids per sample (at most ``seq_len`` long).
        fingerprint: sha256 of the token ids; changes whenever the data, the
            sampling or the tokenizer changes.
        source: where the texts came from, for provenance.
        texts: the sampled texts (tools such as llama-imatrix read text, not ids).
    """

    input_ids: tuple[tuple[int, ...], ...]
    fingerprint: str
    source: str
    texts: tuple[str, ...] = ()

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def texts_dataset(self):
        """As a ``datasets.Dataset`` with ``input_ids`` and ``attention_mask`` (llm-compressor's input)."""
        from datasets import Dataset

        ids = [list(x) for x in self.input_ids]
        return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]})


#: samples are drawn from the data set's first ``max(MIN_POOL, POOL_PER_SAMPLE × num_samples)`` texts,
#: so a huge file is read only that far
POOL_PER_SAMPLE = 16
MIN_POOL = 4096


def build_calibration_set(calibration: Calibration, tokenizer, base_dir: Path) -> CalibrationSet:
    """Draw ``num_samples`` texts with ``seed`` (all, in order, if there are fewer) and tokenize them.

    They are drawn from the data set's first ``max(MIN_POOL, POOL_PER_SAMPLE × num_samples)`` texts.
    """
    assert calibration.dataset is not None, "validation guarantees a data set when one is needed"
    pool = max(MIN_POOL, POOL_PER_SAMPLE * calibration.num_samples)
    texts = load_texts(calibration.dataset, base_dir, limit=pool)
    if len(texts) > calibration.num_samples:
        texts = random.Random(calibration.seed).sample(texts, calibration.num_samples)
    ids = tuple(tuple(tokenizer(text, truncation=True, max_length=calibration.seq_len)["input_ids"]) for text in texts)
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    ref = calibration.dataset
    source = ref.path if ref.path is not None else f"{ref.hub}:{ref.subset or ''}:{ref.split}"
    return CalibrationSet(ids, digest, source, tuple(texts))
