"""What the matrix flow (``flows/recipe.py``) and the search flow (``flows/search.py``) both do with a run's steps:
submit them as the recipe's cached tasks under the run's keys (:class:`RunSteps`), read their futures, record the
baseline or a variant from its futures, and publish.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect.futures import PrefectFuture

from quantmill import progress
from quantmill.calibration import CalibrationSet
from quantmill.evaluation.results import EvaluationResult
from quantmill.pipeline import Publication, RecipeRun, SlotPolicy, StepKeys, StepSlot, describe_error, with_servable
from quantmill.quantize import local_artifact_path
from quantmill.recipe.matrix import Variant
from quantmill.record import CachedSteps, PublishOutcome, PublishStatus
from quantmill.redact import redact
from quantmill.resolve import ResolvedModel
from quantmill.tasks.steps import CachedTasks, gate_task, publish_task


def error_of(future: PrefectFuture) -> str | None:
    """The failure message of a future once it finished (secrets masked), or None when it completed."""
    future.wait()
    state = future.state
    if state.is_completed():
        return None
    try:
        future.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 -- the task's own exception, re-raised by Prefect
        return describe_error(exc)
    return redact(f"{state.name}: {state.message or 'no result'}")


def evaluation_of(future: PrefectFuture) -> EvaluationResult | None:
    """The evaluation an evaluating step's future holds, or None when the step failed."""
    return EvaluationResult.from_dict(future.result()) if error_of(future) is None else None


def was_cached(future: PrefectFuture) -> bool:
    """Whether the step's result came from the cache (its body did not run)."""
    return future.state.name == "Cached"


@dataclass(frozen=True)
class RunSteps:
    """A run's cached steps and everything their submits take: the run, the recipe's cached tasks
    (``tasks.steps.steps_cached_in``), their keys (``pipeline.step_keys``), the slot policy, the resolved model,
    the calibration set and the device."""

    run: RecipeRun
    tasks: CachedTasks
    keys: StepKeys
    slots: SlotPolicy
    resolved: ResolvedModel
    calibration: CalibrationSet | None
    device: str

    @property
    def run_path(self) -> Path:
        """The run folder, absolute: steps in other processes and folders write its logs and events too."""
        return self.run.path.resolve()

    def baseline(self, slot: StepSlot) -> PrefectFuture:
        return self.tasks.baseline.submit(
            self.run.loaded, self.resolved, slot, self.run_path, cache_key=self.keys.baseline
        )

    def quantize(self, variant: Variant, slot: StepSlot) -> PrefectFuture:
        out_dir = self.run.artifact_dir(variant, self.keys)
        return self.tasks.quantize.submit(
            self.run.loaded,
            variant,
            self.resolved,
            self.calibration,
            out_dir,
            slot,
            self.run_path,
            cache_key=self.keys.quantize[variant.id],
        )

    def evaluate(self, variant: Variant, quantized: PrefectFuture, slot: StepSlot) -> PrefectFuture:
        return self.tasks.evaluate.submit(
            self.run.loaded,
            variant,
            quantized,
            self.resolved.tokenizer_path,
            slot,
            self.run_path,
            cache_key=self.keys.evaluate[variant.id],
        )

    def check_servable(
        self, variant: Variant, quantized: PrefectFuture, evaluated: PrefectFuture, slot: StepSlot
    ) -> PrefectFuture:
        """The branch's servable check, once its evaluation finished (it compares with the baseline's greedy
        tokens, which the run recorded before)."""
        return self.tasks.servable.submit(
            self.run.loaded,
            variant,
            quantized,
            self.run.record.baseline_evaluation(),
            slot,
            self.run_path,
            cache_key=self.keys.servable[variant.id],
            wait_for=[evaluated],
        )


def record_baseline(run: RecipeRun, baseline: PrefectFuture) -> None:
    """Record the baseline step's outcome and report it done (a failed baseline fails every variant)."""
    run.record_baseline(evaluation_of(baseline), error_of(baseline), was_cached(baseline))
    status = "failed" if run.baseline_failed else "passed"
    progress.emit(run.path.resolve(), progress.BASELINE, "done", status=status, cached=was_cached(baseline))


def record_variant(
    run: RecipeRun, variant: Variant, quantized: PrefectFuture, evaluated: PrefectFuture, checked: PrefectFuture | None
) -> None:
    """Gate the variant on its branch's outcome and record it (``checked``: None when no servable check ran)."""
    error = run.variant_error(error_of(quantized), error_of(evaluated), error_of(checked) if checked else None)
    evaluation = with_servable(evaluation_of(evaluated), evaluation_of(checked) if checked else None)
    verdict = gate_task(variant, evaluation, run.record.baseline_evaluation(), error)
    # where this machine has (or will fetch) a folder another worker of a shared store made
    artifact = local_artifact_path(Path(quantized.result()["path"])) if error_of(quantized) is None else None
    cached = CachedSteps(
        quantize=was_cached(quantized),
        evaluate=was_cached(evaluated),
        servable=checked is not None and was_cached(checked),
    )
    run.record_variant(variant, error=error, artifact=artifact, evaluation=evaluation, verdict=verdict, cached=cached)
    run.report_done(variant.id)


def publish_variants(run: RecipeRun, publication: Publication | None) -> None:
    """Publish the variants of ``publication`` (if any), each as one commit (a task with retries)."""
    if publication is None:
        return
    for variant_id in publication.variant_ids:
        progress.emit(run.path.resolve(), variant_id, "publishing")
        future = publish_task.submit(run.loaded, run.record, variant_id, publication.target, publication.related)
        error = error_of(future)
        run.record_publish(
            variant_id, future.result() if error is None else PublishOutcome(status=PublishStatus.FAILED, error=error)
        )
        run.report_done(variant_id)
