"""Peak RAM of GPTQ against the model's fp16 size, on a >= 300M-parameter Llama built from a config.

    python bench/memory.py                        # `make bench-memory`: 312.9M parameters, ~10 min on 2 cores
    python bench/memory.py --layers 18 --vocab 768   # 303.6M parameters in layers: GPTQ on the CPU takes ~1 h
    python bench/memory.py --layers 1 --hidden 256 --out memory.json   # a smoke run

The default model is hidden 1024 with 4 decoder layers and a 120,000-token vocabulary (untied
embeddings: 246M of its parameters, as in today's large-vocabulary models), so that GPTQ, whose
CPU time grows with the number of quantized columns, finishes in minutes. It has random weights
(memory does not depend on them) and is saved once in fp16 with the demo tokenizer; calibration
is 16 samples of 128 tokens cut from the demo's calibration texts. Each measurement runs in a fresh Python process, so its peak resident
memory (``VmHWM``) is its own:

- ``load``: the libraries quantization imports, then the baseline loaded as ``compress`` loads it;
- ``gptq``: the same imports, then GPTQ W4 g128 through ``quantize_variant`` (load, calibrate, save).

For each it prints the peak (``VmHWM``, exact, kernel-kept), the peak over the fp16 size, the peak's
growth over the process right after its imports, and the peak of anonymous memory (``RssAnon``, sampled
from this process every 20 ms): ``VmHWM`` also counts file-backed pages (shared libraries, the
memory-mapped checkpoint), which the kernel can drop, anonymous ones it cannot without swap. It also
prints the imports alone (torch, transformers and llm-compressor take ~0.6 GB, a fixed cost that is most
of the ratio for small models) and what the highest sampled resident memory was made of. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _env import REPO

DEMO = REPO / "quantmill" / "demo"
CALIBRATION_TEXTS = DEMO / "lm_eval_tasks" / "tiny_world" / "data" / "calibration.jsonl"
SAMPLES, SAMPLE_TOKENS = 16, 128
STEPS = ("load", "gptq")
SAMPLE_SECONDS = 0.02


def resident_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (this process's peak) from /proc, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}: this benchmark needs Linux")


def build_model(folder: Path, hidden: int, layers: int, vocab: int) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEMO / "tiny-llama").save_pretrained(folder)


def calibration_set(model_dir: Path):
    """``SAMPLES`` samples of ``SAMPLE_TOKENS`` tokens, cut in order from the demo's calibration texts."""
    import hashlib

    from transformers import AutoTokenizer

    from quantmill.calibration import CalibrationSet

    texts = [json.loads(line)["text"] for line in CALIBRATION_TEXTS.read_text().splitlines() if line.strip()]
    ids = AutoTokenizer.from_pretrained(model_dir)(" ".join(texts))["input_ids"]
    if len(ids) < SAMPLES * SAMPLE_TOKENS:
        raise SystemExit(f"{CALIBRATION_TEXTS} has {len(ids)} tokens; {SAMPLES}x{SAMPLE_TOKENS} are needed")
    samples = tuple(tuple(ids[i * SAMPLE_TOKENS : (i + 1) * SAMPLE_TOKENS]) for i in range(SAMPLES))
    return CalibrationSet(samples, hashlib.sha256(json.dumps(samples).encode()).hexdigest(), str(CALIBRATION_TEXTS))


def measure_step(step: str, model_dir: Path, work: Path) -> dict:
    """Run ``step`` in this (fresh) process and return its peak resident memory."""
    import llmcompressor  # noqa: F401 -- imported before the baseline, as quantization does
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from quantmill.methods.base import QuantizeContext

    after_imports, imports_peak = resident_bytes("VmRSS"), resident_bytes("VmHWM")
    if step == "load":
        ctx = QuantizeContext(
            source_dir=model_dir,
            out_dir=work,
            calibration=None,
            dtype="float16",
            device="cpu",
            tokenizer_dir=model_dir,
            shared_dir=work,
            source_revision="bench",
        )
        model = ctx.load_model()
        parameters = sum(p.numel() for p in model.parameters())
    else:
        from quantmill.quantize import quantize_variant
        from quantmill.recipe.matrix import Variant
        from quantmill.registry import get_method

        calibration = calibration_set(model_dir)  # before the peak is reset: tokenizing is not quantizing
        params = get_method("gptq").params.model_validate({"bits": 4, "group_size": 128})
        artifact = quantize_variant(
            Variant("gptq-w4-g128", "gptq", params, (), 0),
            source_dir=model_dir,
            out_dir=work / "gptq-w4-g128",
            calibration=calibration,
            dtype="float16",
        )
        parameters = None
        print(f"gptq took {artifact.seconds:.1f} s", file=sys.stderr)
    return {
        "after_imports_bytes": after_imports,
        "imports_peak_bytes": imports_peak,
        "peak_bytes": resident_bytes("VmHWM"),
        "parameters": parameters,
    }


def sample_resident(pid: int) -> tuple[int, int] | None:
    """``(RssAnon, RssFile)`` of process ``pid`` now, in bytes; None once it has exited."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) * 1024
    except OSError:
        return None
    return (fields["RssAnon"], fields["RssFile"]) if len(fields) == 2 else None


def run_step(step: str, model_dir: Path, work: Path) -> dict:
    """Run ``step`` in a fresh process, sampling its anonymous and file-backed resident memory from here.

    ``VmHWM`` (the kernel's exact peak) counts file-backed pages (the memory-mapped checkpoint, shared
    libraries), which the kernel can drop at any time; the peak of anonymous memory, which it cannot drop
    without swap, is only known by sampling (every ``SAMPLE_SECONDS``: a shorter spike can be missed).
    """
    child = subprocess.Popen(
        [sys.executable, __file__, "--step", step, "--model", str(model_dir), "--work", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_anon, file_at_peak_anon, peak_sampled = 0, 0, (0, 0)
    with ThreadPoolExecutor(max_workers=2) as pipes:  # drain both pipes while sampling
        stdout, stderr = pipes.submit(child.stdout.read), pipes.submit(child.stderr.read)
        while child.poll() is None:
            sample = sample_resident(child.pid)
            if sample and sample[0] > peak_anon:
                peak_anon, file_at_peak_anon = sample
            if sample and sum(sample) > sum(peak_sampled):
                peak_sampled = sample
            time.sleep(SAMPLE_SECONDS)
        out, err = stdout.result(), stderr.result()
    if child.wait() != 0:
        raise SystemExit(f"the {step} step failed:\n{err[-3000:]}")
    figures = json.loads(out.strip().splitlines()[-1])
    figures.update(
        peak_anon_bytes=peak_anon,
        file_at_peak_anon_bytes=file_at_peak_anon,
        sampled_peak_anon_file_bytes=peak_sampled,  # what the highest sampled resident memory was made of
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024, help="model width (a multiple of 64)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument(
        "--vocab",
        type=int,
        default=120_000,
        help="vocabulary (the demo tokenizer uses ids < 768; more adds embedding rows)",
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument(
        "--step", choices=("build", *STEPS), help=argparse.SUPPRESS
    )  # a child process's one measurement
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step == "build":  # in its own process: building takes more memory than loading
        build_model(args.model, args.hidden, args.layers, args.vocab)
        return
    if args.step:
        print(json.dumps(measure_step(args.step, args.model, args.work)))
        return

    with tempfile.TemporaryDirectory(prefix="quantmill-memory-bench-") as tmp:
        work = Path(tmp)
        model_dir = work / "model"
        builder = subprocess.run(
            [
                sys.executable,
                __file__,
                "--step",
                "build",
                "--model",
                str(model_dir),
                "--work",
                str(work),
                "--hidden",
                str(args.hidden),
                "--layers",
                str(args.layers),
                "--vocab",
                str(args.vocab),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if builder.returncode != 0:
            raise SystemExit(f"building the model failed:\n{builder.stderr[-3000:]}")
        figures: dict = {}
        for step in STEPS:
            figures[step] = run_step(step, model_dir, work)
        parameters = figures["load"]["parameters"]
        fp16_bytes = 2 * parameters
        figures["parameters"], figures["fp16_bytes"] = parameters, fp16_bytes
    print(f"model: {parameters / 1e6:.1f}M parameters, fp16 size {fp16_bytes / 1e9:.3f} GB")
    imports_peak = figures["gptq"]["imports_peak_bytes"]
    figures["imports_over_fp16"] = round(imports_peak / fp16_bytes, 3)
    print(
        f"imports alone (torch, transformers, llm-compressor): {imports_peak / 1e9:.3f} GB, "
        f"{figures['imports_over_fp16']:.2f}x fp16"
    )
    print(
        f"{'step':6} {'VmHWM':>9} {'/fp16':>6} {'growth/fp16':>12} {'peak RssAnon':>13} {'/fp16':>6} {'RssFile then':>13}"
    )
    for step in STEPS:
        row = figures[step]
        row["peak_over_fp16"] = round(row["peak_bytes"] / fp16_bytes, 3)
        row["growth_over_fp16"] = round((row["peak_bytes"] - row["after_imports_bytes"]) / fp16_bytes, 3)
        row["peak_anon_over_fp16"] = round(row["peak_anon_bytes"] / fp16_bytes, 3)
        print(
            f"{step:6} {row['peak_bytes'] / 1e9:7.3f}GB {row['peak_over_fp16']:5.2f}x {row['growth_over_fp16']:11.2f}x "
            f"{row['peak_anon_bytes'] / 1e9:11.3f}GB {row['peak_anon_over_fp16']:5.2f}x "
            f"{row['file_at_peak_anon_bytes'] / 1e9:11.3f}GB"
        )
    for step in STEPS:
        anon, file = figures[step]["sampled_peak_anon_file_bytes"]
        print(
            f"{step}: highest sampled resident memory {(anon + file) / 1e9:.3f} GB = {anon / 1e9:.3f} anonymous + {file / 1e9:.3f} file-backed"
        )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
