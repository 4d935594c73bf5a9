"""The nightly zoo flow: run every recipe in a folder whose inputs changed since its last run.

A recipe is re-run only when its text, the upstream model revision, or the
versions of quantmill and its backends changed; otherwise it is recorded as
``unchanged`` in seconds. One bad recipe never stops the others. Its error is masked
(:func:`quantmill.redact.redact`) before it is logged or returned: the outcome is the
flow's result, stored by Prefect.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from quantmill import cachekeys
from quantmill.errors import QuantmillError
from quantmill.flows.recipe import quantize_evaluate_publish, record_of
from quantmill.pipeline import latest_completed
from quantmill.recipe import load_recipe
from quantmill.record import VariantStatus
from quantmill.redact import redact
from quantmill.runstore import Run, RunStore
from quantmill.settings import get_settings
from quantmill.tasks.steps import resolve_model_task


def inputs_fingerprint(recipe_text: str, revision: str) -> str:
    versions = cachekeys.versions(cachekeys.backend_packages())
    return hashlib.sha256(json.dumps([recipe_text, revision, versions], sort_keys=True).encode()).hexdigest()


def last_fingerprint(store: RunStore, recipe: str) -> str | None:
    """The inputs fingerprint of the recipe's latest completed run."""
    previous = latest_completed(store, recipe)
    return previous.inputs_fingerprint if previous else None


@flow(name="quantmill-zoo")
def zoo(
    recipes_dir: str, runs_dir: str | None = None, publish: bool = True, skip_scheduled: bool = False
) -> dict[str, Any]:
    """Run each recipe in ``recipes_dir`` whose inputs changed; returns ``{recipe file: outcome}``.

    ``skip_scheduled`` leaves out recipes with their own ``schedule:`` (they have
    their own deployment).
    """
    logger = get_run_logger()
    store = RunStore(Path(runs_dir) if runs_dir else get_settings().runs_dir)
    outcomes: dict[str, Any] = {}
    for path in sorted(Path(recipes_dir).glob("*.yaml")):
        try:
            loaded = load_recipe(path)
            resolved = resolve_model_task(loaded)
        except QuantmillError as exc:
            error = redact(str(exc))
            logger.error("%s: %s", path.name, error)
            outcomes[path.name] = {"status": "invalid", "error": error}
            continue
        if skip_scheduled and loaded.recipe.schedule:
            outcomes[path.name] = {"status": "scheduled separately", "schedule": loaded.recipe.schedule}
            continue
        fingerprint = inputs_fingerprint(loaded.text, resolved.revision)
        if fingerprint == last_fingerprint(store, loaded.name):
            logger.info("%s: unchanged since its last run", path.name)
            outcomes[path.name] = {"status": "unchanged"}
            continue
        ran = record_of(  # a recipe whose run failed (its flow run is Failed) does not stop the others
            quantize_evaluate_publish(
                str(path), runs_dir=str(store.root), publish=publish, inputs_fingerprint=fingerprint, return_state=True
            )
        )
        record = Run(Path(ran["run_path"])).read_record()
        failed = sorted(v for v, e in record.variants.items() if e.status != VariantStatus.PASSED)
        outcomes[path.name] = {"status": "ran", "run": record.run_id, "failed": failed}
    return outcomes
