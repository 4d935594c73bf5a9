"""GGUF: llama.cpp conversion, every common type, imatrix, fallbacks, evaluation on the same task."""

from __future__ import annotations

import shutil

import pytest

from quantmill.llamacpp import find_llama_cpp, parse_fallbacks
from quantmill.quantize import quantize_variant
from tests.conftest import DEMO_DATA, DEMO_MODEL, DEMO_TASKS
from tests.methods.test_quantize_all import make_variant
from tests.support.sequential import run_stages

TYPES = ["f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "q2_k", "iq4_xs"]

RECIPE = f"""\
name: gguf-types
model: {{id: {DEMO_MODEL}, dtype: float32}}
device: cpu
calibration:
  dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}
evaluation:
  tasks: [tiny_world_mc]
  include_paths: [{DEMO_TASKS}]
  limit: 80  # of 310 questions: every type is still measured on the task, at a quarter of the llama.cpp calls
  perplexity: {{dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}, max_length: 64, stride: 32}}
variants:
  methods:
    - {{method: gguf, types: [{", ".join(TYPES)}]}}
  overrides:
    gguf-iq4_xs: {{imatrix: true}}  # IQ4 runs without one, but is better with it
"""


@pytest.fixture(scope="module")
def llama():
    found = find_llama_cpp()
    if found is None or found.tool("llama-quantize") is None:
        if shutil.which("cmake") is None:
            pytest.skip("llama.cpp tools cannot be built here: no cmake")
        pytest.fail("llama.cpp tools are missing: run `quantmill setup llama-cpp` (make test does)")
    return found


@pytest.fixture(scope="module")
def gguf_results(llama, tmp_path_factory):
    staged = run_stages(RECIPE, tmp_path_factory.mktemp("gguf"), baseline=False)
    return {m.variant.params.type: (m.artifact, m.result) for m in staged.variants.values()}


@pytest.mark.slow
@pytest.mark.gguf
def test_every_type_loads_and_is_measured_on_the_same_task(gguf_results):
    from llama_cpp import Llama

    for gguf_type, (artifact, result) in gguf_results.items():
        file = artifact.path / artifact.provenance["details"]["file"]
        assert file.name == f"tiny-llama-{gguf_type.upper()}.gguf"
        Llama(str(file), vocab_only=True, verbose=False)
        assert result.value("tiny_world_mc/acc") > 0.5, gguf_type
        assert result.value("ppl") > 1
        assert artifact.provenance["details"]["tool"] == "llama-quantize" or gguf_type == "f16"
    ppl = {t: r.value("ppl") for t, (_, r) in gguf_results.items()}
    print(
        {
            t: (
                round(r.value("tiny_world_mc/acc"), 4),
                round(ppl[t], 4),
                r.value("bits_per_weight"),
                r.metrics.get("kld") and round(r.metrics["kld"].value, 6),
            )
            for t, (_, r) in gguf_results.items()
        }
    )
    assert abs(ppl["q8_0"] - ppl["f16"]) / ppl["f16"] < 0.01
    assert ppl["q2_k"] > ppl["q8_0"]
    sizes = {t: r.value("size_mb") for t, (_, r) in gguf_results.items()}
    assert sizes["q2_k"] < sizes["q4_k_m"] < sizes["q8_0"] < sizes["f16"]


@pytest.mark.slow
@pytest.mark.gguf
def test_kld_orders_the_quants(gguf_results):
    for gguf_type, (_, result) in gguf_results.items():
        assert gguf_type == "f16" or "kld" in result.metrics, (gguf_type, result.details.get("kld"))
    kld = {t: r.metrics["kld"].value for t, (_, r) in gguf_results.items() if t != "f16"}
    assert 0 <= kld["q8_0"] < kld["q4_k_m"] < kld["q2_k"]


@pytest.mark.slow
@pytest.mark.gguf
def test_iq_type_uses_an_imatrix_made_once(gguf_results):
    artifact, _ = gguf_results["iq4_xs"]
    imatrix = artifact.provenance["details"]["imatrix"]
    assert imatrix["samples"] > 0 and imatrix["fingerprint"] == artifact.provenance["calibration"]["fingerprint"]
    assert (artifact.path / "imatrix.gguf").is_file()
    shared = list((artifact.path.parent / ".shared").glob("imatrix-*.gguf"))
    assert len(shared) == 1


@pytest.mark.gguf
def test_in_process_fallback_without_tools(tmp_path, monkeypatch, llama):
    tree_only = tmp_path / "llama.cpp"
    tree_only.mkdir()
    (tree_only / "convert_hf_to_gguf.py").symlink_to(llama.tree / "convert_hf_to_gguf.py")
    (tree_only / "conversion").symlink_to(llama.tree / "conversion")
    (tree_only / "gguf-py").symlink_to(llama.tree / "gguf-py")
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tree_only))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    from quantmill.settings import get_settings

    get_settings.cache_clear()
    try:
        artifact = quantize_variant(
            make_variant("gguf", {"type": "q4_k_m"}), source_dir=DEMO_MODEL, out_dir=tmp_path / "q", calibration=None
        )
    finally:
        get_settings.cache_clear()
    details = artifact.provenance["details"]
    assert details["tool"].startswith("llama_cpp.llama_model_quantize (in-process")
    assert details["llama_cpp_origin"] == "LLAMA_CPP_DIR"
    assert details["tensor_types"].get("Q4_K", 0) > 0


def test_fallback_lines_are_parsed():
    log = (
        "warning: blk.0.ffn_down.weight                 - ncols    172 not divisible by 256 (required for type    q4_K) "
        "-> falling back to    q5_0\nother line\nwarning: blk.1.ffn_down.weight - ncols    172 not divisible by  32 "
        "(required for type    q8_0) (WARNING: must use F16 due to unusual shape) -> falling back to     f16\n"
    )
    assert parse_fallbacks(log) == [
        {"tensor": "blk.0.ffn_down.weight", "columns": 172, "block": 256, "wanted": "q4_K", "used": "q5_0"},
        {"tensor": "blk.1.ffn_down.weight", "columns": 172, "block": 32, "wanted": "q8_0", "used": "f16"},
    ]


@pytest.mark.gguf
def test_shared_model_conversion_fallbacks_and_greedy_text(stories_hf, tmp_path, llama):
    from quantmill.methods._gguf_eval import LlamaCppLM

    outputs = {}
    for gguf_type in ("f16", "q8_0", "q4_k_m"):
        artifact = quantize_variant(
            make_variant("gguf", {"type": gguf_type}),
            source_dir=stories_hf,
            out_dir=tmp_path / gguf_type,
            calibration=None,
        )
        outputs[gguf_type] = artifact
    fallbacks = outputs["q4_k_m"].provenance["details"]["fallbacks"]
    widths = {f["columns"] for f in fallbacks}
    assert widths == {64, 172}, widths
    assert all(f["wanted"] == "q4_K" or f["wanted"] == "q6_K" for f in fallbacks)
    q8_fallbacks = outputs["q8_0"].provenance["details"]["fallbacks"]
    assert {f["tensor"] for f in q8_fallbacks} == {f"blk.{i}.ffn_down.weight" for i in range(5)}  # 172 % 32 != 0
    texts = {}
    for gguf_type in ("f16", "q8_0"):
        details = outputs[gguf_type].provenance["details"]
        lm = LlamaCppLM(str(outputs[gguf_type].path / details["file"]))
        texts[gguf_type] = lm.greedy("Once upon a time", 30)
        lm.llm.close()
    assert texts["f16"] == texts["q8_0"], texts
    assert "Lily" in texts["f16"], texts["f16"]
