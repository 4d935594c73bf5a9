"""lm-eval, in process, on an already-loaded model.

Every model of a recipe (the baseline and each variant) goes through
:func:`run_tasks` with the same task list, few-shot count, limit and seeds, so
they see identical requests. Local task folders are added with
``TaskManager(include_path=...)``; any task lm-eval knows works too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from quantmill.errors import EvaluationError
from quantmill.evaluation.results import MetricValue
from quantmill.methods.base import package_version
from quantmill.recipe.schema import Evaluation

log = logging.getLogger(__name__)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_results(results: dict[str, Any], tasks: list[str]) -> dict[str, MetricValue]:
    """``{"acc,none": 0.8, "acc_stderr,none": 0.03}`` → ``{"task/acc": MetricValue(0.8, 0.03)}``.

    The default filter (``none``) gives ``task/metric``; other filters give
    ``task/metric,filter`` (lm-eval's own spelling).
    """
    metrics: dict[str, MetricValue] = {}
    for task in tasks:
        for key, raw in results["results"].get(task, {}).items():
            name, _, filter_name = key.partition(",")
            value = _number(raw)
            if value is None or name.endswith("_stderr") or not filter_name:
                continue
            stderr = _number(results["results"][task].get(f"{name}_stderr,{filter_name}"))
            label = f"{task}/{name}" if filter_name == "none" else f"{task}/{name},{filter_name}"
            metrics[label] = MetricValue(value, stderr)
    return metrics


def run_tasks(lm, evaluation: Evaluation, include_paths: list[Path]) -> tuple[dict[str, MetricValue], dict[str, Any]]:
    """Run the recipe's lm-eval tasks on ``lm`` (an ``lm_eval.api.model.LM``).

    Returns:
        the metrics, and the details that make the numbers reproducible.

    Raises:
        EvaluationError: when lm-eval fails or a task reports nothing.
    """
    if not evaluation.tasks:
        return {}, {}
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    seed = evaluation.seed
    try:
        manager = TaskManager(include_path=[str(p) for p in include_paths] or None)
        results = simple_evaluate(
            model=lm,
            tasks=list(evaluation.tasks),
            num_fewshot=evaluation.num_fewshot,
            limit=evaluation.limit,
            task_manager=manager,
            apply_chat_template=evaluation.apply_chat_template,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
            log_samples=False,
            bootstrap_iters=1000,
        )
    except EvaluationError:
        raise
    except Exception as exc:  # lm-eval raises many types; the variant must fail, loudly
        raise EvaluationError(f"lm-eval failed: {type(exc).__name__}: {exc}") from exc
    if results is None:
        raise EvaluationError("lm-eval returned no results")
    metrics = parse_results(results, evaluation.tasks)
    missing = [t for t in evaluation.tasks if not any(k.startswith(f"{t}/") for k in metrics)]
    if missing:
        raise EvaluationError(f"lm-eval reported no metric for {', '.join(missing)}")
    details = {
        "lm_eval_version": package_version("lm_eval") or package_version("lm-eval"),
        "task_versions": {t: results.get("versions", {}).get(t) for t in evaluation.tasks},
        "samples": {t: (results.get("n-samples", {}).get(t) or {}).get("effective") for t in evaluation.tasks},
        "num_fewshot": evaluation.num_fewshot,
        "limit": evaluation.limit,
        "seed": seed,
        "apply_chat_template": evaluation.apply_chat_template,
    }
    return metrics, details
