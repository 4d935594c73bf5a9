"""Saving an llm-compressor output releases the baseline's memory-mapped pages shard by shard.

The unchanged tensors (embeddings, output head) are read from the memory-mapped baseline only to be
written out; ``compress`` saves in shards and releases those pages after each, so they are never all
resident at once. The figures this buys on a >= 300M-parameter model are in ``bench/memory.py``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("llmcompressor")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")

from quantmill.methods import _llmcompressor  # noqa: E402
from quantmill.methods.base import QuantizeContext  # noqa: E402
from quantmill.registry import get_method  # noqa: E402
from tests.conftest import DEMO_MODEL  # noqa: E402

# 8192 x 128 fp16: each embedding table is 2 MiB, 512 pages
VOCAB, HIDDEN = 8192, 128
SHARD_SIZE = "1MB"  # several shards, the tables in shards of their own


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """A one-layer fp16 Llama with untied embeddings, saved as transformers loads it memory-mapped."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("baseline")
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(folder)
    return folder


def quantize_rtn(source: Path, out: Path) -> None:
    spec = get_method("rtn")
    assert spec.quantize is not None
    ctx = QuantizeContext(
        source_dir=source,
        out_dir=out,
        calibration=None,
        dtype="float16",
        device="cpu",
        tokenizer_dir=DEMO_MODEL,
        shared_dir=out.parent,
        source_revision="test",
    )
    spec.quantize(spec.params.model_validate({"bits": 4, "group_size": 64}), ctx)


def resident_file_bytes(folder: Path) -> int:
    """File-backed resident bytes of this process's mappings of ``folder``'s safetensors (``Rss - Anonymous``)."""
    files = {str(path.resolve()) for path in folder.glob("*.safetensors")}
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header line: address range, perms, ..., path
            inside = len(fields) >= 6 and fields[5] in files
        elif inside and fields[0] in ("Rss:", "Anonymous:"):
            resident += int(fields[1]) * 1024 * (1 if fields[0] == "Rss:" else -1)
    return resident


def saved_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors: dict = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


@pytest.fixture(scope="module")
def released(baseline, tmp_path_factory):
    """Quantize with the release on; record the baseline's resident file-backed bytes after each shard."""
    after_each_shard: list[tuple[int, bool, int]] = []  # (resident before, released, resident after)
    real_release = _llmcompressor.release_checkpoint_pages

    def release_and_record(folder: Path) -> bool:
        before = resident_file_bytes(baseline)
        released = real_release(folder)
        after_each_shard.append((before, released, resident_file_bytes(baseline)))
        return released

    out = tmp_path_factory.mktemp("released") / "rtn"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_llmcompressor, "SAVE_SHARD_SIZE", SHARD_SIZE)
        patch.setattr(_llmcompressor, "release_checkpoint_pages", release_and_record)
        quantize_rtn(baseline, out)
    return out, after_each_shard


def test_the_baselines_pages_are_released_after_each_shard(released):
    out, after_each_shard = released
    shards = sorted(out.glob("*.safetensors"))
    assert len(shards) >= 3  # both embedding tables in shards of their own, the rest beside
    assert len(after_each_shard) == len(shards)
    before, released_ok, after = zip(*after_each_shard, strict=True)
    assert any(before) and all(released_ok)  # the baseline was mapped and resident: the release had work to do
    assert list(after) == [0] * len(shards)  # not one page of the baseline left resident


def test_the_release_changes_no_saved_weight_and_the_output_loads(released, baseline, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out, _ = released
    unreleased = tmp_path / "rtn"
    with pytest.MonkeyPatch.context() as patch:  # as saved before: one file, nothing released
        patch.setattr(_llmcompressor, "SAVE_SHARD_SIZE", "20GB")
        patch.setattr(_llmcompressor, "releasing_checkpoint_pages_per_shard", lambda folder: contextlib.nullcontext())
        quantize_rtn(baseline, unreleased)
    assert [path.name for path in unreleased.glob("*.safetensors")] == ["model.safetensors"]

    expected, actual = saved_tensors(unreleased), saved_tensors(out)
    assert sorted(actual) == sorted(expected)
    assert all(torch.equal(actual[name], expected[name]) for name in expected)
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, VOCAB) and logits.isfinite().all()
