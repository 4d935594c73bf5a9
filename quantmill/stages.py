"""The pipeline's steps as plain functions: what each Prefect task wraps, one call each.

    prepare_calibration → evaluate_baseline → for each variant:
        quantize_one → evaluate_variant → check_servable → gate_variant → (publish)

Each takes paths, ids and validated objects (never a loaded model), so a step can
run in another process or on another machine, and its result can be cached.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quantmill.calibration import CalibrationSet, cached_calibration_set
from quantmill.errors import EvaluationError
from quantmill.evaluation import servable
from quantmill.evaluation.backends import EvalModel, free_memory, load_transformers_model, transformers_eval_model
from quantmill.evaluation.evaluate import EvaluationSetup, evaluate_model
from quantmill.evaluation.fidelity import check_tokenizer_fidelity
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
    """Tokenize the recipe's calibration samples once (None when the recipe has no data set); a rerun finds
    them tokenized in quantmill's cache folder (``calibration/``) and loads no tokenizer."""
    if loaded.recipe.calibration.dataset is None:
        return None
    return cached_calibration_set(
        loaded.recipe.calibration,
        resolved.tokenizer_path,
        loaded.base_dir,
        trust_remote_code=loaded.trust_remote_code,
    )


def evaluation_setup(loaded: LoadedRecipe, device: str) -> EvaluationSetup:
    parameters = loaded.shape.parameters if loaded.shape else None
    return EvaluationSetup(loaded.recipe.evaluation, loaded.base_dir, parameters, device)


def _batch_size(loaded: LoadedRecipe, device: str) -> int | str:
    size = loaded.recipe.evaluation.batch_size
    # lm-eval's automatic batch size probes for out-of-memory errors, which only CUDA raises.
    return 16 if size == "auto" and not device.startswith("cuda") else size


def evaluate_baseline(loaded: LoadedRecipe, resolved: ResolvedModel, device: str) -> EvaluationResult:
    """Measure the unquantized model once; every variant is compared with this.

    Then, with the same loaded model, its greedy generations for the servable check's
    prompts (``quantmill.evaluation.servable``), kept in the result's details.
    """
    loaded_model: dict[str, Any] = {}

    def load() -> EvalModel:
        from transformers import AutoTokenizer

        trust = loaded.trust_remote_code
        model = load_transformers_model(resolved.path, loaded.recipe.model.dtype, device, trust_remote_code=trust)
        tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path, trust_remote_code=trust)
        loaded_model.update(model=model, tokenizer=tokenizer)  # generated with after the timed measurements
        return transformers_eval_model(model, tokenizer, _batch_size(loaded, device))

    result = evaluate_model(load, resolved.path, evaluation_setup(loaded, device))
    try:
        result.details[servable.BASELINE_DETAILS] = servable.baseline_generations(
            loaded_model["model"], loaded_model["tokenizer"]
        )
    except Exception as exc:
        raise EvaluationError(f"greedy generation failed: {type(exc).__name__}: {exc}") from exc
    finally:
        loaded_model.clear()
        free_memory()
    return result


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
        trust_remote_code=loaded.trust_remote_code,
    )


def evaluate_variant(
    loaded: LoadedRecipe, variant: Variant, artifact_path: Path, device: str, base_tokenizer: Path
) -> EvaluationResult:
    """Measure a quantized variant exactly as the baseline was measured; its output format loads it
    and adds the measurements only that format can make.

    First (failing fast) the artifact's own tokenizer, if it has one, must tokenize the evaluation
    texts exactly as the base model's tokenizer in ``base_tokenizer`` does (``tokenizer_agreement``)."""
    output_format = variant.spec.output_format
    setup = evaluation_setup(loaded, device)
    batch_size = _batch_size(loaded, device)
    trust = loaded.trust_remote_code
    fidelity = check_tokenizer_fidelity(
        output_format.artifact_tokenizer(artifact_path, trust_remote_code=trust),
        base_tokenizer,
        setup,
        trust_remote_code=trust,
    )
    result = evaluate_model(
        lambda: output_format.load_for_evaluation(
            artifact_path, device, batch_size, trust_remote_code=loaded.trust_remote_code
        ),
        output_format.weights(artifact_path),
        setup,
    )
    output_format.add_metrics(artifact_path, setup, result)
    if fidelity is not None:
        fidelity.record(result)
    return result


def check_servable(
    loaded: LoadedRecipe, variant: Variant, artifact_path: Path, baseline: EvaluationResult | None, device: str
) -> EvaluationResult:
    """Prove the variant servable before it may pass: a fresh process loads exactly the files that publishing
    uploads, as the card's snippet says, and greedy-generates (``quantmill.evaluation.servable``).

    Returns ``greedy_agreement`` with the baseline (when the baseline has greedy tokens) and the probe's details,
    to merge into the variant's evaluation.

    Raises:
        NotServableError: ``not servable: <what failed>``.
    """
    from quantmill.publish.publisher import repo_id_for, upload_files
    from quantmill.quantize import read_artifact

    return servable.probe_servable(
        variant.method,
        upload_files(artifact_path),
        repo_id_for(loaded, variant),
        read_artifact(artifact_path).provenance,
        baseline,
        device,
        trust_remote_code=loaded.trust_remote_code,
        scratch=artifact_path.parent,  # the artifact's file system: its files are hard-linked, not copied
    )


def gate_variant(
    variant: Variant, result: EvaluationResult | None, baseline: EvaluationResult | None, error: str | None = None
) -> Verdict:
    return check_gates(variant.id, variant.gates, result, baseline, error)
