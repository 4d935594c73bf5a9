"""The pipeline's steps as plain functions: what each Prefect task wraps, one call each.

    prepare_calibration → evaluate_baseline → for each variant:
        quantize_one → evaluate_variant → gate_variant → (publish)

Each takes paths, ids and validated objects (never a loaded model), so a step can
run in another process or on another machine, and its result can be cached.
"""

from __future__ import annotations

import logging
from pathlib import Path

from quantmill.calibration import CalibrationSet, build_calibration_set
from quantmill.evaluation.backends import EvalModel, load_transformers_model, transformers_eval_model
from quantmill.evaluation.evaluate import EvaluationSetup, evaluate_model
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict, check_gates
from quantmill.quantize import QuantizedArtifact, quantize_variant
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.resolve import ResolvedModel

log = logging.getLogger(__name__)


def needs_calibration(loaded: LoadedRecipe, variant_ids: list[str] | None = None) -> bool:
    return any(
        v.spec.needs_calibration(v.params) for v in loaded.variants if variant_ids is None or v.id in variant_ids
    )


def prepare_calibration(loaded: LoadedRecipe, resolved: ResolvedModel) -> CalibrationSet | None:
    """Tokenize the recipe's calibration samples once (None when the recipe has no data set)."""
    if loaded.recipe.calibration.dataset is None:
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path)
    return build_calibration_set(loaded.recipe.calibration, tokenizer, loaded.base_dir)


def evaluation_setup(loaded: LoadedRecipe, device: str) -> EvaluationSetup:
    parameters = loaded.shape.parameters if loaded.shape else None
    return EvaluationSetup(loaded.recipe.evaluation, loaded.base_dir, parameters, device)


def _batch_size(loaded: LoadedRecipe, device: str) -> int | str:
    size = loaded.recipe.evaluation.batch_size
    # lm-eval's automatic batch size probes for out-of-memory errors, which only CUDA raises.
    return 16 if size == "auto" and not device.startswith("cuda") else size


def _transformers_loader(path: Path, tokenizer_path: Path, dtype: str, device: str, batch_size, load=None):
    def load_eval_model() -> EvalModel:
        from transformers import AutoTokenizer

        model = load(path, device) if load is not None else load_transformers_model(path, dtype, device)
        return transformers_eval_model(model, AutoTokenizer.from_pretrained(tokenizer_path), batch_size)

    return load_eval_model


def evaluate_baseline(loaded: LoadedRecipe, resolved: ResolvedModel, device: str) -> EvaluationResult:
    """Measure the unquantized model once; every variant is compared with this."""
    load = _transformers_loader(
        resolved.path, resolved.tokenizer_path, loaded.recipe.model.dtype, device, _batch_size(loaded, device)
    )
    return evaluate_model(load, resolved.path, evaluation_setup(loaded, device))


def quantize_one(
    loaded: LoadedRecipe,
    variant: Variant,
    resolved: ResolvedModel,
    calibration: CalibrationSet | None,
    device: str,
    out_dir: Path,
) -> QuantizedArtifact:
    return quantize_variant(
        variant,
        source_dir=resolved.path,
        out_dir=out_dir,
        calibration=calibration if variant.spec.needs_calibration(variant.params) else None,
        dtype=loaded.recipe.model.dtype,
        device=device,
        tokenizer_dir=resolved.tokenizer_path,
        source={"id": resolved.id, "revision": resolved.revision},
        recipe_dir=loaded.base_dir,
    )


def evaluate_variant(loaded: LoadedRecipe, variant: Variant, artifact_path: Path, device: str) -> EvaluationResult:
    """Measure a quantized variant exactly as the baseline was measured."""
    spec = variant.spec
    if spec.output_format == "gguf":
        from quantmill.evaluation.gguf import gguf_eval_model, gguf_file

        weights = gguf_file(artifact_path)
        result = evaluate_model(lambda: gguf_eval_model(weights, device), weights, evaluation_setup(loaded, device))
        _add_kl_divergence(loaded, artifact_path, weights, result)
        return result
    load = _transformers_loader(artifact_path, artifact_path, "auto", device, _batch_size(loaded, device), spec.load)
    return evaluate_model(load, artifact_path, evaluation_setup(loaded, device))


def _add_kl_divergence(loaded: LoadedRecipe, artifact_path: Path, weights: Path, result: EvaluationResult) -> None:
    """KLD against the unquantized GGUF, when llama.cpp's tools and a perplexity corpus exist."""
    from quantmill.evaluation.kld import kl_divergence
    from quantmill.llamacpp import LlamaCppError, find_llama_cpp
    from quantmill.quantize import read_artifact
    from quantmill.textdata import load_texts

    llama = find_llama_cpp()
    perplexity = loaded.recipe.evaluation.perplexity
    details = read_artifact(artifact_path).provenance["details"]
    if llama is None or llama.tool("llama-perplexity") is None or perplexity is None or "base" not in details:
        result.details["kld"] = "not measured: needs llama.cpp's llama-perplexity and a perplexity corpus"
        return
    base = artifact_path.parent / ".shared" / details["base"]
    corpus = base.with_name(f"kld-corpus-{base.stem}.txt")
    if not corpus.is_file():
        corpus.write_text("\n".join(load_texts(perplexity.dataset, loaded.base_dir)) + "\n")
    try:
        result.metrics["kld"] = kl_divergence(llama, base, weights, corpus, min(perplexity.max_length, 512))
    except (LlamaCppError, ValueError) as exc:  # KLD is reported, never gated: its failure is noted, not fatal
        result.details["kld"] = f"not measured: {exc}"


def gate_variant(
    variant: Variant, result: EvaluationResult | None, baseline: EvaluationResult | None, error: str | None = None
) -> Verdict:
    return check_gates(variant.id, variant.gates, result, baseline, error)
