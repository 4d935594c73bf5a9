"""Prefect tasks: each wraps exactly one library call from ``quantmill.stages``.

Caching: every compute task declares the :class:`StepKey` policy: its cache key
is the ``cache_key`` argument the pipeline computed (``quantmill.pipeline.step_keys``:
what determines the step's output). Its small, JSON-able result persists under the
recipe's cache folder in the run store (:func:`steps_cached_in`), so a rerun of an
unchanged recipe executes no task body, and a run killed midway resumes from the
finished steps. With a shared run store (``quantmill.sharedstore``) each entry is copied to the
store as its task completes, so a worker on another machine resumes from it too.

Retries: network-bound steps (resolving/downloading the model) retry with
exponential backoff; compute steps never retry blindly.

Concurrency: heavy steps run one at a time per process, on one thread, and run in one slot of a
global concurrency limit (``gpu`` for steps that need a GPU on a CUDA run, ``cpu-heavy`` for the
others), so variants never oversubscribe a device however many workers the task runner has. The
slot is the step's own, or its run's (``quantmill.pipeline.SlotPolicy``); a ``gpu`` slot places
the step on its own GPUs (``quantmill.devices``), and the step gets that device. Parallel heavy
work takes several processes (a Dask task runner).

Reporting: a heavy step emits its stage (``quantmill.progress``) when it starts, and what
the libraries print meanwhile goes to the run's ``logs/<variant>.log`` (``quantmill.steplog``);
each compute task gets the run folder as ``run_path`` (not part of its cache key). A
cached step's body never runs: the flow reports it done.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NONE, CachePolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.results import ResultRecord
from prefect.tasks import exponential_backoff

from quantmill import progress, stages, steplog
from quantmill.calibration import CalibrationSet
from quantmill.devices import CPU, running_on
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.pipeline import NETWORK_RETRIES, RETRY_BACKOFF_S, StepSlot
from quantmill.quantize import read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.record import PublishOutcome, RunRecord
from quantmill.resolve import ResolvedModel, resolve_model
from quantmill.settings import get_settings
from quantmill.sharedstore import SharedStore, store_holding
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


def run_heavy(slot: StepSlot, call: Callable[[str], T]) -> T:
    """Run ``call(device)`` on this process's heavy thread, in ``slot``, on the device the slot gives.

    A step's own slot (``slot.limit``) is held while it runs: the limits cap heavy steps across
    processes, Dask workers and concurrent runs, and a ``gpu`` slot picks the step's GPUs. With no
    limit the step runs where its run's slot placed it (``slot.held``; the CPU when none did).
    """

    def in_slot() -> T:
        with hold_slot(slot.limit) as taken, running_on(taken or slot.held or CPU) as device:
            return call(device)

    return _HEAVY_THREAD.submit(in_slot).result()


def run_logged(run_path: Path, log_name: str, title: str, slot: StepSlot, call: Callable[[str], T]) -> T:
    """:func:`run_heavy` with what the libraries print going to the run's ``logs/<log_name>.log``, not the
    console (``QUANTMILL_VERBOSE`` also streams it)."""

    def logged(device: str) -> T:
        log = progress.logs_dir(run_path) / f"{log_name}.log"
        with steplog.capture(log, title=title, verbose=get_settings().verbose):
            return call(device)

    return run_heavy(slot, logged)


def run_step(run_path: Path, variant: str, stage: str, slot: StepSlot, call: Callable[[str], T]) -> T:
    """:func:`run_logged` into the variant's log, reported: once the heavy thread takes the step, its
    ``stage`` event is emitted."""

    def reported(device: str) -> T:
        progress.emit(run_path, variant, stage)
        return call(device)

    return run_logged(run_path, variant, f"{stage} {variant}", slot, reported)


@dataclass
class StepKey(CachePolicy):
    """Cache by the key the pipeline computed for the step, passed as the task's ``cache_key`` argument."""

    def compute_key(
        self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        return inputs["cache_key"]


def _cached_step(name: str):
    """A compute task: cached by its ``cache_key`` argument, its result persisted as JSON."""
    return task(name=name, cache_policy=StepKey(), persist_result=True, result_serializer="json")


_NETWORK_RETRIES: dict[str, Any] = {
    "retries": NETWORK_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=RETRY_BACKOFF_S),
    "retry_jitter_factor": 0.5,
}


@task(name="resolve-model", cache_policy=NONE, **_NETWORK_RETRIES)
def resolve_model_task(loaded: LoadedRecipe) -> ResolvedModel:
    return resolve_model(loaded)


@task(name="calibration", cache_policy=NONE)
def calibration_task(loaded: LoadedRecipe, resolved: ResolvedModel) -> CalibrationSet | None:
    return stages.prepare_calibration(loaded, resolved)


@_cached_step("evaluate-baseline")
def baseline_task(
    loaded: LoadedRecipe, resolved: ResolvedModel, slot: StepSlot, run_path: Path, cache_key: str
) -> dict[str, Any]:
    return run_step(
        run_path,
        progress.BASELINE,
        "evaluating",
        slot,
        lambda device: stages.evaluate_baseline(loaded, resolved, device),
    ).to_dict()


@_cached_step("quantize")
def quantize_task(
    loaded: LoadedRecipe,
    variant: Variant,
    resolved: ResolvedModel,
    calibration: CalibrationSet | None,
    out_dir: Path,
    slot: StepSlot,
    run_path: Path,
    cache_key: str,
) -> dict[str, Any]:
    artifact = run_step(
        run_path,
        variant.id,
        "quantizing",
        slot,
        lambda device: stages.quantize_one(loaded, variant, resolved, calibration, device, out_dir),
    )
    return {"path": str(artifact.path), "provenance": artifact.provenance}


@_cached_step("evaluate")
def evaluate_task(
    loaded: LoadedRecipe,
    variant: Variant,
    quantized: dict[str, Any],
    base_tokenizer: Path,
    slot: StepSlot,
    run_path: Path,
    cache_key: str,
) -> dict[str, Any]:
    path = read_artifact(Path(quantized["path"])).path  # a cached result must still point at a complete folder
    return run_step(
        run_path,
        variant.id,
        "evaluating",
        slot,
        lambda device: stages.evaluate_variant(loaded, variant, path, device, base_tokenizer),
    ).to_dict()


@_cached_step("servable")
def servable_task(
    loaded: LoadedRecipe,
    variant: Variant,
    quantized: dict[str, Any],
    baseline: EvaluationResult | None,
    slot: StepSlot,
    run_path: Path,
    cache_key: str,
) -> dict[str, Any]:
    """The servable check (a fresh process loads the variant's upload); its metric is merged into the evaluation."""
    path = read_artifact(Path(quantized["path"])).path
    return run_step(
        run_path,
        variant.id,
        "checking",
        slot,
        lambda device: stages.check_servable(loaded, variant, path, baseline, device),
    ).to_dict()


@dataclass(frozen=True)
class CachedTasks:
    """The recipe's compute tasks, cached in its cache folder (:func:`steps_cached_in`); ``stored`` makes another
    :class:`StepKey` task (the search's proxy) cached and shared the same way."""

    baseline: Task
    quantize: Task
    evaluate: Task
    servable: Task
    stored: Callable[[Task], Task]


def steps_cached_in(cache: Path, recipe_name: str) -> CachedTasks:
    """The compute tasks, their cache keys and results stored in the recipe's cache folder (``keys/``, ``results/``),
    each entry copied to the shared store (if any) as its task completes."""
    storage = _result_storage(recipe_name, cache / "results")
    shared = store_holding(cache)
    pushed = [_push_cache_entry(shared, cache)] if shared is not None else []

    def stored(step: Task) -> Task:
        assert isinstance(step.cache_policy, StepKey)
        return step.with_options(
            cache_policy=step.cache_policy.configure(key_storage=cache / "keys"),
            result_storage=storage,
            on_completion=[*step.on_completion_hooks, *pushed],
        )

    return CachedTasks(
        stored(baseline_task), stored(quantize_task), stored(evaluate_task), stored(servable_task), stored
    )


def _push_cache_entry(shared: SharedStore, cache: Path) -> Callable[[Task, TaskRun, State], None]:
    """An on-completion hook that copies the step's cache entry to the shared store.

    Prefect runs completion hooks after the task's transaction committed, i.e. after it wrote the
    result and the key record; the entry is named by the result's storage key, the cache key.
    A cached step's entry is copied only when the store lacks it (made before the store was shared).
    """

    def push(task: Task, task_run: TaskRun, state: State) -> None:
        record = state.data
        if isinstance(record, ResultRecord) and record.metadata.storage_key:
            key = Path(record.metadata.storage_key).name
            shared.push_cache_entry(cache, key, unless_present=state.name == "Cached")

    return push


def _result_storage(recipe_name: str, folder: Path) -> str:
    """A saved local-file-system block for the recipe's results folder (Prefect needs it saved).

    Its name holds a digest of the folder: runs of same-named recipes in different run stores, on one
    Prefect server, would otherwise re-point one block at each other's folders and lose their caches."""
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    name = "quantmill-" + re.sub(r"[^a-z0-9-]", "-", recipe_name.lower()) + "-" + digest
    LocalFileSystem(basepath=str(folder)).save(name, overwrite=True)
    return f"local-file-system/{name}"


@task(name="gate", cache_policy=NONE)
def gate_task(
    variant: Variant, result: EvaluationResult | None, baseline: EvaluationResult | None, error: str | None
) -> Verdict:
    return stages.gate_variant(variant, result, baseline, error)


@task(name="publish", cache_policy=NONE, **_NETWORK_RETRIES)
def publish_task(
    loaded: LoadedRecipe, record: RunRecord, variant_id: str, target: str, related: list[dict[str, str]]
) -> PublishOutcome:
    """Publishing is idempotent (content fingerprint), so retrying after a network error is safe."""
    from quantmill.publish.publish_run import publish_recorded
    from quantmill.publish.publisher import make_target

    return publish_recorded(loaded, record, variant_id, make_target(loaded, target), related)
