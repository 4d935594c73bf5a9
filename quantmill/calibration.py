"""Calibration samples: drawn once per recipe, tokenized once, reused by every variant.

The tokenized set is kept in quantmill's cache folder under a key of exactly what
determines it (the sampled texts, ``seq_len``, the tokenizer's files and library
versions), so a rerun neither tokenizes again nor imports transformers and torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from quantmill.recipe.schema import Calibration
from quantmill.textdata import load_texts

log = logging.getLogger(__name__)


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


def sample_texts(calibration: Calibration, base_dir: Path) -> list[str]:
    """Draw ``num_samples`` texts with ``seed`` (all, in order, if there are fewer).

    They are drawn from the data set's first ``max(MIN_POOL, POOL_PER_SAMPLE × num_samples)`` texts.
    """
    assert calibration.dataset is not None, "validation guarantees a data set when one is needed"
    pool = max(MIN_POOL, POOL_PER_SAMPLE * calibration.num_samples)
    texts = load_texts(calibration.dataset, base_dir, limit=pool)
    if len(texts) > calibration.num_samples:
        texts = random.Random(calibration.seed).sample(texts, calibration.num_samples)
    return texts


def build_calibration_set(calibration: Calibration, tokenizer, base_dir: Path) -> CalibrationSet:
    """The sampled texts (:func:`sample_texts`), tokenized."""
    return _tokenized(calibration, tokenizer, sample_texts(calibration, base_dir))


def _tokenized(calibration: Calibration, tokenizer, texts: list[str]) -> CalibrationSet:
    ids = tuple(tuple(tokenizer(text, truncation=True, max_length=calibration.seq_len)["input_ids"]) for text in texts)
    digest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
    ref = calibration.dataset
    assert ref is not None
    source = ref.path if ref.path is not None else f"{ref.hub}:{ref.subset or ''}:{ref.split}"
    return CalibrationSet(ids, digest, source, tuple(texts))


# Weights never change how text tokenizes; hashing them would cost a read of the whole model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


def _tokenizer_files_digest(tokenizer_dir: Path) -> str:
    """sha256 over the names and bytes of the folder's own files, weights excepted (what ``AutoTokenizer`` reads)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in tokenizer_dir.iterdir() if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def calibration_cache_key(
    calibration: Calibration, texts: list[str], tokenizer_dir: Path, trust_remote_code: bool
) -> str:
    """A hash of everything the token ids depend on: the texts, ``seq_len``, the tokenizer and its libraries."""
    from quantmill.methods.base import package_version

    parts = {
        "texts": texts,
        "seq_len": calibration.seq_len,
        "tokenizer": _tokenizer_files_digest(tokenizer_dir),
        "remote_code": trust_remote_code,
        "versions": {name: package_version(name) for name in ("transformers", "tokenizers", "sentencepiece")},
        "source": calibration.dataset.model_dump(mode="json") if calibration.dataset else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def cached_calibration_set(
    calibration: Calibration,
    tokenizer_dir: Path,
    base_dir: Path,
    *,
    trust_remote_code: bool = False,
    cache_dir: Path | None = None,
) -> CalibrationSet:
    """:func:`build_calibration_set` with the tokenizer in ``tokenizer_dir``, kept in ``cache_dir``
    (default: ``calibration/`` in ``QUANTMILL_CACHE_DIR``).

    A hit loads no tokenizer; an unreadable entry is tokenized again and rewritten.
    """
    if cache_dir is None:
        from quantmill.settings import get_settings

        cache_dir = get_settings().cache_dir / "calibration"
    texts = sample_texts(calibration, base_dir)
    entry = cache_dir / f"{calibration_cache_key(calibration, texts, tokenizer_dir, trust_remote_code)}.json"
    try:
        data = json.loads(entry.read_text())
        return CalibrationSet(
            tuple(tuple(x) for x in data["input_ids"]), data["fingerprint"], data["source"], tuple(texts)
        )
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not cached yet, or a damaged entry: tokenize
    from transformers import AutoTokenizer

    from quantmill.errors import RunStoreError
    from quantmill.runstore import atomic_write_bytes

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=trust_remote_code)
    built = _tokenized(calibration, tokenizer, texts)
    stored = {"input_ids": built.input_ids, "fingerprint": built.fingerprint, "source": built.source}
    try:
        atomic_write_bytes(entry, json.dumps(stored).encode())
    except RunStoreError as exc:  # the cache only saves time: a read-only cache folder costs a tokenization
        log.warning("calibration set not cached: %s", exc)
    return built
