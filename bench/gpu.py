"""The GPU benchmark: a ~0.65B-parameter Llama built from a config, quantized and evaluated on CUDA.

    python bench/gpu.py                       # on a machine with a GPU (after `make install tools`)
    python bench/gpu.py --tiny --device cpu   # a 2-layer smoke run, as the tests do

No hub access is needed: the model has random weights (fine for time and memory,
meaningless for accuracy), the tokenizer and texts are the demo's. For each method
it prints quantization seconds, evaluation seconds (perplexity + speed), peak GPU
memory, size, and the ratio of each to the baseline's evaluation. Designed to
finish in under 8 minutes on one H100.

With ``--vllm`` (vLLM installed), each transformers-format variant is also served by
vLLM from exactly its upload (``upload_files``), and its greedy tokens for the
servable check's prompts are compared with the baseline's (``vllm_greedy_agreement``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEMO = REPO / "quantmill" / "demo"
DATA = DEMO / "lm_eval_tasks" / "tiny_world" / "data"
ROWS = {
    "gptq": "{method: gptq, bits: 4, group_size: 128}",
    "awq": "{method: awq, bits: 4, group_size: 128}",
    "fp8": "{method: fp8, scheme: dynamic}",
    "bnb": "{method: bnb, type: nf4, compute_dtype: bfloat16}",
    "gguf": "{method: gguf, type: q4_k_m}",
}


def build_model(folder: Path, tiny: bool) -> int:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    hidden, layers, intermediate = (256, 2, 512) if tiny else (1536, 16, 6144)
    config = LlamaConfig(
        vocab_size=768,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEMO / "tiny-llama").save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def vllm_generate(files: dict[str, Path], folder: Path, prompts, max_new_tokens: int) -> list[list[int]]:
    """Greedy token ids from vLLM serving exactly ``files`` (a variant's upload, staged into ``folder``),
    for each prompt, through the chat template when the tokenizer has one (as the servable check does)."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from quantmill.evaluation.servable import prompt_ids

    for name, source in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).hardlink_to(source)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    llm = LLM(model=str(folder), enforce_eager=True, gpu_memory_utilization=0.3, seed=0)
    try:
        requests = [{"prompt_token_ids": prompt_ids(tokenizer, prompt)} for prompt in prompts]
        outputs = llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=max_new_tokens))
        return [list(output.outputs[0].token_ids) for output in outputs]
    finally:
        del llm


def vllm_figures(artifact_path: Path, work: Path, baseline) -> dict:
    """vLLM's greedy agreement with the baseline for one variant folder, or why it could not serve it."""
    from quantmill.evaluation.servable import BASELINE_DETAILS, MAX_NEW_TOKENS, PROMPTS, greedy_agreement
    from quantmill.publish.publisher import upload_files

    try:
        tokens = vllm_generate(
            upload_files(artifact_path), work / f"vllm-{artifact_path.name}", PROMPTS, MAX_NEW_TOKENS
        )
    except Exception as exc:  # noqa: BLE001 -- the figure says why vLLM could not serve it
        return {"vllm": f"failed: {type(exc).__name__}: {exc}"[:300]}
    return {"vllm_greedy_agreement": round(greedy_agreement(baseline.details[BASELINE_DETAILS]["tokens"], tokens), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 256: a smoke run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--vllm", action="store_true", help="also serve each transformers-format variant with vLLM")
    args = parser.parse_args()

    from quantmill import stages
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    figures: dict = {"device": args.device}
    with tempfile.TemporaryDirectory(prefix="quantmill-gpu-bench-") as tmp:
        work = Path(tmp)
        figures["parameters"] = build_model(work / "model", args.tiny)
        rows = "".join(f"    - {ROWS[m]}\n" for m in args.methods.split(","))
        (work / "recipe.yaml").write_text(f"""\
name: gpu-bench
model: {{id: {work / "model"}, dtype: bfloat16}}
device: {args.device}
calibration: {{dataset: {{path: {DATA / "calibration.jsonl"}}}, num_samples: 128, seq_len: 512}}
evaluation:
  perplexity: {{dataset: {{path: {DATA / "tiny_world_ppl.jsonl"}}}, max_length: 512, stride: 256}}
  metrics: [size, speed, memory]
  batch_size: 16
variants:
  methods:
{rows}""")
        loaded = load_recipe(work / "recipe.yaml")
        resolved = resolve_model(loaded)
        start = time.perf_counter()
        calibration = stages.prepare_calibration(loaded, resolved)
        baseline_start = time.perf_counter()
        baseline = stages.evaluate_baseline(loaded, resolved, args.device)
        baseline_seconds = time.perf_counter() - baseline_start
        figures["baseline"] = {
            "evaluate_seconds": round(baseline_seconds, 2),
            **{k: v.value for k, v in baseline.metrics.items()},
        }
        for variant in loaded.variants:
            artifact = stages.quantize_one(loaded, variant, resolved, calibration, args.device, work / variant.id)
            evaluate_start = time.perf_counter()
            result = stages.evaluate_variant(loaded, variant, artifact.path, args.device, resolved.tokenizer_path)
            evaluate_seconds = time.perf_counter() - evaluate_start
            figures[variant.id] = {
                "quantize_seconds": round(artifact.seconds, 2),
                "evaluate_seconds": round(evaluate_seconds, 2),
                "evaluate_ratio_to_baseline": round(evaluate_seconds / baseline_seconds, 3),
                "peak_cuda_gb": round((artifact.provenance.get("peak_cuda_bytes") or 0) / 1e9, 3),
                **{k: v.value for k, v in result.metrics.items()},
            }
            if args.vllm and variant.spec.output_format.library_name == "transformers":
                figures[variant.id].update(vllm_figures(artifact.path, work, baseline))
            print(variant.id, json.dumps(figures[variant.id]), flush=True)
        figures["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
