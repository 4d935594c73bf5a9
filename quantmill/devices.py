"""Which devices a heavy step may use: GPU slots tied to fixed GPUs, and where a model is placed on them.

A heavy step runs in one slot of a concurrency limit (``tasks/limits.py``; its own, or its run's:
``quantmill.pipeline.SlotPolicy``): ``gpu`` when the run is on CUDA and the step needs a GPU, else
``cpu-heavy`` (a method whose spec says ``gpu="none"``, e.g. GGUF, runs on the CPU and takes no GPU
slot). A GPU slot is tied to devices:
with ``g`` GPUs per variant (``QUANTMILL_GPUS_PER_VARIANT``), slot ``i`` is the visible GPUs
``[i*g, (i+1)*g)``. While a step holds a slot it holds a file lock per GPU of the slot, named by
the GPU's machine-wide id (its ``CUDA_VISIBLE_DEVICES`` entry, or its index where that is unset),
so two steps on one machine never use the same GPU, whatever process, run, or slot size they have.

How a step sees only its GPUs:

- a Dask worker process (``--processes N``) is started with ``CUDA_VISIBLE_DEVICES`` set to one
  slot's GPUs (:func:`worker_gpu_env`), so it sees exactly one slot, and any library in it that
  picks "the" GPU or spreads over "all" GPUs stays inside the slot;
- threads of one process cannot each have their own ``CUDA_VISIBLE_DEVICES`` (CUDA reads it once
  per process, when it initializes), so a step there gets an explicit device (``cuda:k``, the
  first GPU of its slot) and, with several GPUs per variant, a ``device_map="auto"`` that
  accelerate may spread over the slot's GPUs only (:func:`model_placement`).

Nothing here imports torch at import time, or Prefect at all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantmill.errors import QuantmillError

#: the heavy limit of steps that need a GPU (one slot per group of ``gpus_per_variant`` GPUs)
GPU_LIMIT = "gpu"
#: the heavy limit of steps on the CPU: runs on the CPU, and CPU-only methods on a CUDA run
CPU_LIMIT = "cpu-heavy"
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
#: Test seam, never set in use: pretend the machine has this many GPUs, so that tests on a CPU-only
#: machine simulate devices (``CUDA_VISIBLE_DEVICES`` still narrows them, as CUDA would); a step in
#: a simulated GPU slot holds its GPUs but computes on the CPU.
SIMULATED_GPUS_ENV = "QUANTMILL_TEST_SIMULATED_GPUS"


def limit_name(device: str) -> str:
    """The heavy limit of a run on ``device``."""
    return GPU_LIMIT if device.startswith("cuda") else CPU_LIMIT


@dataclass(frozen=True)
class Placement:
    """Where one heavy step runs.

    Attributes:
        device: what torch calls the step's (first) device in this process: ``cpu`` or ``cuda:k``.
        gpus: every GPU the step holds, as torch numbers them in this process (``device``'s first);
            empty on the CPU (but for simulated GPUs: :data:`SIMULATED_GPUS_ENV`).
    """

    device: str
    gpus: tuple[int, ...] = ()


CPU = Placement("cpu")


def visible_gpu_ids(count: int, cuda_visible_devices: str | None) -> list[str]:
    """The machine-wide ids of the ``count`` GPUs a process sees, in torch's order.

    With ``CUDA_VISIBLE_DEVICES`` set, torch's GPU ``k`` is its ``k``-th entry; otherwise it is GPU ``k``.
    """
    if cuda_visible_devices is None:
        return [str(k) for k in range(count)]
    return [entry.strip() for entry in cuda_visible_devices.split(",") if entry.strip()][:count]


def slot_gpus(slot: int, gpus_per_variant: int) -> tuple[int, ...]:
    """The GPUs of slot ``slot`` (torch's numbers): ``[slot*g, (slot+1)*g)``."""
    return tuple(range(slot * gpus_per_variant, (slot + 1) * gpus_per_variant))


def gpu_slot_count(visible: int, gpus_per_variant: int) -> int:
    """How many GPU slots ``visible`` GPUs make (GPUs left over use no slot).

    Raises:
        QuantmillError: a variant asks for more GPUs than are visible.
    """
    if visible and gpus_per_variant > visible:
        raise QuantmillError(
            f"QUANTMILL_GPUS_PER_VARIANT is {gpus_per_variant}, but this machine has {visible} visible GPU(s)"
        )
    return visible // gpus_per_variant


def slot_placement(slot: int, gpus_per_variant: int) -> Placement:
    gpus = slot_gpus(slot, gpus_per_variant)
    if os.environ.get(SIMULATED_GPUS_ENV):
        return Placement("cpu", gpus)  # simulated GPUs compute nothing: the step holds them and runs on the CPU
    return Placement(f"cuda:{gpus[0]}", gpus)


def worker_gpu_env(ids: Sequence[str], gpus_per_variant: int, workers: int) -> list[dict[str, str]]:
    """The environment of each of ``workers`` worker processes: ``CUDA_VISIBLE_DEVICES`` naming one slot's GPUs.

    Worker ``w`` sees the GPUs of slot ``w`` only (``ids``: the machine-wide ids the parent sees).
    This is dask-cuda's ``LocalCUDACluster`` approach, but exclusive: dask-cuda shows each worker
    every GPU (its own first), which ``device_map="auto"`` or llama.cpp would spread over.

    Raises:
        QuantmillError: more workers than GPU slots.
    """
    slots = gpu_slot_count(len(ids), gpus_per_variant)
    if workers > slots:
        raise QuantmillError(
            f"--processes {workers} asks for {workers} GPU slots, but {len(ids)} visible GPU(s) with "
            f"QUANTMILL_GPUS_PER_VARIANT={gpus_per_variant} make {slots}"
        )
    return [{VISIBLE_DEVICES: ",".join(ids[k] for k in slot_gpus(w, gpus_per_variant))} for w in range(workers)]


def gpu_lock_groups(ids: Sequence[str], gpus_per_variant: int, folder: Path) -> list[list[Path]]:
    """Per GPU slot, the lock files of its GPUs, named by machine-wide id (so processes that see
    different subsets of the GPUs, or group them differently, still exclude each other)."""
    slots = gpu_slot_count(len(ids), gpus_per_variant)
    return [[folder / f"gpu-device.{ids[k]}.lock" for k in slot_gpus(s, gpus_per_variant)] for s in range(slots)]


@contextlib.contextmanager
def hold_gpus(ids: Sequence[str], gpus_per_variant: int, folder: Path) -> Iterator[Placement]:
    """Hold the GPUs of whichever slot is free first (waiting until one is); yields its placement.

    ``ids``: the machine-wide ids of the GPUs this process sees (:func:`visible_gpu_ids`).
    """
    from quantmill.runstore import one_of_lock_groups

    groups = gpu_lock_groups(ids, gpus_per_variant, folder)
    if not groups:
        raise QuantmillError("the run is on CUDA, but this process sees no GPU")
    with one_of_lock_groups(groups) as slot:
        yield slot_placement(slot, gpus_per_variant)


def this_process_gpu_ids() -> list[str]:
    """The machine-wide ids of the GPUs this process sees (asks CUDA for its device count)."""
    simulated = os.environ.get(SIMULATED_GPUS_ENV)
    if simulated is not None:
        count = int(simulated)
    else:
        import torch

        count = torch.cuda.device_count()
    return visible_gpu_ids(count, os.environ.get(VISIBLE_DEVICES))


# The GPUs of the step running on this thread. Methods and output formats (plug-ins among them)
# receive only a device string; a context variable tells the few places that place a model
# (model_placement) about the slot's other GPUs without changing those interfaces.
_STEP_GPUS: ContextVar[tuple[int, ...]] = ContextVar("quantmill_step_gpus", default=())


@contextlib.contextmanager
def running_on(placement: Placement) -> Iterator[str]:
    """Run a step on ``placement`` on this thread; yields the device string the step gets."""
    token = _STEP_GPUS.set(placement.gpus)
    try:
        yield placement.device
    finally:
        _STEP_GPUS.reset(token)


def model_placement(device: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that place a model on ``device`` (none on the CPU).

    One GPU: ``device_map={"": device}``. When the running step holds several GPUs
    (``QUANTMILL_GPUS_PER_VARIANT``), ``device_map="auto"`` with ``max_memory`` naming only those
    GPUs (and the CPU), so accelerate spreads the model over the slot and never onto another step's GPU.
    """
    if not device.startswith("cuda"):
        return {}
    gpus = _STEP_GPUS.get()
    if len(gpus) < 2:
        return {"device_map": {"": device}}
    return {"device_map": "auto", "max_memory": _max_memory(gpus)}


def _max_memory(gpus: tuple[int, ...]) -> dict[int | str, int]:
    """Free memory of each of ``gpus``, and the CPU's available memory (accelerate's own
    ``get_max_memory()`` would open a context on every visible GPU, other steps' too)."""
    import psutil
    import torch

    memory: dict[int | str, int] = {gpu: torch.cuda.mem_get_info(gpu)[0] for gpu in gpus}
    memory["cpu"] = psutil.virtual_memory().available
    return memory
