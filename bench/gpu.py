"""The GPU benchmark: a ~0.65B-parameter Llama built from a config, quantized and evaluated on one and two GPUs.

    make bench-gpu                            # installs the CUDA torch build (and vLLM if it can), then runs this
    python bench/gpu.py                       # on a machine with a GPU (after `make install tools CONSTRAINTS=`)
    python bench/gpu.py --tiny --device cpu   # a 2-layer smoke run, as the tests do

No hub access is needed: the model has random weights (fine for time and memory,
meaningless for accuracy), the tokenizer and texts are the demo's. Every step prints its
absolute seconds and the peak GPU memory of each GPU it used. Sections:

- ``one_gpu``: for each method, quantization and evaluation (perplexity + speed) on the first
  GPU, with the ratio of the evaluation time to the baseline's; then, where vLLM is installed,
  each transformers-format variant is served by vLLM from exactly its upload
  (``upload_files``) and its greedy tokens are compared with the baseline's
  (``vllm_greedy_agreement``); otherwise the figure says why it was skipped.
- ``slot_mapping`` (2 GPUs): two variants quantized at once in two worker processes, each
  started with the ``CUDA_VISIBLE_DEVICES`` of its own slot (``quantmill.devices.worker_gpu_env``,
  as ``--processes 2`` does); each must see exactly one GPU, a different one. Then two threads of
  one process each take a slot (``quantmill.devices.hold_gpus``, as steps in threads do): their
  devices must differ.
- ``gpus_per_variant_2`` (2 GPUs): one slot of two GPUs (``QUANTMILL_GPUS_PER_VARIANT=2``):
  where ``device_map: auto`` puts the baseline, a forced split of it over both GPUs (greedy tokens
  compared with one GPU's), and GPTQ quantization and evaluation of a variant in that slot.

A section that needs more GPUs than it finds is skipped with the reason in its figures.
Designed to finish in under 10 minutes on one or two H100s.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from _env import REPO

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


def vllm_skip_reason(device: str) -> str | None:
    """Why vLLM's load check cannot run here, or None when it can."""
    if not device.startswith("cuda"):
        return f"vLLM serves on CUDA; this run is on {device}"
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (make bench-gpu tries `pip install vllm`)"
    return None


def vllm_figures(artifact_path: Path, work: Path, baseline) -> dict:
    """vLLM's greedy agreement with the baseline for one variant folder, or why it could not serve it."""
    from quantmill.evaluation.servable import BASELINE_DETAILS, MAX_NEW_TOKENS, PROMPTS, greedy_agreement
    from quantmill.publish.publisher import upload_files

    start = time.perf_counter()
    try:
        tokens = vllm_generate(
            upload_files(artifact_path), work / f"vllm-{artifact_path.name}", PROMPTS, MAX_NEW_TOKENS
        )
    except Exception as exc:  # noqa: BLE001 -- the figure says why vLLM could not serve it
        return {"vllm": f"failed: {type(exc).__name__}: {exc}"[:300]}
    return {
        "vllm_seconds": round(time.perf_counter() - start, 2),
        "vllm_greedy_agreement": round(greedy_agreement(baseline.details[BASELINE_DETAILS]["tokens"], tokens), 4),
    }


def gpu_count(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


@contextlib.contextmanager
def timed_step(figures: dict, name: str) -> Iterator[dict]:
    """Record the block's seconds and each GPU's peak allocated memory in ``figures[name]``, and print them."""
    import torch

    row: dict = figures.setdefault(name, {})
    gpus = torch.cuda.device_count()  # 0 with a CPU build of torch
    for index in range(gpus):
        torch.cuda.reset_peak_memory_stats(index)
    start = time.perf_counter()
    yield row
    row["seconds"] = round(time.perf_counter() - start, 2)
    if gpus:
        peaks = {index: torch.cuda.max_memory_allocated(index) for index in range(gpus)}
        row["peak_gpu_gb"] = {f"cuda:{index}": round(peak / 1e9, 3) for index, peak in peaks.items() if peak}
    print(name, json.dumps(row), flush=True)


def skipped(figures: dict, section: str, reason: str) -> None:
    figures[section] = {"skipped": reason}
    print(f"{section}: skipped: {reason}", flush=True)


def one_gpu(args, work: Path, loaded, resolved, calibration, figures: dict) -> None:
    """Each method quantized and evaluated on the run's device, and vLLM's load check."""
    from quantmill import stages

    with timed_step(figures, "baseline") as row:
        baseline = stages.evaluate_baseline(loaded, resolved, args.device)
        row.update({k: v.value for k, v in baseline.metrics.items()})
    baseline_seconds = figures["baseline"]["seconds"]
    vllm_skip = None if args.no_vllm else vllm_skip_reason(args.device)
    if vllm_skip or args.no_vllm:
        figures["vllm"] = {"skipped": "--no-vllm" if args.no_vllm else vllm_skip}
        print(f"vllm: skipped: {figures['vllm']['skipped']}", flush=True)
    for variant in loaded.variants:
        with timed_step(figures, f"{variant.id}/quantize"):
            artifact = stages.quantize_one(loaded, variant, resolved, calibration, args.device, work / variant.id)
        with timed_step(figures, f"{variant.id}/evaluate") as row:
            result = stages.evaluate_variant(loaded, variant, artifact.path, args.device, resolved.tokenizer_path)
            row.update({k: v.value for k, v in result.metrics.items()})
        figures[variant.id] = {
            "quantize_seconds": figures[f"{variant.id}/quantize"]["seconds"],
            "evaluate_seconds": figures[f"{variant.id}/evaluate"]["seconds"],
            "evaluate_ratio_to_baseline": round(figures[f"{variant.id}/evaluate"]["seconds"] / baseline_seconds, 3),
            "peak_cuda_gb": round((artifact.provenance.get("peak_cuda_bytes") or 0) / 1e9, 3),
            **{k: v.value for k, v in result.metrics.items()},
        }
        if not vllm_skip and variant.spec.output_format.library_name == "transformers":
            with timed_step(figures, f"{variant.id}/vllm") as row:
                row.update(vllm_figures(artifact.path, work, baseline))
            figures[variant.id].update(figures[f"{variant.id}/vllm"])


def slot_mapping(args, work: Path, figures: dict) -> None:
    """Two variants at once in two worker processes, each given its slot's ``CUDA_VISIBLE_DEVICES``;
    then two threads taking one slot each through the GPU locks."""
    from quantmill.devices import hold_gpus, visible_gpu_ids, worker_gpu_env

    ids = visible_gpu_ids(gpu_count(args.device), os.environ.get("CUDA_VISIBLE_DEVICES"))
    environments = worker_gpu_env(ids, 1, 2)
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(work / "model"), "--out", str(work / f"worker-{w}.json")],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w, env in enumerate(environments)
    ]
    reports = []
    for w, process in enumerate(processes):
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"slot worker {w} failed:\n{stderr[-3000:]}")
        reports.append(json.loads((work / f"worker-{w}.json").read_text()))
    section = {
        "seconds": round(time.perf_counter() - start, 2),
        "workers": reports,
        "each_sees_one_gpu": all(r["device_count"] == 1 for r in reports),
        "distinct_gpus": len({r["gpu_uuid"] for r in reports}) == len(reports),
    }
    devices: list[str] = []
    both_held = threading.Barrier(2, timeout=60)

    def take_slot() -> None:
        with hold_gpus(ids, 1, work / "locks") as placement:
            devices.append(placement.device)
            both_held.wait()  # both threads hold a slot at once

    threads = [threading.Thread(target=take_slot) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    section["thread_devices"] = devices
    section["threads_distinct"] = len(set(devices)) == 2
    figures["slot_mapping"] = section
    print("slot_mapping", json.dumps(section), flush=True)


def worker(model_dir: Path, out: Path) -> None:
    """One slot's worker process: quantize (RTN W4, on "cuda", i.e. the slot's GPU) and report what it saw."""
    import torch

    from quantmill.quantize import quantize_variant
    from quantmill.recipe.matrix import Variant
    from quantmill.registry import get_method

    params = get_method("rtn").params.model_validate({"bits": 4, "group_size": 128})
    torch.cuda.reset_peak_memory_stats()
    artifact = quantize_variant(
        Variant("rtn-w4-g128", "rtn", params, (), 0),
        source_dir=model_dir,
        out_dir=out.with_suffix(""),
        calibration=None,
        dtype="bfloat16",
        device="cuda",
    )
    report = {
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "device_count": torch.cuda.device_count(),
        "gpu_uuid": str(torch.cuda.get_device_properties(0).uuid),
        "quantize_seconds": round(artifact.seconds, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3),
    }
    out.write_text(json.dumps(report))


def gpus_per_variant_2(args, work: Path, loaded, resolved, calibration, figures: dict) -> None:
    """A slot of two GPUs: the baseline's placement, a forced split over both, and GPTQ in that slot."""
    import torch

    from quantmill import stages
    from quantmill.devices import hold_gpus, model_placement, running_on, visible_gpu_ids
    from quantmill.evaluation.backends import load_transformers_model

    ids = visible_gpu_ids(gpu_count(args.device), os.environ.get("CUDA_VISIBLE_DEVICES"))
    section: dict = {}
    with hold_gpus(ids, 2, work / "locks") as placement, running_on(placement) as device:
        section["slot_gpus"] = list(placement.gpus)
        with timed_step(figures, "gpus_per_variant_2/load_auto") as row:
            model = load_transformers_model(resolved.path, "bfloat16", device)
            row["devices"] = sorted({str(d) for d in model.hf_device_map.values()})
        prompt = torch.tensor([[1, *range(5, 37)]], device=device)
        single = model.generate(prompt, max_new_tokens=16, do_sample=False).tolist()
        del model
        torch.cuda.empty_cache()
        # "auto" fills the first GPU before the second; capping each GPU below the model's size forces a split
        model_bytes = sum(f.stat().st_size for f in resolved.path.glob("*.safetensors"))
        placement_kwargs = model_placement(device)
        placement_kwargs["max_memory"] = {
            **placement_kwargs["max_memory"],
            **dict.fromkeys(placement.gpus, int(0.6 * model_bytes)),
        }
        with timed_step(figures, "gpus_per_variant_2/load_split") as row:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=torch.bfloat16, **placement_kwargs)
            row["devices"] = sorted({str(d) for d in model.hf_device_map.values()})
            row["greedy_matches_one_gpu"] = (
                model.generate(prompt, max_new_tokens=16, do_sample=False).tolist() == single
            )
        del model
        torch.cuda.empty_cache()
        variant = next(v for v in loaded.variants if v.method == "gptq")
        with timed_step(figures, "gpus_per_variant_2/gptq_quantize"):
            artifact = stages.quantize_one(
                loaded, variant, resolved, calibration, device, work / "two-gpus" / variant.id
            )
        with timed_step(figures, "gpus_per_variant_2/gptq_evaluate") as row:
            result = stages.evaluate_variant(loaded, variant, artifact.path, device, resolved.tokenizer_path)
            row.update({k: v.value for k, v in result.metrics.items()})
    figures["gpus_per_variant_2"] = section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 256: a smoke run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM's load check even where vLLM is installed")
    parser.add_argument("--worker", type=Path, metavar="MODEL", help=argparse.SUPPRESS)  # one slot_mapping worker
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.out)
        return

    from quantmill import stages
    from quantmill.recipe import load_recipe
    from quantmill.resolve import resolve_model

    gpus = gpu_count(args.device)
    figures: dict = {"device": args.device, "gpus": gpus}
    with tempfile.TemporaryDirectory(prefix="quantmill-gpu-bench-") as tmp:
        work = Path(tmp)
        figures["parameters"] = build_model(work / "model", args.tiny)
        methods = args.methods.split(",")
        rows = "".join(f"    - {ROWS[m]}\n" for m in methods)
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
        with timed_step(figures, "calibration"):
            calibration = stages.prepare_calibration(loaded, resolved)
        one_gpu(args, work, loaded, resolved, calibration, figures)
        if gpus < 2:
            found = f"found {gpus} GPU(s)" if args.device.startswith("cuda") else f"this run is on {args.device}"
            skipped(figures, "slot_mapping", f"needs 2 GPUs; {found}")
            skipped(figures, "gpus_per_variant_2", f"needs 2 GPUs; {found}")
        else:
            slot_mapping(args, work, figures)
            if "gptq" in methods:
                gpus_per_variant_2(args, work, loaded, resolved, calibration, figures)
            else:
                skipped(figures, "gpus_per_variant_2", "runs GPTQ: add gptq to --methods")
        figures["total_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
