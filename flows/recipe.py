"""The recipe flow: resolve → baseline once → per variant quantize → evaluate → gate → publish.

Thin by design: the flow only wires tasks together and records their outcomes
in the run store; every decision lives in the library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import FlowRunContext
from prefect.filesystems import LocalFileSystem
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from quantmill import cachekeys
from quantmill.errors import QuantmillError
from quantmill.gates import Verdict
from quantmill.pipeline import select_variants, start_run
from quantmill.plan import variant_setting
from quantmill.recipe import load_recipe
from quantmill.redact import redact
from quantmill.report.render import write_report
from quantmill.resolve import resolve_device
from quantmill.runstore import RunStore
from quantmill.settings import get_settings
from quantmill.tasks.limits import MACHINE_LIMITS_ENV, ensure_limit, hold_slot, limit_name
from quantmill.tasks.steps import (
    baseline_task,
    calibration_task,
    evaluate_task,
    gate_task,
    publish_task,
    quantize_task,
    resolve_model_task,
)

log = logging.getLogger(__name__)


def _error(future: PrefectFuture) -> str | None:
    """The failure message of a future once it finished (secrets masked), or None when it completed."""
    future.wait()
    state = future.state
    if state.is_completed():
        return None
    try:
        future.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 -- the task's own exception, re-raised by Prefect
        return redact(f"{type(exc).__name__}: {exc}")
    return redact(f"{state.name}: {state.message or 'no result'}")


def result_storage(recipe_name: str, folder: Path) -> str:
    """A saved local-file-system block for the recipe's cache folder (Prefect needs it saved)."""
    name = "quantmill-" + re.sub(r"[^a-z0-9-]", "-", recipe_name)
    LocalFileSystem(basepath=str(folder)).save(name, overwrite=True)
    return f"local-file-system/{name}"


def discard_unreadable_cache_entry(cache: Path, key: str) -> bool:
    """Delete a cache entry whose record or result does not parse, so the step runs again.

    Prefect fails a task whose cached result cannot be read instead of recomputing
    it; a crash or a full disk while writing must not poison a key forever.
    Returns whether an entry was discarded.
    """
    import json

    record = cache / "keys" / key
    if not record.exists():
        return False
    try:
        storage_key = json.loads(record.read_text())["storage_key"]
        result = Path(storage_key) if Path(storage_key).is_absolute() else cache / "results" / storage_key
        json.loads(result.read_text())
        return False
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("discarding unreadable cache entry %s; the step will run again", key[:12])
        record.unlink(missing_ok=True)
        return True


def _cached(future: PrefectFuture) -> bool:
    return future.state.name == "Cached"


@flow(name="quantize-evaluate-publish", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=False)
def quantize_evaluate_publish(
    recipe_path: str,
    only: list[str] | None = None,
    runs_dir: str | None = None,
    heavy_slots: int | None = None,
    publish: bool = True,
    target: str | None = None,
    inputs_fingerprint: str | None = None,
) -> dict[str, Any]:
    """Run one recipe end to end and return its results (also written to ``results.json``).

    Args:
        recipe_path: the recipe file.
        only: variant ids to run (default: all).
        runs_dir: the run store (default: ``QUANTMILL_RUNS_DIR``).
        heavy_slots: size of the heavy-task concurrency limit (default: an existing
            limit keeps its size; a new one gets the visible GPUs on CUDA, 1 on the CPU).
        publish: publish the variants that pass (to the recipe's target).
        target: ``local`` or ``hub``, overriding the recipe's publish target.
        inputs_fingerprint: what the zoo flow compares to decide whether a recipe changed.
    """
    logger = get_run_logger()
    loaded = load_recipe(recipe_path)
    selected = [loaded.variant(v) for v in select_variants(loaded, only)]
    store = RunStore(Path(runs_dir) if runs_dir else get_settings().runs_dir)
    run = start_run(Path(recipe_path), only=only, store=store)
    results = run.read_results()
    results["status"] = "running"
    results["inputs_fingerprint"] = inputs_fingerprint
    run.write_results(results)

    device = resolve_device(loaded.recipe.device)
    limit = limit_name(device)
    ensure_limit(limit, heavy_slots)
    cache = (store.recipe_dir(loaded.name) / ".cache").resolve()
    artifacts = store.recipe_dir(loaded.name) / "artifacts"

    resolved = resolve_model_task(loaded)
    results["model"] = {"id": resolved.id, "revision": resolved.revision}
    results["device"] = device
    calibration = calibration_task(loaded, resolved) if loaded.recipe.calibration.dataset else None
    fingerprint = calibration.fingerprint if calibration else None
    data = cachekeys.evaluation_data_fingerprint(loaded)
    dtype = loaded.recipe.model.dtype
    evaluation = loaded.recipe.evaluation

    storage = result_storage(loaded.name, cache / "results")

    def cached(task, key: str):
        policy = CacheKeyFnPolicy(cache_key_fn=lambda *_: key).configure(key_storage=cache / "keys")
        return task.with_options(
            cache_policy=policy, persist_result=True, result_storage=storage, result_serializer="json"
        )

    baseline_key = cachekeys.baseline_key(resolved.revision, evaluation, dtype, device, data)
    keys = {}
    for variant in selected:
        q_key = cachekeys.quantize_key(resolved.revision, variant, fingerprint, dtype, device)
        keys[variant.id] = (q_key, cachekeys.evaluation_key(q_key, variant, evaluation, device, data))
    every_key = [baseline_key, *(key for pair in keys.values() for key in pair)]
    for key in every_key:
        discard_unreadable_cache_entry(cache, key)
    all_cached = all((cache / "keys" / key).exists() for key in every_key)

    # Tasks in this process take turns on the heavy work anyway (one heavy thread per
    # process, see tasks/steps.py), so the run holds one slot of the global limit while
    # they compute, instead of each task taking its own: on Prefect's SQLite server a
    # slot asked for right after one was given back is often refused ("database is
    # locked", retried after ~2 s), which cost 14 × 2 s on a 7-variant run. A run
    # with everything cached holds none. Tasks in other processes (Dask) take their own.
    in_process = isinstance(FlowRunContext.get().task_runner, ThreadPoolTaskRunner)
    task_limit = None if in_process else limit
    with hold_slot(limit if in_process and not all_cached else None):
        baseline_future = cached(baseline_task, baseline_key).submit(loaded, resolved, device, task_limit)
        branches: dict[PrefectFuture, tuple[str, str]] = {}
        quantized: dict[str, PrefectFuture] = {}
        for variant in selected:
            q_key, e_key = keys[variant.id]
            out_dir = artifacts / f"{variant.id}-{q_key[:12]}"
            q_future = cached(quantize_task, q_key).submit(
                loaded, variant, resolved, calibration, device, out_dir, task_limit
            )
            e_future = cached(evaluate_task, e_key).submit(loaded, variant, q_future, device, task_limit)
            quantized[variant.id] = q_future
            branches[e_future] = (variant.id, variant.method)

        baseline_error = _error(baseline_future)
        baseline = baseline_future.result() if baseline_error is None else None
        results["baseline"] = {"evaluation": baseline, "error": baseline_error, "cached": _cached(baseline_future)}
        run.write_results(results)

        verdicts: dict[str, Verdict] = {}
        for e_future in as_completed(list(branches)):
            variant_id, method = branches[e_future]
            variant = loaded.variant(variant_id)
            q_future = quantized[variant_id]
            error = (
                _error(q_future)
                or _error(e_future)
                or (f"baseline failed: {baseline_error}" if baseline_error else None)
            )
            evaluation_result = e_future.result() if _error(e_future) is None else None
            verdict = gate_task(variant, evaluation_result, baseline, error)
            verdicts[variant_id] = verdict
            entry = results["variants"][variant_id]
            entry.update(
                status=verdict.status,
                setting=variant_setting(variant),
                error=error,
                artifact=q_future.result()["path"] if _error(q_future) is None else None,
                evaluation=evaluation_result,
                verdict=verdict.to_dict(),
                cached={"quantize": _cached(q_future), "evaluate": _cached(e_future)},
            )
            if error:
                logger.error("variant %s failed: %s", variant_id, error)
            else:
                logger.info("variant %s %s", variant_id, verdict.status)
            run.write_results(results)

    publish_to = (target or loaded.recipe.publish.target) if publish else "none"
    if publish_to != "none":
        _publish_passed(loaded, results, publish_to, run)
    results["status"] = "completed"
    results["finished"] = datetime.now(UTC).isoformat()
    previous = _previous_results(store, loaded.name, run.run_id)
    regressions = write_report(run.path, results, previous)
    results["regressions"] = [r.to_dict() for r in regressions]
    run.write_results(results)
    _publish_artifacts(results, run.path)
    return run.read_results() | {"run_path": str(run.path)}


def _previous_results(store: RunStore, recipe: str, current: str) -> dict[str, Any] | None:
    """The latest earlier run of the recipe that completed, for regression checks."""
    for earlier in reversed(store.runs(recipe)):
        if earlier.run_id >= current:
            continue
        try:
            results = earlier.read_results()
        except Exception:  # an unreadable old run is skipped, not fatal  # noqa: BLE001
            continue
        if results.get("status") == "completed":
            return results
    return None


def _publish_artifacts(results: dict[str, Any], run_path: Path) -> None:
    """A table artifact (variant × metrics × verdict) and the markdown report, for the Prefect UI."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from quantmill.report.render import COLUMNS, rows

    key = re.sub(r"[^a-z0-9-]", "-", f"quantmill-{results['recipe']}")
    create_table_artifact(
        [dict(zip(COLUMNS, row, strict=True)) for row in rows(results)],
        key=f"{key}-table",
        description=f"{results['recipe']} run {results['run_id']}",
    )
    create_markdown_artifact(
        (run_path / "report.md").read_text(),
        key=f"{key}-report",
        description=f"{results['recipe']} run {results['run_id']}",
    )


def _publish_passed(loaded, results: dict[str, Any], publish_to: str, run) -> None:
    """Publish every passing variant, each as one commit; related repos link to each other."""
    from quantmill.publish.publisher import make_target, publishable, repo_id_for

    target = make_target(loaded, publish_to)
    passed = publishable(results["variants"])
    related = [
        {"name": v, "url": target.url(repo_id_for(loaded, loaded.variant(v))), "note": results["variants"][v]["method"]}
        for v in passed
    ]
    for variant_id in passed:
        future = publish_task.submit(
            loaded,
            loaded.variant(variant_id),
            results["variants"][variant_id],
            results["baseline"]["evaluation"],
            results["model"]["revision"],
            publish_to,
            run.run_id,
            related,
        )
        error = _error(future)
        results["variants"][variant_id]["publish"] = (
            future.result() if error is None else {"status": "failed", "error": error}
        )
        run.write_results(results)


def run_recipe(
    recipe_path: str,
    *,
    only: list[str] | None = None,
    runs_dir: str | None = None,
    workers: int = 4,
    processes: int | None = None,
    heavy_slots: int | None = None,
    publish: bool = True,
    target: str | None = None,
    task_runner=None,
) -> dict[str, Any]:
    """Run the recipe flow.

    Tasks run in ``workers`` threads of this process, where heavy steps take turns;
    ``processes`` runs them in that many Dask worker processes instead, so heavy
    steps run in parallel (up to ``heavy_slots``, default ``processes``); or pass
    any ``task_runner``.
    """
    if processes and not task_runner:
        with _api_reachable_from_workers():
            return run_recipe(
                recipe_path,
                only=only,
                runs_dir=runs_dir,
                heavy_slots=heavy_slots or processes,
                publish=publish,
                target=target,
                task_runner=process_task_runner(processes),
            )
    runner = task_runner or ThreadPoolTaskRunner(max_workers=workers)
    return quantize_evaluate_publish.with_options(task_runner=runner)(
        recipe_path, only=only, runs_dir=runs_dir, heavy_slots=heavy_slots, publish=publish, target=target
    )


def process_task_runner(processes: int):
    """A local Dask cluster of single-threaded worker processes (``quantmill[distributed]``)."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise QuantmillError(
            "running variants in several processes needs prefect-dask: pip install 'quantmill[distributed]'"
        ) from exc
    return DaskTaskRunner(cluster_kwargs={"n_workers": processes, "threads_per_worker": 1, "processes": True})


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
