"""The run: one recipe from its run folder to its report, and every decision between the steps.

``quantmill.stages`` holds the *steps*, one library call each (prepare calibration,
evaluate the baseline, quantize a variant, evaluate it, gate it). This module holds
the *run* around them, whoever executes the steps:

- which variants run, and the run folder with its typed record (:func:`start_run`);
- the cache key of every step (:func:`step_keys`) and the repair of unreadable
  cache entries (:func:`discard_unreadable_cache_entry`);
- whether the run or each task holds a heavy slot (:func:`slot_policy`);
- which error a failed variant reports (:meth:`RecipeRun.variant_error`), and the
  servable check's result merged into its evaluation (:func:`with_servable`);
- recording every outcome in the run record, the links between the repos published
  together, and the earlier run that regressions are measured against (:class:`RecipeRun`).

The Prefect flow (``flows/recipe.py``) runs the steps as tasks around a
:class:`RecipeRun`; :func:`run_sequential` runs them one after another in this
thread, without Prefect or a cache, for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quantmill import __version__, cachekeys, progress, stages
from quantmill.cacheentry import plain_json_entry
from quantmill.calibration import CalibrationSet
from quantmill.devices import CPU_LIMIT, GPU_LIMIT, Placement
from quantmill.errors import QuantmillError, RecipeError
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.plan import build_plan, variant_setting
from quantmill.recipe import LoadedRecipe, load_recipe
from quantmill.recipe.matrix import Variant
from quantmill.record import (
    BaselineRecord,
    CachedSteps,
    ModelRef,
    PublishOutcome,
    PublishStatus,
    Regression,
    RunRecord,
    RunStatus,
    VariantRecord,
    VariantStatus,
)
from quantmill.redact import redact
from quantmill.registry import did_you_mean
from quantmill.resolve import ResolvedModel
from quantmill.runstore import Run, RunStore
from quantmill.settings import get_settings

log = logging.getLogger(__name__)

#: network-bound steps (resolving the model, publishing) are tried again this often, after
#: RETRY_BACKOFF_S × 2**attempt seconds; compute steps never retry blindly
NETWORK_RETRIES = 3
RETRY_BACKOFF_S = 2.0


def select_variants(loaded: LoadedRecipe, only: list[str] | None) -> list[Variant]:
    """The variants to run: all, or those named by ``--only`` (each must exist), in recipe order."""
    ids = [v.id for v in loaded.variants]
    unknown = [name for name in only or () if name not in ids]
    if unknown:
        from quantmill.errors import RecipeProblem

        raise RecipeError(
            [
                RecipeProblem(
                    str(loaded.path),
                    "--only",
                    f"no variant '{name}'",
                    hint="; ".join(x for x in (did_you_mean(name, ids), f"variants: {', '.join(ids)}") if x),
                )
                for name in unknown
            ]
        )
    return [v for v in loaded.variants if not only or v.id in only]


def describe_error(exc: BaseException) -> str:
    """How a failed step is recorded: its exception in one line, secrets masked."""
    return redact(f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class StepKeys:
    """The cache key of every step of a run (see ``quantmill.cachekeys``)."""

    baseline: str
    quantize: dict[str, str]  # variant id → key
    evaluate: dict[str, str]
    servable: dict[str, str]

    def every(self) -> list[str]:
        return [self.baseline, *self.quantize.values(), *self.evaluate.values(), *self.servable.values()]


def step_keys(
    loaded: LoadedRecipe,
    variants: list[Variant],
    resolved: ResolvedModel,
    calibration: CalibrationSet | None,
    device: str,
) -> StepKeys:
    data = cachekeys.evaluation_data_fingerprint(loaded)
    dtype, evaluation = loaded.recipe.model.dtype, loaded.recipe.evaluation
    fingerprint = calibration.fingerprint if calibration else None
    remote_code = loaded.trust_remote_code
    on = {v.id: cachekeys.step_device(v, device) for v in variants}
    quantize = {
        v.id: cachekeys.quantize_key(resolved.revision, v, fingerprint, dtype, on[v.id], remote_code=remote_code)
        for v in variants
    }
    from quantmill.publish.publisher import repo_id_for

    baseline = cachekeys.baseline_key(resolved.revision, evaluation, dtype, device, data, remote_code=remote_code)
    evaluate = {v.id: cachekeys.evaluation_key(quantize[v.id], v, evaluation, on[v.id], data) for v in variants}
    return StepKeys(
        baseline=baseline,
        quantize=quantize,
        evaluate=evaluate,
        servable={v.id: cachekeys.servable_key(evaluate[v.id], baseline, repo_id_for(loaded, v)) for v in variants},
    )


def cache_status(loaded: LoadedRecipe, cache: Path, device: str) -> dict[str, str]:
    """Per variant: ``cached`` (quantize, evaluate and servable results stored for today's keys, as
    :func:`step_keys` computes them for a run), ``stale`` (an artifact of other inputs), or ``not run``.

    Reads only local files: a hub model (or tokenizer) cannot be pinned offline, so its variants are
    ``unknown``. The calibration set's fingerprint comes from the calibration cache: a miss tokenizes
    the set and stores it there, as a run would."""
    from quantmill.recipe.checks import is_local_model
    from quantmill.resolve import resolve_model

    model = loaded.recipe.model
    if not all(is_local_model(name, loaded.base_dir) for name in (model.id, model.tokenizer or model.id)):
        return {v.id: "unknown" for v in loaded.variants}
    resolved = resolve_model(loaded)
    keys = step_keys(loaded, list(loaded.variants), resolved, stages.prepare_calibration(loaded, resolved), device)
    status = {}
    for variant in loaded.variants:
        steps = (keys.quantize[variant.id], keys.evaluate[variant.id], keys.servable[variant.id])
        if all((cache / "keys" / key).is_file() for key in steps):
            status[variant.id] = "cached"
        elif any((cache.parent / "artifacts").glob(f"{variant.id}-*")):
            status[variant.id] = "stale"
        else:
            status[variant.id] = "not run"
    return status


def discard_unreadable_cache_entry(cache: Path, key: str) -> bool:
    """Delete a cache entry whose record or result does not parse, so the step runs again.

    An entry is Prefect's persisted result: ``keys/<key>`` (JSON naming its
    ``storage_key``) and the result file it names under ``results/``. Prefect fails
    a task whose cached result cannot be read instead of recomputing it; a crash or
    a full disk while writing must not poison a key forever. Returns whether an
    entry was discarded.
    """
    record = cache / "keys" / key
    if not record.exists():
        return False
    try:
        _read_cache_entry(cache, key)
        return False
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("discarding unreadable cache entry %s; the step will run again", key[:12])
        record.unlink(missing_ok=True)
        return True


def _read_cache_entry(cache: Path, key: str) -> tuple[dict, object]:
    """The entry's record (``keys/<key>``) and the stored result it names; raises when either does not parse."""
    record = json.loads((cache / "keys" / key).read_text())
    storage_key = record["storage_key"]
    result = Path(storage_key) if Path(storage_key).is_absolute() else cache / "results" / storage_key
    return record, json.loads(result.read_text())


def cached_result(cache: Path, key: str) -> dict | None:
    """The stored result of a compute step, read as Prefect would return it; None when there is none, it
    expires, or it is not a plain JSON result (every compute step persists JSON: ``tasks/steps.py``)."""
    try:
        record, result = _read_cache_entry(cache, key)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if isinstance(result, dict) and plain_json_entry(record, result) else None


def with_servable(evaluation: EvaluationResult | None, servable: EvaluationResult | None) -> EvaluationResult | None:
    """The variant's evaluation with the servable check's metric (``greedy_agreement``) and details merged in:
    what its gates and its card see."""
    if evaluation is None or servable is None:
        return evaluation
    return EvaluationResult({**evaluation.metrics, **servable.metrics}, {**evaluation.details, **servable.details})


@dataclass(frozen=True)
class StepSlot:
    """The heavy slot one step runs in: a slot of ``limit`` it takes while it runs, or (``limit`` None)
    its run's slot, which placed it at ``held``."""

    limit: str | None
    held: Placement | None = None


@dataclass(frozen=True)
class SlotPolicy:
    """Who holds slots of the heavy limits: the run, around all its steps, or each heavy step.

    Attributes:
        limit: the run's heavy limit (``gpu`` on CUDA, ``cpu-heavy`` on the CPU).
        run: the limit the run holds a slot of around its steps (None: each step takes its own).
    """

    limit: str
    run: str | None

    def for_step(self, needs_gpu: bool, run_placement: Placement | None) -> StepSlot:
        """The slot of one heavy step; ``run_placement``: where the run's slot is (None when it holds none).

        A step that needs no GPU (its method's spec says ``gpu="none"``) takes a ``cpu-heavy`` slot of
        its own and runs on the CPU, even when its run holds a GPU slot. Any other step runs in the
        run's slot, or takes one of the run's limit while it runs (a cached step's body never runs,
        so it takes none).
        """
        if self.limit == GPU_LIMIT and not needs_gpu:
            return StepSlot(CPU_LIMIT)
        if run_placement is not None:
            return StepSlot(None, run_placement)
        return StepSlot(self.limit)


def slot_policy(limit: str, *, tasks_in_this_process: bool, all_cached: bool) -> SlotPolicy:
    """Tasks in this process take turns on the heavy work anyway (one heavy thread per
    process, see ``tasks/steps.py``), so the run holds one slot of the limit while they
    compute, instead of each task taking its own: on Prefect's SQLite server a slot
    asked for right after one was given back is often refused ("database is locked",
    retried after ~2 s), which cost 14 × 2 s on a 7-variant run. A run with everything
    cached holds none. Tasks in other processes (Dask workers) take their own.
    """
    holds = tasks_in_this_process and not all_cached
    return SlotPolicy(limit=limit, run=limit if holds else None)


def recipe_cache_dir(store: RunStore, recipe: str) -> Path:
    """Persisted step results of every run of this recipe (what makes reruns and resumes cheap)."""
    return (store.recipe_dir(recipe) / ".cache").resolve()


@dataclass(frozen=True)
class Publication:
    """The variants a run publishes, where, and the links between them."""

    target: str  # "local" or "hub"
    variant_ids: list[str]
    related: list[dict[str, str]]


class RecipeRun:
    """One run in progress: its recipe, selected variants, run folder and record.

    Every ``record_*`` method updates the record and writes ``results.json`` at
    once, so a killed run leaves what it had finished. Outcomes are logged to
    ``logger`` (the flow sets Prefect's run logger, so they show in its UI).
    """

    def __init__(self, loaded: LoadedRecipe, variants: list[Variant], store: RunStore, run: Run, record: RunRecord):
        self.loaded = loaded
        self.variants = variants
        self.store = store
        self.run = run
        self.record = record
        self.logger: logging.Logger | logging.LoggerAdapter = log

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def cache_dir(self) -> Path:
        return recipe_cache_dir(self.store, self.loaded.name)

    def artifact_dir(self, variant: Variant, keys: StepKeys) -> Path:
        """The variant's output folder, named by its quantize key, shared by every run that has that key."""
        return self.store.recipe_dir(self.loaded.name) / "artifacts" / f"{variant.id}-{keys.quantize[variant.id][:12]}"

    def _save(self) -> None:
        self.run.write_record(self.record)

    def begin(self, device: str, resolved: ResolvedModel) -> None:
        self.record.status = RunStatus.RUNNING
        self.record.device = device
        self.record.model = ModelRef(id=resolved.id, revision=resolved.revision)
        self._save()

    def prepare_cache(self, keys: StepKeys) -> bool:
        """Discard unreadable entries for these keys; returns whether every step is cached."""
        for key in keys.every():
            discard_unreadable_cache_entry(self.cache_dir, key)
        return all((self.cache_dir / "keys" / key).exists() for key in keys.every())

    def record_baseline(self, evaluation: EvaluationResult | None, error: str | None, cached: bool = False) -> None:
        self.record.baseline = BaselineRecord(evaluation=evaluation, error=error, cached=cached)
        self._save()

    def variant_error(
        self, quantize_error: str | None, evaluate_error: str | None, servable_error: str | None = None
    ) -> str | None:
        """What a variant reports as its failure: the first step that failed, else the baseline's failure.

        Quantization comes first (evaluation and the servable check fail too when they had
        nothing to run), then evaluation, then the servable check (``not servable: …``); a failed
        baseline fails every variant, which cannot be gated without it.
        """
        baseline_error = self.record.baseline.error if self.record.baseline else None
        return (
            quantize_error
            or evaluate_error
            or servable_error
            or (f"baseline failed: {baseline_error}" if baseline_error else None)
        )

    @property
    def baseline_failed(self) -> bool:
        """The baseline step failed: every variant fails, and none is worth a servable check."""
        return self.record.baseline is not None and self.record.baseline.error is not None

    def record_variant(
        self,
        variant: Variant,
        *,
        error: str | None,
        artifact: Path | None,
        evaluation: EvaluationResult | None,
        verdict: Verdict,
        cached: CachedSteps,
    ) -> None:
        self.record.variants[variant.id] = VariantRecord(
            method=variant.method,
            status=VariantStatus(verdict.status),
            setting=variant_setting(variant),
            error=error,
            artifact=artifact,
            evaluation=evaluation,
            verdict=verdict,
            cached=cached,
        )
        self._save()
        if error:
            self.logger.error("variant %s failed: %s", variant.id, error)
        else:
            self.logger.info("variant %s %s", variant.id, verdict.status)

    def report_done(self, variant_id: str) -> None:
        """The variant's ``done`` event: its verdict, whether it came from the cache, how publishing went."""
        entry = self.record.variants[variant_id]
        fields: dict[str, object] = {"status": entry.status.value, "cached": entry.fully_cached}
        if entry.publish is not None:
            fields["publish"] = entry.publish.status.value
        progress.emit(self.path.resolve(), variant_id, "done", **fields)

    def publication(self, publish: bool, target: str | None) -> Publication | None:
        """What to publish: every passing variant, to ``target`` or the recipe's; None when nothing is."""
        from quantmill.publish.publish_run import related_links
        from quantmill.publish.publisher import make_target, publishable

        kind = (target or self.loaded.recipe.publish.target) if publish else "none"
        if kind == "none":
            return None
        chosen = publishable(self.record.variants)
        return Publication(
            kind, chosen, related_links(self.loaded, self.record, chosen, make_target(self.loaded, kind))
        )

    def record_publish(self, variant_id: str, outcome: PublishOutcome) -> None:
        self.record.variants[variant_id].publish = outcome
        self._save()

    def finish(self) -> list[Regression]:
        """Mark the run completed and write its report; returns regressions since the previous completed run."""
        from quantmill.report.render import write_report

        self.record.status = RunStatus.COMPLETED
        self.record.finished = datetime.now(UTC)
        previous = latest_completed(self.store, self.loaded.name, before=self.run.run_id)
        self.record.regressions = write_report(self.path, self.record, previous)
        self._save()
        self.run.push()  # the report and logs, the record last
        return self.record.regressions


def latest_completed(store: RunStore, recipe: str, before: str | None = None) -> RunRecord | None:
    """The record of the recipe's latest completed run (earlier than run id ``before``); unreadable runs are skipped."""
    for earlier in reversed(store.runs(recipe)):
        if before is not None and earlier.run_id >= before:
            continue
        try:
            record = earlier.read_record()
        except QuantmillError:  # an unreadable old run is skipped, not fatal
            continue
        if record.status == RunStatus.COMPLETED:
            return record
    return None


def start_run(
    loaded: LoadedRecipe,
    only: list[str] | None = None,
    store: RunStore | None = None,
    *,
    inputs_fingerprint: str | None = None,
) -> RecipeRun:
    """Create the recipe's run folder: the recipe text, the plan, and a record listing the selected variants as pending.

    Raises:
        RecipeError: ``only`` names a variant the recipe does not have (nothing is written then).
    """
    if loaded.path is None:
        raise ValueError("a run needs its recipe as a file (the record points at it)")
    variants = select_variants(loaded, only)
    store = store or RunStore(get_settings().runs_dir)
    store.pull(loaded.name)  # a shared store: earlier runs and cached steps from every worker
    run = store.create_run(loaded.name, loaded.text, build_plan(loaded).to_dict())
    record = RunRecord(
        recipe=loaded.name,
        recipe_path=loaded.path.resolve(),
        recipe_sha256=loaded.sha256,
        run_id=run.run_id,
        quantmill_version=__version__,
        inputs_fingerprint=inputs_fingerprint,
        variants={v.id: VariantRecord(method=v.method) for v in variants},
    )
    run.write_record(record)
    return RecipeRun(loaded, variants, store, run, record)


def run_sequential(
    recipe_path: str | Path,
    *,
    only: list[str] | None = None,
    runs_dir: Path | None = None,
    publish: bool = True,
    target: str | None = None,
    baseline: bool = True,
    servable: bool = True,
) -> RecipeRun:
    """The whole run in this thread, without Prefect: what the flow does, step after step.

    Same run folder, keys, output folders, error precedence and record as the flow;
    no cache (every step runs) and no retries. ``baseline=False`` skips measuring
    the baseline (recorded as not measured: relative gates then fail, and the servable
    check measures no ``greedy_agreement``). ``servable=False`` skips the servable check
    (a process start per variant), for tests and benchmarks that measure something else;
    such a run publishes nothing.
    """
    from quantmill.resolve import resolve_device, resolve_model

    if not servable and publish:
        raise ValueError("a run without the servable check cannot publish: pass publish=False")

    loaded = load_recipe(recipe_path)
    if loaded.recipe.search is not None:
        raise QuantmillError(f"{loaded.name}: a search runs in its flow (quantmill run), not step after step")
    run = start_run(loaded, only, RunStore(runs_dir) if runs_dir else None)
    device = resolve_device(loaded.recipe.device)
    resolved = resolve_model(loaded)
    run.begin(device, resolved)
    calibration = stages.prepare_calibration(loaded, resolved)
    keys = step_keys(loaded, run.variants, resolved, calibration, device)
    measured, error = None, None
    if baseline:
        try:
            measured = stages.evaluate_baseline(loaded, resolved, device)
        except Exception as exc:  # a failed step is recorded, as the flow records it
            log.exception("the baseline failed")
            error = describe_error(exc)
    run.record_baseline(measured, error)
    for variant in run.variants:
        artifact, evaluation, quantize_error, evaluate_error, servable_error = None, None, None, None, None
        try:
            out_dir = run.artifact_dir(variant, keys)
            artifact = stages.quantize_one(loaded, variant, resolved, calibration, device, out_dir).path
            evaluation = stages.evaluate_variant(loaded, variant, artifact, device, resolved.tokenizer_path)
        except Exception as exc:  # one failing variant never stops the others
            log.exception("variant %s failed", variant.id)
            quantize_error, evaluate_error = (
                (describe_error(exc), None) if artifact is None else (None, describe_error(exc))
            )
        if servable and artifact is not None and evaluation is not None and not run.baseline_failed:
            try:
                evaluation = with_servable(
                    evaluation, stages.check_servable(loaded, variant, artifact, measured, device)
                )
            except Exception as exc:  # noqa: BLE001 -- recorded as the variant's failure, as the flow records it
                servable_error = describe_error(exc)
        failure = run.variant_error(quantize_error, evaluate_error, servable_error)
        verdict = stages.gate_variant(variant, evaluation, measured, failure)
        run.record_variant(
            variant, error=failure, artifact=artifact, evaluation=evaluation, verdict=verdict, cached=CachedSteps()
        )
    publication = run.publication(publish, target)
    if publication is not None:
        publish_in_process(run, publication)
    run.finish()
    return run


def publish_in_process(run: RecipeRun, publication: Publication, *, retries: int = 0) -> None:
    """Publish the variants of ``publication`` in this thread, one commit each, recording each outcome; a failure
    is tried again ``retries`` times, waiting as the flow's publish task does (publishing is idempotent)."""
    from quantmill.publish.publish_run import publish_recorded
    from quantmill.publish.publisher import make_target

    destination = make_target(run.loaded, publication.target)
    for variant_id in publication.variant_ids:
        progress.emit(run.path.resolve(), variant_id, "publishing")
        for attempt in range(retries + 1):
            try:
                outcome = publish_recorded(run.loaded, run.record, variant_id, destination, publication.related)
                break
            except Exception as exc:  # noqa: BLE001 -- a failed publish is recorded, the others go on
                outcome = PublishOutcome(status=PublishStatus.FAILED, error=describe_error(exc))
                if attempt < retries:
                    time.sleep(RETRY_BACKOFF_S * 2**attempt)
        run.record_publish(variant_id, outcome)
        run.report_done(variant_id)
