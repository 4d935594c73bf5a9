"""Cache keys: a hash of everything that determines a step's output.

A key changes when the model revision, the variant's resolved parameters, the
calibration data, the evaluation settings, or the versions of quantmill and the
backend libraries (the common ones and those the method's spec declares) change;
nothing else invalidates a cached result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from quantmill import __version__
from quantmill.evaluation.servable import greedy_spec
from quantmill.methods.base import COMMON_PACKAGES, package_version
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import Evaluation

_EVAL_PACKAGES = ("lm_eval",)


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """quantmill's version and those of the common libraries and ``packages``."""
    return {"quantmill": __version__, **{p: package_version(p) for p in COMMON_PACKAGES + packages}}


def backend_packages() -> tuple[str, ...]:
    """Every registered method's backend packages (plug-ins included), sorted."""
    from quantmill.registry import get_method, method_names

    return tuple(sorted({p for name in method_names() for p in get_method(name).packages}))


def device_kind(device: str) -> str:
    """Results depend on the kind of device, not on which GPU index ran them."""
    return device.split(":")[0]


def step_device(variant: Variant, device: str) -> str:
    """Where a variant's steps compute: on a CUDA run, a method that uses no GPU (GGUF) runs on the CPU
    (``pipeline.SlotPolicy.for_step``), and what it measures (speed above all) is the CPU's."""
    return device if variant.spec.uses_gpu else "cpu"


def _with_remote_code(parts: dict[str, Any], remote_code: bool) -> dict[str, Any]:
    """The model's own code can change what it computes; keys made without it stay as they were."""
    return {**parts, "remote_code": True} if remote_code else parts


def quantize_key(
    revision: str,
    variant: Variant,
    calibration_fingerprint: str | None,
    dtype: str,
    device: str,
    *,
    remote_code: bool = False,
) -> str:
    uses_calibration = variant.spec.needs_calibration(variant.params)
    parts = {
        "step": "quantize",
        "revision": revision,
        "method": variant.method,
        "params": variant.params.model_dump(mode="json"),
        "calibration": calibration_fingerprint if uses_calibration else None,
        "dtype": dtype,
        "device": device_kind(device),
        "versions": versions(variant.spec.packages),
    }
    return _digest(_with_remote_code(parts, remote_code))


def baseline_key(
    revision: str, evaluation: Evaluation, dtype: str, device: str, data_fingerprint: str, *, remote_code: bool = False
) -> str:
    parts = {
        "step": "baseline",
        "revision": revision,
        "evaluation": evaluation.model_dump(mode="json"),
        "data": data_fingerprint,
        "dtype": dtype,
        "device": device_kind(device),
        "versions": versions(_EVAL_PACKAGES),
        "greedy": greedy_spec(),  # the servable check's prompts: the baseline keeps its generations for them
    }
    return _digest(_with_remote_code(parts, remote_code))


def evaluation_key(quantized: str, variant: Variant, evaluation: Evaluation, device: str, data_fingerprint: str) -> str:
    return _digest(
        {
            "step": "evaluate",
            "quantized": quantized,
            "evaluation": evaluation.model_dump(mode="json"),
            "data": data_fingerprint,
            "device": device_kind(device),
            "versions": versions(_EVAL_PACKAGES + variant.spec.packages),
        }
    )


def servable_key(evaluation: str, baseline: str, repo_id: str) -> str:
    """The servable check: the variant's evaluation (its files, the runtime's versions), the baseline (its greedy
    tokens) and the repo id the card's snippet names."""
    return _digest({"step": "servable", "evaluation": evaluation, "baseline": baseline, "repo_id": repo_id})


def evaluation_data_fingerprint(loaded) -> str:
    """Hash of the local evaluation inputs: task folders and the perplexity corpus."""
    from quantmill.filehash import sha256_of
    from quantmill.resolve import content_hash

    evaluation = loaded.recipe.evaluation
    parts = {path: content_hash(loaded.resolve(path)) for path in evaluation.include_paths}
    if evaluation.perplexity is not None and evaluation.perplexity.dataset.path is not None:
        # read once while unchanged: a corpus may be large, and every rerun computes this key
        parts["perplexity"] = sha256_of(loaded.resolve(evaluation.perplexity.dataset.path))
    return _digest(parts)
