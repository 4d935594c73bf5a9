"""An unchanged rerun, replayed from the recipe's cache without Prefect.

Measured for issue 19 on the demo (first run ~94 s, so an unchanged rerun may cost ~1.9 s):
importing Prefect alone takes 2.3 s, starting its ephemeral server ~13 s more, and each
cached task still makes its round trips to the API. When every compute step of a run is
already cached there is nothing left to orchestrate, so :func:`replay_cached_run` computes
the same keys the flow would (:func:`quantmill.pipeline.step_keys`), reads the stored
results, and does in this process what the flow does after them: gate, publish (idempotent:
an unchanged variant is found unchanged), report, notify. It writes the same run folder,
record, progress events and report; it creates no Prefect flow run (``quantmill run
--no-replay`` runs the flow anyway). Deployments always run the flow.

When any step is not cached, or its entry cannot be read, it returns None without creating
a run folder (the model's file digests and the tokenized calibration set it computed on the
way stay in quantmill's cache for the flow), and the caller runs the flow, which computes
what is missing. A recipe whose cache is empty (its first run) or a run asked to refresh
the cache (Prefect's ``PREFECT_TASKS_REFRESH_CACHE``) is never replayed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from quantmill import progress, stages
from quantmill.evaluation.results import EvaluationResult
from quantmill.notify import notify_error, notify_run
from quantmill.pipeline import (
    NETWORK_RETRIES,
    RecipeRun,
    StepKeys,
    cached_result,
    describe_error,
    publish_in_process,
    recipe_cache_dir,
    select_variants,
    start_run,
    step_keys,
    with_servable,
)
from quantmill.quantize import local_artifact_path
from quantmill.recipe import LoadedRecipe, load_recipe
from quantmill.recipe.matrix import Variant
from quantmill.record import CachedSteps
from quantmill.resolve import ResolvedModel, resolve_device, resolve_model
from quantmill.runstore import RunStore
from quantmill.settings import get_settings

log = logging.getLogger(__name__)


def replay_cached_run(
    recipe_path: str | Path,
    *,
    only: list[str] | None = None,
    runs_dir: Path | None = None,
    publish: bool = True,
    target: str | None = None,
) -> RecipeRun | None:
    """The finished run, when every step of the recipe's run is cached; None (no run folder created) otherwise."""
    loaded = load_recipe(recipe_path)
    if loaded.recipe.search is not None:  # a search's rerun decides again (its flow, from the cache): not a matrix
        return None
    variants = select_variants(loaded, only)
    store = RunStore(runs_dir or get_settings().runs_dir)
    found = _cached_steps(loaded, variants, store)
    if found is None:
        return None
    run = start_run(loaded, only, store)
    try:
        _replay(run, *found, publish=publish, target=target)
    except Exception as exc:  # announced as the flow's on_failure hook announces it, then reported by the CLI
        with contextlib.suppress(Exception):  # a notification never hides the error
            notify_error(loaded.path.name if loaded.path else loaded.name, describe_error(exc))
        raise
    return run


def _replay(
    run: RecipeRun,
    device: str,
    resolved: ResolvedModel,
    keys: StepKeys,
    results: dict[str, dict],
    *,
    publish: bool,
    target: str | None,
) -> None:
    """What the flow does once every step's result is known (``flows/recipe.py::quantize_evaluate_publish``)."""
    variants = run.variants
    run_path = run.path.resolve()
    for name in (progress.BASELINE, *(v.id for v in variants)):
        progress.emit(run_path, name, "queued")
    run.begin(device, resolved)
    baseline = EvaluationResult.from_dict(results[keys.baseline])
    run.record_baseline(baseline, None, cached=True)
    progress.emit(run_path, progress.BASELINE, "done", status="passed", cached=True)
    for variant in variants:
        evaluation = with_servable(
            EvaluationResult.from_dict(results[keys.evaluate[variant.id]]),
            EvaluationResult.from_dict(results[keys.servable[variant.id]]),
        )
        run.record_variant(
            variant,
            error=None,  # a step that failed stored no result: such a run is not replayed
            artifact=local_artifact_path(Path(results[keys.quantize[variant.id]]["path"])),
            evaluation=evaluation,
            verdict=stages.gate_variant(variant, evaluation, baseline),
            cached=CachedSteps(quantize=True, evaluate=True, servable=True),
        )
        run.report_done(variant.id)
    publication = run.publication(publish, target)
    if publication is not None:
        publish_in_process(run, publication, retries=NETWORK_RETRIES)
    run.finish()
    notify_run(run.record, run.path, log)


def _cached_steps(
    loaded: LoadedRecipe, variants: list[Variant], store: RunStore
) -> tuple[str, ResolvedModel, StepKeys, dict[str, dict]] | None:
    """The device, model, keys and stored result of every step, when all are cached."""
    store.pull(loaded.name)  # a shared store: the steps other workers cached
    cache = recipe_cache_dir(store, loaded.name)
    refresh = os.environ.get("PREFECT_TASKS_REFRESH_CACHE", "").strip().lower() in ("1", "true", "yes")
    if refresh or not any((cache / "keys").glob("*")):
        return None
    try:
        device = resolve_device(loaded.recipe.device)
        resolved = resolve_model(loaded)
        calibration = stages.prepare_calibration(loaded, resolved)
    except Exception:  # the flow meets the same error and reports it (with its retries)
        log.debug("not replayed: resolving the model or its calibration set failed", exc_info=True)
        return None
    keys = step_keys(loaded, variants, resolved, calibration, device)
    results = {key: cached_result(cache, key) for key in keys.every()}
    stored = {key: result for key, result in results.items() if result is not None}
    if len(stored) < len(results):
        return None
    return device, resolved, keys, stored
