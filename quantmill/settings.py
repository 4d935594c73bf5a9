"""quantmill's settings and runtime defaults, read once, in one place (``QUANTMILL_*``).

Every default a run, the CLI or a deployment uses (task workers, heavy slots,
the nightly schedule, the work pool) is a field here, so there is one value to
change. ``infra/prefect.yaml`` cannot import Python: a test keeps its values
equal to these defaults.
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from quantmill.errors import QuantmillError


class Settings(BaseSettings):
    """Environment variables that change quantmill's behaviour.

    Attributes:
        runs_dir: the run store's root (``QUANTMILL_RUNS_DIR``). When that is a URL (``s3://bucket/prefix``,
            any fsspec URL, ``file://…`` too) the store is shared: ``runs_dir`` is then its local working
            mirror under ``cache_dir/stores/`` and ``shared_store`` holds the URL (``quantmill.sharedstore``).
        shared_store: the shared store's URL, set only from ``QUANTMILL_RUNS_DIR`` (None: a local store).
        store_options: options for the shared store's fsspec file system (``QUANTMILL_STORE_OPTIONS``, JSON,
            e.g. ``{"endpoint_url": …}``); credentials otherwise come from the standard environment
            (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``). Operator settings:
            a recipe never says where the store is.
        store_lease_s: how long a lock in the shared store lasts without a renewal (``QUANTMILL_STORE_LEASE_S``);
            a worker killed while holding one blocks the others this long at most.
        cache_dir: downloads and built tools (``QUANTMILL_CACHE_DIR``).
        debug: show tracebacks in the CLI (``QUANTMILL_DEBUG=1``).
        verbose: also stream what the libraries print during steps to the console; it always
            goes to the run's per-step logs (``QUANTMILL_VERBOSE=1``).
        llama_cpp_dir: a user's llama.cpp checkout (``LLAMA_CPP_DIR`` or ``QUANTMILL_LLAMA_CPP_DIR``).
        hub_timeout: seconds a Hub request may go without an answer before it fails and is
            retried (``QUANTMILL_HUB_TIMEOUT``; 0 leaves huggingface_hub's client as it is).
        workers: concurrent tasks of a run in one process (``QUANTMILL_WORKERS``); heavy
            ones take turns whatever the number.
        cpu_heavy_slots: size of the ``cpu-heavy`` limit when a run creates it
            (``QUANTMILL_CPU_HEAVY_SLOTS``); the ``gpu`` limit gets one slot per ``gpus_per_variant``
            visible GPUs.
        gpus_per_variant: GPUs each heavy step of a CUDA run holds (``QUANTMILL_GPUS_PER_VARIANT``);
            with more than one, quantization and evaluation spread the model over them
            (accelerate's ``device_map="auto"``). An operator setting, not a recipe field: a recipe
            (untrusted input on a deployment) does not decide how much of the machine it takes.
        nightly_cron: schedule of the nightly zoo deployment (``QUANTMILL_NIGHTLY_CRON``, UTC).
        work_pool: the process work pool deployments run on (``QUANTMILL_WORK_POOL``).
    """

    model_config = SettingsConfigDict(env_prefix="QUANTMILL_", extra="ignore")

    runs_dir: Path = Field(Path("runs"))
    cache_dir: Path = Field(Path.home() / ".cache" / "quantmill")
    shared_store: str | None = None
    store_options: dict[str, Any] = Field(default_factory=dict)
    store_lease_s: float = Field(60.0, gt=0)
    debug: bool = False
    verbose: bool = False
    hub_timeout: float = Field(60.0, ge=0)
    llama_cpp_dir: Path | None = Field(None, validation_alias=AliasChoices("QUANTMILL_LLAMA_CPP_DIR", "LLAMA_CPP_DIR"))
    workers: int = Field(4, ge=1)
    cpu_heavy_slots: int = Field(1, ge=1)
    gpus_per_variant: int = Field(1, ge=1)
    nightly_cron: str = "0 2 * * *"
    work_pool: str = "quantmill-local"

    @model_validator(mode="before")
    @classmethod
    def _shared_store_from_url(cls, values: Any) -> Any:
        """``QUANTMILL_RUNS_DIR=<url>`` makes the store shared, with its mirror as ``runs_dir``.

        ``shared_store`` is derived here only (an environment variable of that name is ignored), so
        there is one setting that says where the store is.
        """
        if not isinstance(values, dict):
            return values
        values = {k: v for k, v in values.items() if k != "shared_store"}
        runs = values.get("runs_dir")
        if isinstance(runs, str) and is_store_url(runs):
            url = runs.rstrip("/")
            cache_dir = Path(values.get("cache_dir") or cls.model_fields["cache_dir"].default)
            values["shared_store"] = url
            # the same URL on two endpoints (a local MinIO, AWS) is two stores: their mirrors must not mix
            where = [url, os.environ.get("AWS_ENDPOINT_URL", ""), str(values.get("store_options") or "")]
            values["runs_dir"] = cache_dir / "stores" / hashlib.sha256("\n".join(where).encode()).hexdigest()[:16]
        return values


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_store_url(value: str) -> bool:
    """Whether a ``QUANTMILL_RUNS_DIR`` value names a shared store (``scheme://…``) rather than a folder."""
    return bool(_URL.match(value))


@cache
def get_settings() -> Settings:
    """The settings from the environment (raises QuantmillError naming an invalid variable)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"QUANTMILL_{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        raise QuantmillError(f"invalid environment setting: {problems}") from None
