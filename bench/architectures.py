"""Every CPU-capable method on tiny random models of each architecture family: the arch × method matrix.

Each family (``quantmill.testing.architectures``) gets one recipe with every method below, run step after
step as the flow runs it (``pipeline.run_sequential``: quantize, tokenizer fidelity, evaluation, servable
check in a fresh process, gates), publishing nothing. Each cell is ``ok`` with the variant's size and its
perplexity ratio to the unquantized model, or the variant's recorded error in one line.

    PYTHONPATH=. python bench/architectures.py                       # every family, demo tokenizer
    PYTHONPATH=. python bench/architectures.py --families gpt2 qwen2 --tokenizer gguf
    PYTHONPATH=. python bench/architectures.py --methods rtn gguf    # only these methods

``--tokenizer gguf`` gives each family with one its real tokenizer (built from llama.cpp's vocab-only GGUFs,
cached; minutes the first time), so llama.cpp's converter meets a tokenizer it knows. Takes minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from quantmill.errors import RecipeError
from quantmill.pipeline import run_sequential
from quantmill.recipe.load import load_recipe
from quantmill.testing.architectures import FAMILIES, build_model
from quantmill.testing.recipes import DEMO_DATA

#: method → recipe rows: one 8-bit setting (its perplexity ratio should be ~1) and, where the method has
#: one, a 4-bit setting; QAT trains, too slow for a sweep
ROWS = {
    "rtn": ["{method: rtn, bits: 8, group_size: 64}"],
    "gptq": ["{method: gptq, bits: 4, group_size: 64}"],
    "awq": ["{method: awq, bits: 4, group_size: 64}"],
    "int8": ["{method: int8}"],
    "fp8": ["{method: fp8, scheme: dynamic}"],
    "bnb": ["{method: bnb, type: nf4}"],
    "torchao": ["{method: torchao, scheme: int8-weight-only}"],
    "hqq": ["{method: hqq, bits: 4, group_size: 64}"],
    "gguf": ["{method: gguf, types: [q8_0, q4_k_m]}"],
}


def recipe_text(model_dir: Path, rows: list[str]) -> str:
    rows_text = "".join(f"    - {row}\n" for row in rows)
    return f"""\
name: arch-{model_dir.name.replace("_", "-")}
model: {{id: {model_dir}, dtype: float32}}
device: cpu
calibration: {{dataset: {{path: {DEMO_DATA / "calibration.jsonl"}}}, num_samples: 16, seq_len: 64}}
evaluation:
  batch_size: 8
  perplexity:
    dataset: {{path: {DEMO_DATA / "tiny_world_ppl.jsonl"}}}
    max_length: 128
    stride: 64
    max_documents: 40
  metrics: [size]
variants:
  methods:
{rows_text}gates:
  - {{metric: ppl, max_increase_pct: 1000}}
publish: {{target: none}}
"""


def cell(variant, baseline_ppl: float | None) -> str:
    if variant.error:
        return "FAIL " + variant.error.splitlines()[0][:160]
    metrics = variant.evaluation.metrics if variant.evaluation else {}
    ppl = metrics.get("ppl")
    size = metrics.get("size_mb")
    agreement = metrics.get("greedy_agreement")
    ratio = f"ppl×{ppl.value / baseline_ppl:.3f}" if ppl and baseline_ppl else "ppl ?"
    parts = [ratio, f"{size.value:.2f} MB" if size else "size ?"]
    if agreement is not None:
        parts.append(f"greedy {agreement.value:.2f}")
    return f"{variant.status.value} " + ", ".join(parts)


def accepted_rows(model_dir: Path, methods: list[str], work: Path) -> tuple[list[str], dict[str, str]]:
    """The rows ``quantmill validate`` accepts for this model, and why it refuses the others (by method)."""
    accepted, refused = [], {}
    for method in methods:
        for row in ROWS[method]:
            probe = work / f"validate-{model_dir.name}.yaml"
            probe.write_text(recipe_text(model_dir, [row]))
            try:
                load_recipe(probe)
            except RecipeError as exc:
                refused[method] = "REFUSED at validate: " + "; ".join(p.message for p in exc.problems)[:200]
            else:
                accepted.append(row)
    return accepted, refused


def run_family(name: str, methods: list[str], tokenizer: str, work: Path) -> dict[str, str]:
    model_dir = build_model(name, work / "models" / tokenizer / name, tokenizer=tokenizer)
    rows, cells = accepted_rows(model_dir, methods, work)
    if not rows:
        return cells
    recipe = work / f"{name}.yaml"
    recipe.write_text(recipe_text(model_dir, rows))
    run = run_sequential(recipe, runs_dir=work / "runs", publish=False)
    record = run.record
    base = record.baseline.evaluation if record.baseline else None
    base_ppl = base.metrics["ppl"].value if base and "ppl" in base.metrics else None
    cells["baseline"] = f"ppl {base_ppl:.2f}, {base.metrics['size_mb'].value:.2f} MB" if base else "FAIL"
    cells.update({vid: cell(v, base_ppl) for vid, v in record.variants.items()})
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--methods", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--tokenizer", choices=["demo", "gguf"], default="demo")
    parser.add_argument("--workdir", type=Path, help="keep models and runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the matrix as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="qm-arch-") as scratch:
        work = args.workdir or Path(scratch)
        matrix: dict[str, dict[str, str]] = {}
        for name in args.families:
            started = time.monotonic()
            matrix[name] = run_family(name, args.methods, args.tokenizer, work)
            print(f"\n## {name} ({args.tokenizer} tokenizer, {time.monotonic() - started:.0f} s)", flush=True)
            for variant, text in matrix[name].items():
                print(f"  {variant:<32} {text}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(matrix, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
