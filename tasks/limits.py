"""The global concurrency limits that heavy steps share: ``gpu`` for steps that need a GPU on a CUDA run,
``cpu-heavy`` for the others; a ``gpu`` slot is also tied to its GPUs (``quantmill.devices``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound

from quantmill.devices import CPU, GPU_LIMIT, Placement, gpu_slot_count, hold_gpus, this_process_gpu_ids
from quantmill.runstore import one_of_locks
from quantmill.settings import get_settings


def default_slots(name: str) -> int:
    """One slot per ``QUANTMILL_GPUS_PER_VARIANT`` visible GPUs; ``QUANTMILL_CPU_HEAVY_SLOTS`` on the CPU
    (default 1: small machines)."""
    if name != GPU_LIMIT:
        return get_settings().cpu_heavy_slots
    return max(1, gpu_slot_count(len(this_process_gpu_ids()), get_settings().gpus_per_variant))


def ensure_limit(name: str, slots: int | None = None) -> int:
    """Create the limit if it does not exist, sized ``slots`` or the default.

    An existing limit keeps its size (an operator may have set it) unless ``slots``
    asks for another. Returns the size.
    """
    with get_client(sync_client=True) as client:
        try:
            size = client.read_global_concurrency_limit_by_name(name).limit
            if slots and slots != size:
                client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=slots))
                return slots
            return size
        except ObjectNotFound:
            size = slots or default_slots(name)
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=size))
            return size


#: set for the processes of a run on Prefect's ephemeral server (its Dask workers too)
MACHINE_LIMITS_ENV = "QUANTMILL_MACHINE_LIMITS"


def uses_machine_limits() -> bool:
    """Whether heavy slots are file locks on this machine rather than the Prefect server's limit.

    Prefect's ephemeral server (no ``PREFECT_API_URL``) lives and dies with one
    process and runs none of the server's services: a run killed while holding a
    slot would keep it in the shared database for good (measured: the next run
    still waited after 400 s), since the lease that would expire it died with the
    server. On one machine a file lock does the same job, and the kernel drops
    it with its process. A real server (``prefect server start``, Prefect Cloud)
    expires the leases of dead holders, so its limit is used.
    """
    from prefect.settings import PREFECT_API_URL

    return bool(os.environ.get(MACHINE_LIMITS_ENV)) or not PREFECT_API_URL.value()


@contextlib.contextmanager
def hold_slot(name: str | None) -> Iterator[Placement | None]:
    """Hold one slot of the named limit (None: no limit) for the block; yields where a step in it runs.

    A ``gpu`` slot also holds the GPUs of one GPU slot of this machine (``quantmill.devices.hold_gpus``:
    file locks per GPU, whichever limit counts the slots) and yields their placement; a ``cpu-heavy``
    slot yields the CPU; no limit yields None.
    """
    if name is None:
        yield None
        return
    with _counted(name):
        if name != GPU_LIMIT:
            yield CPU
            return
        settings = get_settings()
        with hold_gpus(this_process_gpu_ids(), settings.gpus_per_variant, settings.cache_dir / "locks") as placement:
            yield placement


@contextlib.contextmanager
def _counted(name: str) -> Iterator[None]:
    """Count the slot against the named limit: the Prefect server's, or file locks on this machine."""
    if uses_machine_limits():
        size = ensure_limit(name)  # the size lives on the server either way
        folder = get_settings().cache_dir / "locks"
        with one_of_locks([folder / f"{name}.{i}.lock" for i in range(size)]):
            yield
    else:
        with concurrency(name, occupy=1, strict=True):
            yield
