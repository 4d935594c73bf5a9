"""The global concurrency limit that heavy steps share: ``gpu`` on CUDA, ``cpu-heavy`` on the CPU."""

from __future__ import annotations

from prefect import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound

GPU_LIMIT = "gpu"
CPU_LIMIT = "cpu-heavy"


def limit_name(device: str) -> str:
    return GPU_LIMIT if device.startswith("cuda") else CPU_LIMIT


def default_slots(name: str) -> int:
    """One slot per visible GPU; one heavy task at a time on the CPU (small machines)."""
    if name != GPU_LIMIT:
        return 1
    import torch

    return max(1, torch.cuda.device_count())


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
