"""Evaluate one model folder: lm-eval tasks, perplexity, size, speed and memory.

The baseline and every variant go through :func:`evaluate_model` with the same
recipe, so their numbers are comparable; every number is measured, none estimated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from quantmill.errors import EvaluationError, QuantmillError
from quantmill.evaluation.backends import DECODE_TOKENS, SPEED_PROMPTS, EvalModel
from quantmill.evaluation.harness import run_tasks
from quantmill.evaluation.perplexity import perplexity
from quantmill.evaluation.results import EvaluationResult, MetricValue
from quantmill.measure import measure
from quantmill.recipe.schema import Evaluation
from quantmill.textdata import load_texts

log = logging.getLogger(__name__)

# Weight files in a model folder; a format whose weights are one file of another kind names that file.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass(frozen=True)
class EvaluationSetup:
    """What stays the same for every model of a recipe.

    Attributes:
        evaluation: the recipe's evaluation section.
        base_dir: folder that the recipe's relative paths are resolved against.
        parameters: the baseline's parameter count, for bits per weight.
        device: ``cpu`` or ``cuda[:N]``.
    """

    evaluation: Evaluation
    base_dir: Path
    parameters: int | None
    device: str

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.base_dir / path


def weight_bytes(path: Path) -> int:
    """Bytes of the weight files in a model folder (or of one weight file)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def evaluate_model(load: Callable[[], EvalModel], weights: Path, setup: EvaluationSetup) -> EvaluationResult:
    """Load a model with ``load`` and measure everything the recipe asks for.

    Args:
        load: builds the :class:`EvalModel` (timed as the load time).
        weights: the model folder or file, for size metrics.
        setup: the recipe's evaluation settings.

    Raises:
        EvaluationError: when any measurement fails; no partial result is returned.
    """
    evaluation = setup.evaluation
    result = EvaluationResult(details={"device": setup.device})
    try:
        with measure() as loading:
            model = load()
        with measure() as running:
            metrics, details = run_tasks(model.lm, evaluation, [setup.resolve(p) for p in evaluation.include_paths])
            result.metrics.update(metrics)
            result.details["lm_eval"] = details
            if evaluation.perplexity is not None:
                _add_perplexity(model, setup, result)
            if "speed" in evaluation.metrics:
                prefill, decode = model.speed(SPEED_PROMPTS, DECODE_TOKENS)
                result.metrics["prefill_tok_s"] = MetricValue(round(prefill, 2))
                result.metrics["decode_tok_s"] = MetricValue(round(decode, 2))
                result.metrics["load_s"] = MetricValue(round(loading.seconds, 3))
        release = model.release
        del model
        release()
    except QuantmillError:
        raise
    except Exception as exc:  # the variant fails with the cause; it never passes a gate
        raise EvaluationError(f"evaluation failed: {type(exc).__name__}: {exc}") from exc
    if "size" in evaluation.metrics:
        size = weight_bytes(weights)
        result.metrics["size_mb"] = MetricValue(round(size / 1e6, 4))
        result.metrics["size_gb"] = MetricValue(round(size / 1e9, 6))
        if setup.parameters:
            result.metrics["bits_per_weight"] = MetricValue(round(size * 8 / setup.parameters, 3))
        result.details["size_bytes"] = size
    if "memory" in evaluation.metrics:
        peak = max(loading.peak_rss_bytes, running.peak_rss_bytes)
        result.metrics["peak_rss_gb"] = MetricValue(round(peak / 1e9, 4))
        if running.peak_cuda_bytes is not None:
            result.details["peak_cuda_bytes"] = max(loading.peak_cuda_bytes or 0, running.peak_cuda_bytes)
    return result


def _add_perplexity(model: EvalModel, setup: EvaluationSetup, result: EvaluationResult) -> None:
    config = setup.evaluation.perplexity
    assert config is not None
    texts = load_texts(config.dataset, setup.base_dir, limit=config.max_documents)
    if not texts:
        raise EvaluationError("the perplexity corpus is empty")
    measured = perplexity(texts, model.tokenize, model.prefix_token, model.scorer, config.max_length, config.stride)
    result.metrics["ppl"] = MetricValue(measured.ppl)
    result.details["perplexity"] = {
        "definition": "token perplexity, sliding window, documents scored after the prefix token",
        "tokens": measured.tokens,
        "documents": measured.documents,
        "word_perplexity": measured.word_perplexity,
        "byte_perplexity": measured.byte_perplexity,
        "max_length": config.max_length,
        "stride": config.stride,
    }
