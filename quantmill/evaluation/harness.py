"""lm-eval, in process, on an already-loaded model.

Every model of a recipe (the baseline and each variant) goes through
:func:`run_tasks` with the same task list, few-shot count, limit and seeds, so
they see identical requests. Local task folders are added with
``TaskManager(include_path=...)``; any task lm-eval knows works too.

Indexing lm-eval's ~14,000 built-in task files costs ~10 s, so :func:`task_manager`
indexes the recipe's own folders alone when they hold every task it names, and keeps
a manager per process for as long as its folders are unchanged.
"""

from __future__ import annotations

import logging
from functools import lru_cache
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


def _fingerprint(folders: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """Every file under the task folders with its modification time and size: an edit makes a new manager."""
    files = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                stat = path.stat()
                files.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(files)


@lru_cache(maxsize=8)
def _manager(folders: tuple[str, ...], include_defaults: bool, fingerprint: tuple) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def task_manager(tasks: list[str], include_paths: list[Path]) -> Any:
    """An lm-eval ``TaskManager`` that knows ``tasks``: the recipe's folders alone when they suffice."""
    folders = tuple(str(p) for p in include_paths)
    fingerprint = _fingerprint(folders)
    if folders:
        local = _manager(folders, False, fingerprint)
        if all(name in local.all_tasks for name in tasks):
            return local
    return _manager(folders, True, fingerprint)


def _skip_lm_evals_git_hash() -> None:
    """lm-eval records ``git describe`` of the process's working folder in its results, which quantmill
    never reads (its provenance names the model, the recipe and the libraries' versions); outside a
    repository git writes "fatal: not a git repository" straight to the terminal, once per evaluation."""
    import lm_eval.evaluator

    lm_eval.evaluator.get_git_commit_hash = lambda: None


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

    seed = evaluation.seed
    _skip_lm_evals_git_hash()
    try:
        manager = task_manager(list(evaluation.tasks), include_paths)
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
