"""A recipe with ``search:``: the baseline once, then the strategy's steps (quantize + proxy, full evaluations
within the budget), each through the cached tasks of a matrix run, then only the winner published.

Called by the recipe flow (``flows/recipe.py``) in place of the matrix; the decisions are
``quantmill.search.strategy``'s. Every step goes through the recipe's cache with the keys a matrix run
uses (``quantmill.pipeline.step_keys``); the proxy has its own (``quantmill.search.proxy.proxy_key``) in the
same cache, copied to a shared run store as theirs are. So a rerun, a larger budget or a widened space re-uses
every quantization, proxy and evaluation already made (on any worker of a shared store), and a matrix of the
same variants afterwards re-uses the search's work too.

Fully evaluated candidates are recorded as variants (their verdicts, as a matrix records them); every
candidate, evaluated or not, is in the record's ``search`` trace with its outcome.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture

from quantmill import cachekeys, progress
from quantmill.flows.variant_steps import RunSteps, error_of, publish_variants, record_baseline, record_variant
from quantmill.pipeline import Publication, RecipeRun, StepSlot, step_keys
from quantmill.plan import describe_gate, expected_bytes, variant_setting
from quantmill.quantize import read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.record import VariantStatus
from quantmill.report.quality import quality_metric
from quantmill.search.proxy import describe_proxy, measure_proxy, proxy_key
from quantmill.search.strategy import Candidate, Outcome, ProxyMeasurement, Search
from quantmill.search.verdicts import full_measurement, trace_of
from quantmill.tasks.limits import hold_slot
from quantmill.tasks.steps import StepKey, run_logged, run_step


@task(name="search-proxy", cache_policy=StepKey(), persist_result=True, result_serializer="json")
def proxy_task(
    loaded: LoadedRecipe, variant: Variant, quantized: dict[str, Any], slot: StepSlot, run_path: Path, cache_key: str
) -> dict[str, Any]:
    """The candidate's screening proxy and real size (``quantmill.search.proxy.measure_proxy``)."""
    path = read_artifact(Path(quantized["path"])).path
    return run_step(
        run_path, variant.id, "evaluating", slot, lambda device: measure_proxy(loaded, variant, path, device)
    )


@task(name="mixed-candidates", cache_policy=NONE)
def mixed_candidates_task(loaded: LoadedRecipe, space: dict[str, Any], slot: StepSlot, run_path: Path) -> list[Variant]:
    """The candidates of one ``mixed:`` entry (its sensitivity scan loads the model: a heavy step, whose
    library output goes to the run's ``logs/sensitivity-scan.log``)."""
    from quantmill.search.mixed import mixed_candidates

    title = f"sensitivity scan and allocation: {space['method']}"
    return run_logged(run_path, "sensitivity-scan", title, slot, lambda device: mixed_candidates(loaded, space, device))


def _with_mixed_candidates(run: RecipeRun, slot: StepSlot) -> None:
    """Add the candidates of the space's ``mixed:`` entries to the run, as variants of its recipe."""
    made: list[Variant] = []
    for space in run.loaded.mixed_spaces:
        made += mixed_candidates_task.submit(run.loaded, space.model_dump(), slot, run.path.resolve()).result()
    if not made:
        return
    known = {v.id for v in run.variants}
    fresh = [v for v in made if v.id not in known]
    run.loaded = replace(run.loaded, variants=run.loaded.variants + tuple(fresh))
    run.variants = [*run.variants, *fresh]


def search_variants(steps: RunSteps) -> None:
    """Measure the baseline, run the search to its end, and record its trace (publishing is the caller's)."""
    run = steps.run
    with hold_slot(steps.slots.run) as run_placement:
        heavy = steps.slots.for_step(needs_gpu=True, run_placement=run_placement)
        record_baseline(run, steps.baseline(heavy))
        if run.loaded.mixed_spaces:
            _with_mixed_candidates(run, heavy)
            keys = step_keys(run.loaded, run.variants, steps.resolved, steps.calibration, steps.device)
            steps = replace(steps, keys=keys)
        search = _strategy(run)
        if not run.baseline_failed:  # every variant would fail its gates: nothing to search
            _run_steps(steps, search, run_placement)
    _record_trace(run, search)


def _strategy(run: RecipeRun) -> Search:
    search = run.loaded.recipe.search
    assert search is not None
    candidates = []
    for variant in run.variants:
        size = expected_bytes(run.loaded, variant)
        candidates.append(Candidate(variant.id, None if size is None else size / 1e6, variant.method))
    objective = search.objective
    return Search(candidates, objective.metric, objective.lower_is_better, search.budget.full_evaluations)


def _run_steps(steps: RunSteps, search: Search, run_placement) -> None:
    """Ask the strategy for the next step and run it, until it has none (its steps are sequential: each
    decision depends on the numbers before it)."""
    run, run_path = steps.run, steps.run_path
    loaded = run.loaded
    by_id = {v.id: v for v in run.variants}
    proxy = steps.tasks.stored(proxy_task)  # cached (and shared) where the recipe's other steps are
    data = cachekeys.evaluation_data_fingerprint(loaded)
    quantized: dict[str, PrefectFuture] = {}
    objective = search.objective
    while (step := search.next_step()) is not None:
        variant = by_id[step.candidate]
        slot = steps.slots.for_step(needs_gpu=variant.spec.uses_gpu, run_placement=run_placement)
        if step.kind == "proxy":
            future = quantized[variant.id] = steps.quantize(variant, slot)
            error = error_of(future)
            if error is None:
                quantize_key = steps.keys.quantize[variant.id]
                on = cachekeys.step_device(variant, steps.device)
                key = proxy_key(quantize_key, variant, loaded, on, data)
                screened = proxy.submit(loaded, variant, future.result(), slot, run_path, cache_key=key)
                error = error_of(screened)
            search.record_proxy(
                variant.id, ProxyMeasurement(error=error) if error else ProxyMeasurement(**screened.result())
            )
            if error:
                progress.emit(run_path, variant.id, "done", status="failed")
            continue
        future = quantized[variant.id]
        evaluated = steps.evaluate(variant, future, slot)
        record_variant(run, variant, future, evaluated, steps.check_servable(variant, future, evaluated, slot))
        quality = quality_metric(run.record)
        search.record_full(variant.id, full_measurement(run.record.variants[variant.id], objective, quality))


def _record_trace(run: RecipeRun, search: Search) -> None:
    """The trace in the record; candidates without a full evaluation leave the record's variants (they have
    no verdict) and are ``done`` with their outcome."""
    config = run.loaded.recipe.search
    assert config is not None
    result = search.result()
    run.record.search = trace_of(
        search,
        result,
        {v.id: (v.method, variant_setting(v)) for v in run.variants},
        constraints=[describe_gate(g) for g in config.constraints],
        proxy=describe_proxy(run.loaded),
        quality_metric=quality_metric(run.record),
    )
    for decision in result.decisions:
        if decision.candidate not in search.full:
            run.record.variants.pop(decision.candidate, None)
            progress.emit(run.path.resolve(), decision.candidate, "done", status=decision.outcome.value)
    if run.baseline_failed:  # nothing was searched: say so rather than blame the budget
        assert run.record.baseline is not None
        why = f"the baseline failed: {run.record.baseline.error}"
        run.record.search = run.record.search.model_copy(
            update={
                "summary": f"no search: {why}",
                "candidates": [
                    c.model_copy(update={"outcome": Outcome.ERROR.value, "reason": why})
                    for c in run.record.search.candidates
                ],
            }
        )
    run.logger.info("search: %s", run.record.search.summary)
    run.run.write_record(run.record)


def winner_publication(run: RecipeRun, publish: bool, target: str | None) -> Publication | None:
    """Only the search's winner is published (when it passed, and publishing is on)."""
    from quantmill.publish.publish_run import related_links
    from quantmill.publish.publisher import make_target

    trace = run.record.search
    kind = (target or run.loaded.recipe.publish.target) if publish else "none"
    if kind == "none" or trace is None or trace.winner is None:
        return None
    if run.record.variants[trace.winner].status != VariantStatus.PASSED:
        return None
    chosen = [trace.winner]
    return Publication(kind, chosen, related_links(run.loaded, run.record, chosen, make_target(run.loaded, kind)))


def search_and_publish(steps: RunSteps, publish: bool, target: str | None) -> None:
    """The search (:func:`search_variants`), then its winner published."""
    search_variants(steps)
    publish_variants(steps.run, winner_publication(steps.run, publish, target))
