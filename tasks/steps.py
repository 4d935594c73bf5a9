"""Prefect tasks: each wraps exactly one library call from ``quantmill.stages``.

Caching: every compute task has a cache key from ``quantmill.cachekeys`` (what
determines its output) and persists its small, JSON-able result under the recipe's
cache folder in the run store, so a rerun of an unchanged recipe executes no task
body, and a run killed midway resumes from the finished steps.

Retries: network-bound steps (resolving/downloading the model) retry with
exponential backoff; compute steps never retry blindly.

Concurrency: heavy steps run one at a time per process, on one thread, and hold one slot of a
global concurrency limit while they run (``gpu`` on CUDA, ``cpu-heavy`` on the
CPU), so variants never oversubscribe a device however many workers the task
runner has. Parallel heavy work takes several processes (a Dask task runner).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from quantmill import stages
from quantmill.calibration import CalibrationSet
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.quantize import read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.resolve import ResolvedModel, resolve_model
from quantmill.tasks.limits import hold_slot

# Heavy steps run one at a time per process, all on one thread. One at a time:
# transformers, llm-compressor and torch change process-global state while they
# load and quantize (a meta-device default, patched init functions, the active
# compression session), so two heavy calls in threads of one process corrupt each
# other (measured: every quantization failed with "Cannot copy out of meta tensor"
# and a baseline evaluated next scored 0.11 instead of 0.93). One thread: torch's
# OpenMP thread teams belong to the thread that starts them, and the same calls
# spread over the task runner's threads took 20 % longer (60 s vs 50 s for seven
# variants on 2 cores).
_HEAVY_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantmill-heavy")

T = TypeVar("T")


def run_heavy(limit: str | None, call: Callable[..., T], *args: Any) -> T:
    """Run ``call(*args)`` on this process's heavy thread, holding a slot of ``limit`` while it runs.

    The limit caps heavy steps across processes, Dask workers and concurrent runs;
    None when the flow already holds a slot for this process's steps.
    """

    def with_slot() -> T:
        with hold_slot(limit):
            return call(*args)

    return _HEAVY_THREAD.submit(with_slot).result()


@task(
    name="resolve-model",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def resolve_model_task(loaded: LoadedRecipe) -> ResolvedModel:
    return resolve_model(loaded)


@task(name="calibration", cache_policy=NONE)
def calibration_task(loaded: LoadedRecipe, resolved: ResolvedModel) -> CalibrationSet | None:
    return stages.prepare_calibration(loaded, resolved)


@task(name="evaluate-baseline", persist_result=True)
def baseline_task(loaded: LoadedRecipe, resolved: ResolvedModel, device: str, limit: str | None) -> dict[str, Any]:
    return run_heavy(limit, stages.evaluate_baseline, loaded, resolved, device).to_dict()


@task(name="quantize", persist_result=True)
def quantize_task(
    loaded: LoadedRecipe,
    variant: Variant,
    resolved: ResolvedModel,
    calibration: CalibrationSet | None,
    device: str,
    out_dir: Path,
    limit: str | None,
) -> dict[str, Any]:
    artifact = run_heavy(limit, stages.quantize_one, loaded, variant, resolved, calibration, device, out_dir)
    return {"path": str(artifact.path), "provenance": artifact.provenance}


@task(name="evaluate", persist_result=True)
def evaluate_task(
    loaded: LoadedRecipe, variant: Variant, quantized: dict[str, Any], device: str, limit: str | None
) -> dict[str, Any]:
    path = read_artifact(Path(quantized["path"])).path  # a cached result must still point at a complete folder
    return run_heavy(limit, stages.evaluate_variant, loaded, variant, path, device).to_dict()


@task(name="gate", cache_policy=NONE)
def gate_task(
    variant: Variant, result: dict[str, Any] | None, baseline: dict[str, Any] | None, error: str | None
) -> Verdict:
    return stages.gate_variant(
        variant,
        EvaluationResult.from_dict(result) if result else None,
        EvaluationResult.from_dict(baseline) if baseline else None,
        error,
    )


@task(
    name="publish",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NONE,
)
def publish_task(
    loaded: LoadedRecipe,
    variant: Variant,
    entry: dict[str, Any],
    baseline: dict[str, Any] | None,
    revision: str,
    target: str,
    run_id: str,
    related: list[dict[str, str]],
) -> dict[str, Any]:
    """Publishing is idempotent (content fingerprint), so retrying after a network error is safe."""
    from quantmill.publish.publisher import make_target, publish_variant

    result = publish_variant(
        loaded,
        variant,
        artifact_path=Path(entry["artifact"]),
        provenance=read_artifact(Path(entry["artifact"])).provenance,
        evaluation=EvaluationResult.from_dict(entry["evaluation"]),
        baseline=EvaluationResult.from_dict(baseline) if baseline else None,
        verdict=Verdict.from_dict(entry["verdict"]),
        revision=revision,
        target=make_target(loaded, target),
        run_id=run_id,
        related=[link for link in related if link["name"] != variant.id],
    )
    return result.to_dict()
