"""The tokenized calibration set is cached: a rerun loads no tokenizer, and any input change tokenizes again."""

from __future__ import annotations

import shutil

import pytest
import transformers

from quantmill.calibration import build_calibration_set, cached_calibration_set
from quantmill.dataref import DatasetRef
from quantmill.recipe.schema import Calibration
from quantmill.testing.recipes import DEMO_DATA, DEMO_MODEL

pytestmark = pytest.mark.slow  # each test loads the demo tokenizer through transformers


@pytest.fixture
def tokenizer_dir(tmp_path):
    """The demo model's tokenizer files (no weights), in a folder the test may edit."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
        shutil.copy(DEMO_MODEL / name, folder / name)
    return folder


@pytest.fixture
def loads(monkeypatch):
    """Counts tokenizer loads."""
    counted: list[str] = []
    real = transformers.AutoTokenizer.from_pretrained

    def counting(path, **kwargs):
        counted.append(str(path))
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", counting)
    return counted


CALIBRATION = Calibration(dataset=DatasetRef(path=str(DEMO_DATA / "calibration.jsonl")), num_samples=8, seq_len=16)


def test_a_rerun_finds_the_set_tokenized(tmp_path, tokenizer_dir, loads):
    cache = tmp_path / "cache"
    first = cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache)
    again = cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache)
    assert len(loads) == 1  # the rerun loaded no tokenizer
    assert again == first
    uncached = build_calibration_set(CALIBRATION, transformers.AutoTokenizer.from_pretrained(tokenizer_dir), tmp_path)
    assert first == uncached  # what the cache holds is what tokenizing gives


def test_any_input_change_tokenizes_again(tmp_path, tokenizer_dir, loads):
    cache = tmp_path / "cache"
    first = cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache)
    shorter = cached_calibration_set(
        CALIBRATION.model_copy(update={"seq_len": 8}), tokenizer_dir, tmp_path, cache_dir=cache
    )
    other = cached_calibration_set(CALIBRATION.model_copy(update={"seed": 1}), tokenizer_dir, tmp_path, cache_dir=cache)
    assert len(loads) == 3 and len({first.fingerprint, shorter.fingerprint, other.fingerprint}) == 3
    config = tokenizer_dir / "tokenizer_config.json"
    config.write_text(config.read_text().replace("{", '{"model_max_length": 4, ', 1))  # an edited tokenizer
    cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache)
    assert len(loads) == 4


def test_a_damaged_entry_is_tokenized_again(tmp_path, tokenizer_dir, loads):
    cache = tmp_path / "cache"
    first = cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache)
    (entry,) = cache.iterdir()
    entry.write_text(entry.read_text()[:30])  # a write cut short
    assert cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache) == first
    assert len(loads) == 2
    assert cached_calibration_set(CALIBRATION, tokenizer_dir, tmp_path, cache_dir=cache) == first
    assert len(loads) == 2  # and it was rewritten whole
