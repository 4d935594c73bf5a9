"""The recipe flow: resolve → baseline once → per variant quantize → evaluate → servable check → gate → publish.

Thin by design: the flow only wires tasks (``tasks/steps.py``, submitted through ``flows/variant_steps.py``) around a
``quantmill.pipeline.RecipeRun``, which holds every decision (keys, cache repair,
slot policy, error precedence, the record, publish links, regressions).

The flow run ends in the state its outcome calls for (:mod:`quantmill.outcome`), so
Prefect automations can tell runs apart: Failed when a required gate or a publish
failed, Completed named ``Regressed`` after a regression, else Completed; the record
is the state's data either way (:func:`record_of`). The run is announced to the
operator's webhooks (:mod:`quantmill.notify`), a run that errored too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from quantmill import progress
from quantmill.devices import CPU_LIMIT, GPU_LIMIT, limit_name, this_process_gpu_ids, worker_gpu_env
from quantmill.errors import QuantmillError
from quantmill.flows.search import search_and_publish
from quantmill.flows.variant_steps import RunSteps, publish_variants, record_baseline, record_variant
from quantmill.notify import notify_error, notify_run
from quantmill.outcome import Outcome, run_outcome
from quantmill.pipeline import RecipeRun, slot_policy, start_run, step_keys
from quantmill.recipe import load_recipe
from quantmill.redact import redact
from quantmill.resolve import resolve_device
from quantmill.runstore import RunStore
from quantmill.settings import get_settings
from quantmill.tasks.limits import MACHINE_LIMITS_ENV, ensure_limit, hold_slot
from quantmill.tasks.steps import calibration_task, resolve_model_task, steps_cached_in

# The runner of deployments; run_recipe() passes its own (``--workers``, ``--processes``).
_THREADS: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=get_settings().workers)
#: the name of the Completed state a run with regressions ends in (its event: ``prefect.flow-run.Regressed``)
REGRESSED = "Regressed"


def _notify_errored(flow, flow_run, state: State) -> None:
    """Announce a run that ended Failed or Crashed without an outcome (an exception, a crash).

    A run that ended Failed because of its outcome carries its record and was announced by :func:`_final_state`.
    """
    with contextlib.suppress(Exception):
        if isinstance(state.result(raise_on_failure=False), dict):
            return
    recipe = Path(str(flow_run.parameters.get("recipe_path", "?"))).name
    notify_error(recipe, redact(f"{state.name}: {state.message or 'no message'}"))


@flow(
    name="quantize-evaluate-publish",
    task_runner=_THREADS,
    log_prints=False,
    on_failure=[_notify_errored],
    on_crashed=[_notify_errored],
)
def quantize_evaluate_publish(
    recipe_path: str,
    only: list[str] | None = None,
    runs_dir: str | None = None,
    heavy_slots: int | None = None,
    publish: bool = True,
    target: str | None = None,
    inputs_fingerprint: str | None = None,
) -> State:
    """Run one recipe end to end; ends in the state its outcome calls for, whose data is its record as
    ``results.json`` holds it, plus ``run_path`` (:func:`record_of` reads it).

    Args:
        recipe_path: the recipe file.
        only: variant ids to run (default: all).
        runs_dir: the run store (default: ``QUANTMILL_RUNS_DIR``).
        heavy_slots: size of the heavy-task concurrency limit (default: an existing
            limit keeps its size; a new one gets the visible GPUs on CUDA, ``QUANTMILL_CPU_HEAVY_SLOTS`` on the CPU).
        publish: publish the variants that pass (to the recipe's target).
        target: ``local`` or ``hub``, overriding the recipe's publish target.
        inputs_fingerprint: what the zoo flow compares to decide whether a recipe changed.
    """
    loaded = load_recipe(recipe_path)
    run = start_run(loaded, only, RunStore(Path(runs_dir)) if runs_dir else None, inputs_fingerprint=inputs_fingerprint)
    run.logger = get_run_logger()
    run_path = run.path.resolve()  # steps in other processes and folders write the logs and events there too
    for name in (progress.BASELINE, *(v.id for v in run.variants)):
        progress.emit(run_path, name, "queued")
    device = resolve_device(loaded.recipe.device)
    limit = limit_name(device)
    ensure_limit(limit, heavy_slots)
    if limit == GPU_LIMIT:
        ensure_limit(CPU_LIMIT)  # steps of methods that need no GPU take a cpu-heavy slot instead
    resolved = resolve_model_task(loaded)
    run.begin(device, resolved)
    calibration = calibration_task(loaded, resolved) if loaded.recipe.calibration.dataset else None
    keys = step_keys(loaded, run.variants, resolved, calibration, device)
    all_cached = run.prepare_cache(keys)
    cached_tasks = steps_cached_in(run.cache_dir, loaded.name)
    context = FlowRunContext.get()
    in_process = context is not None and isinstance(context.task_runner, ThreadPoolTaskRunner)
    slots = slot_policy(limit, tasks_in_this_process=in_process, all_cached=all_cached)
    steps = RunSteps(run, cached_tasks, keys, slots, resolved, calibration, device)
    if loaded.recipe.search is not None:  # a goal instead of a matrix: only the winner is published
        search_and_publish(steps, publish, target)
        run.finish()
        _publish_artifacts(run)
        return _final_state(run)
    with hold_slot(slots.run) as run_placement:
        baseline = steps.baseline(slots.for_step(needs_gpu=True, run_placement=run_placement))
        evaluations = []
        for variant in run.variants:
            slot = slots.for_step(needs_gpu=variant.spec.uses_gpu, run_placement=run_placement)
            quantized = steps.quantize(variant, slot)
            evaluations.append((variant, quantized, steps.evaluate(variant, quantized, slot), slot))
        record_baseline(run, baseline)
        branches = {}
        for variant, quantized, evaluated, slot in evaluations:
            # the check compares with the baseline's greedy tokens; a failed baseline fails every variant anyway
            checked = None if run.baseline_failed else steps.check_servable(variant, quantized, evaluated, slot)
            branches[checked or evaluated] = (variant, quantized, evaluated, checked)
        for last in as_completed(list(branches)):
            record_variant(run, *branches[last])
    publish_variants(run, run.publication(publish, target))
    run.finish()
    _publish_artifacts(run)
    return _final_state(run)


def _publish_artifacts(run: RecipeRun) -> None:
    """A table artifact (variant × metrics × verdict) and the markdown report, for the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from quantmill.report.render import COLUMNS, rows

    record = run.record
    key = re.sub(r"[^a-z0-9-]", "-", f"quantmill-{record.recipe}")
    description = f"{record.recipe} run {record.run_id}"
    create_table_artifact(
        [dict(zip(COLUMNS, row, strict=True)) for row in rows(record)], key=f"{key}-table", description=description
    )
    create_markdown_artifact((run.path / "report.md").read_text(), key=f"{key}-report", description=description)


def _final_state(run: RecipeRun) -> State:
    """Announce the finished run, and the state it ends in (see the module docstring), its record as data."""
    notify_run(run.record, run.path, run.logger)
    outcome = run_outcome(run.record)
    data = run.record.to_json() | {"run_path": str(run.path)}
    if outcome.failed:
        return Failed(message=outcome.summary, data=data)
    if outcome.kind == Outcome.REGRESSED:
        return Completed(name=REGRESSED, message=outcome.summary, data=data)
    return Completed(message=outcome.summary, data=data)


def record_of(state: State) -> dict[str, Any]:
    """The record a finished run of :func:`quantize_evaluate_publish` holds, whatever its outcome;
    raises the run's error when it errored instead."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, dict):
        return result
    return state.result()  # raises what the run raised


def _not_a_run_record(record: logging.LogRecord) -> bool:
    return not record.name.startswith(_RUN_LOGGERS)


_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def keep_run_logs_off_the_console() -> None:
    """Flow- and task-run records (Prefect's account of every task, a failed task's traceback, the run's
    "variant … failed" lines) go to the Prefect API only, not to the console: there the progress view
    says the same once, and the step logs and the Prefect UI keep the details."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    for logger in {logging.getLogger(), logging.getLogger("prefect")}:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.addFilter(_not_a_run_record)


def run_recipe(
    recipe_path: str,
    *,
    only: list[str] | None = None,
    runs_dir: str | None = None,
    workers: int | None = None,
    processes: int | None = None,
    heavy_slots: int | None = None,
    publish: bool = True,
    target: str | None = None,
    task_runner=None,
) -> dict[str, Any]:
    """Run the recipe flow; returns its record (:func:`record_of`), whatever the outcome.

    Tasks run in ``workers`` threads of this process (default: ``QUANTMILL_WORKERS``), where heavy steps take turns;
    ``processes`` runs them in that many Dask worker processes instead, so heavy
    steps run in parallel (up to ``heavy_slots``, default ``processes``); on CUDA each
    worker sees the GPUs of one GPU slot only (:func:`_worker_gpu_envs`); or pass
    any ``task_runner``.
    """
    if processes and not task_runner:
        dask_runner = process_task_runner(processes, _worker_gpu_envs(recipe_path, processes))
        with _api_reachable_from_workers():
            return run_recipe(
                recipe_path,
                only=only,
                runs_dir=runs_dir,
                heavy_slots=heavy_slots or processes,
                publish=publish,
                target=target,
                task_runner=dask_runner,
            )
    runner: TaskRunner[Any] = task_runner or ThreadPoolTaskRunner(max_workers=workers or get_settings().workers)
    state = quantize_evaluate_publish.with_options(task_runner=runner)(
        recipe_path,
        only=only,
        runs_dir=runs_dir,
        heavy_slots=heavy_slots,
        publish=publish,
        target=target,
        return_state=True,
    )
    return record_of(state)


def process_task_runner(processes: int, worker_envs: list[dict[str, str]] | None = None):
    """A local Dask cluster of single-threaded worker processes (``quantmill[distributed]``).

    With ``worker_envs`` (one per process), worker ``w`` starts with ``worker_envs[w]`` in its
    environment: its GPU slot's ``CUDA_VISIBLE_DEVICES``, set before anything in it starts CUDA.
    A LocalCluster gives all its workers one environment, so this cluster is specified worker by
    worker (a LocalCluster's options otherwise: local addresses, no dashboard, memory shared out).
    """
    try:
        from distributed import Nanny, Scheduler, SpecCluster
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise QuantmillError(
            "running variants in several processes needs prefect-dask: pip install 'quantmill[distributed]'"
        ) from exc
    if not worker_envs:
        return DaskTaskRunner(cluster_kwargs={"n_workers": processes, "threads_per_worker": 1, "processes": True})
    host = "127.0.0.1"
    worker = {"host": host, "nthreads": 1, "memory_limit": 1 / len(worker_envs), "silence_logs": logging.WARN}
    workers = {w: {"cls": Nanny, "options": {**worker, "env": env}} for w, env in enumerate(worker_envs)}
    scheduler = {"cls": Scheduler, "options": {"host": host, "dashboard": False}}
    return DaskTaskRunner(
        cluster_class=SpecCluster,
        cluster_kwargs={"workers": workers, "scheduler": scheduler, "silence_logs": logging.WARN},
    )


def _worker_gpu_envs(recipe_path: str, processes: int) -> list[dict[str, str]] | None:
    """Each worker's ``CUDA_VISIBLE_DEVICES``, one GPU slot each, when the recipe runs on CUDA (else None).

    Raises:
        QuantmillError: more processes than GPU slots, or more GPUs per variant than are visible.
    """
    try:
        device = load_recipe(recipe_path).recipe.device
    except QuantmillError:
        return None  # the flow loads the recipe again, and reports (and announces) what is wrong with it
    if not resolve_device(device).startswith("cuda"):
        return None
    return worker_gpu_env(this_process_gpu_ids(), get_settings().gpus_per_variant, processes)


@contextlib.contextmanager
def _api_reachable_from_workers() -> Iterator[None]:
    """Worker processes report to this run's Prefect API; with none configured, to the ephemeral server.

    Without this each worker process would start an ephemeral server of its own,
    and the heavy limit would no longer be shared.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = PREFECT_API_URL.value()
    changed = {}
    if not url:
        server = SubprocessASGIServer()  # the same one Prefect's ephemeral mode uses in this process
        server.start()
        url = server.api_url
        changed[MACHINE_LIMITS_ENV] = "1"  # still the ephemeral server: heavy slots stay file locks
    changed["PREFECT_API_URL"] = url  # inherited by the worker processes
    before = {name: os.environ.get(name) for name in changed}
    os.environ.update(changed)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
