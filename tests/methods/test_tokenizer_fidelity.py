"""Tokenizer fidelity: GGUF variants of a real model tokenize like its HF tokenizer, and drift fails a variant."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from quantmill.errors import TokenizerDriftError
from quantmill.evaluation.fidelity import compare
from quantmill.methods._gguf import SENTENCEPIECE_FROM_MERGES
from tests.methods.test_gguf import llama  # noqa: F401 -- the llama.cpp tools fixture
from tests.support.sequential import run_stages

HELD_OUT = Path(__file__).resolve().parents[1] / "data" / "stories_heldout.txt"


@pytest.mark.fast
def test_compare_counts_the_texts_that_tokenize_differently():
    base = {"a b": [1, 2], "c": [3], "d": [4]}
    artifact = {"a b": [1, 2], "c": [3, 3], "d": [5]}
    fidelity = compare(artifact.__getitem__, base.__getitem__, {"perplexity": ["a b", "c"], "task:x": ["d"]})
    assert (fidelity.texts, fidelity.differing, fidelity.sources) == (3, 2, {"perplexity": 2, "task:x": 1})
    assert fidelity.agreement == pytest.approx(1 / 3) and fidelity.first_difference == "c"


@pytest.fixture(scope="module")
def stories_gguf(llama, tmp_path_factory):  # noqa: F811
    """stories260K through the pipeline: baseline, Q8_0 and Q4_K_M, perplexity on a held-out text."""
    from tests.conftest import STORIES

    if not (STORIES / "hf" / "config.json").is_file():
        pytest.skip(f"shared model not present at {STORIES}")
    recipe = f"""\
name: stories
model: {{id: {STORIES / "hf"}, dtype: float32}}
device: cpu
evaluation:
  perplexity: {{dataset: {{path: {HELD_OUT}}}, max_length: 256, stride: 128}}
  metrics: [size]
variants:
  methods:
    - {{method: gguf, types: [q8_0, q4_k_m]}}
"""
    return run_stages(recipe, tmp_path_factory.mktemp("stories"))


@pytest.mark.slow
@pytest.mark.gguf
def test_stories_gguf_tokenizes_like_hf_and_q8_keeps_the_baseline_perplexity(stories_gguf, stories_hf):
    baseline = stories_gguf.baseline
    assert baseline is not None
    for made in stories_gguf.variants.values():
        assert made.artifact.provenance["details"]["vocabulary"] == SENTENCEPIECE_FROM_MERGES
        assert made.result.value("tokenizer_agreement") == 1.0
        fidelity = made.result.details["tokenizer_fidelity"]
        assert fidelity["texts"] == len(HELD_OUT.read_text().splitlines()) and fidelity["differing"] == 0
    q8 = stories_gguf.variants["gguf-q8_0"].result.value("ppl")
    assert abs(q8 - baseline.value("ppl")) / baseline.value("ppl") < 0.01, (q8, baseline.value("ppl"))
    assert not (stories_hf / "tokenizer.model").exists()  # the conversion staged its SentencePiece model elsewhere


def _damage_scores(gguf_file: Path) -> None:
    """Give every token the same score (what llama.cpp's converter writes without a tokenizer.model)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_file), "r+")
    scores = reader.fields["tokenizer.ggml.scores"]
    for index in scores.data:
        scores.parts[index][...] = -1000.0
    reader.data.flush()


@pytest.mark.slow
@pytest.mark.gguf
def test_a_gguf_with_damaged_scores_fails_with_tokenizer_drift(stories_gguf, tmp_path):
    from quantmill import stages

    made = stories_gguf.variants["gguf-q8_0"]
    damaged = tmp_path / made.artifact.path.name
    shutil.copytree(made.artifact.path, damaged)
    _damage_scores(damaged / made.artifact.provenance["details"]["file"])
    loaded, tokenizer = stories_gguf.loaded, stories_gguf.resolved.tokenizer_path
    texts = len(HELD_OUT.read_text().splitlines())
    with pytest.raises(
        TokenizerDriftError, match=rf"^tokenizer drift: [1-9]\d* of {texts} texts tokenize differently$"
    ):
        stages.evaluate_variant(loaded, made.variant, damaged, "cpu", tokenizer)
