"""Quantize one variant: run its method into a staging folder, record provenance, publish atomically.

The output folder appears only when complete: the method writes into
``.<id>.partial``, then ``quantmill.json`` and the ``COMPLETE`` marker are written,
and the folder is renamed into place. A crash leaves at most a partial folder,
which the next attempt removes.

With a shared store (``quantmill.sharedstore``) the lock that stops two processes making one
variant is also a lease in the store, which stops two machines; whoever gets it first looks for
the finished folder in the store, and a folder made here is pushed to the store (``COMPLETE``
last). A folder recorded by another machine is fetched when it is read (:func:`read_artifact`).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantmill import __version__
from quantmill.calibration import CalibrationSet
from quantmill.errors import MissingDependencyError, QuantizationError, QuantmillError
from quantmill.measure import measure
from quantmill.methods.base import COMMON_PACKAGES, QuantizeContext, package_version
from quantmill.modelinfo import TOKENIZER_FILES, read_model_shape, unquantized_linear_layers
from quantmill.recipe.matrix import Variant
from quantmill.runstore import COMPLETE_MARKER, atomic_write_json, exclusive_lock, read_json
from quantmill.sharedstore import configured, store_holding

log = logging.getLogger(__name__)

PROVENANCE_FILE = "quantmill.json"


@dataclass(frozen=True)
class QuantizedArtifact:
    """A finished variant folder and what it took to make it."""

    variant_id: str
    path: Path
    output_format: str
    size_bytes: int
    seconds: float
    peak_rss_bytes: int
    provenance: dict[str, Any]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _versions(*names: str) -> dict[str, str | None]:
    return {name: package_version(name) for name in names}


def local_artifact_path(path: Path) -> Path:
    """Where a recorded artifact folder is on this machine: in this machine's mirror of the shared store
    when another machine made it (not fetched: :func:`read_artifact` fetches it); else ``path``."""
    store = configured()
    return store.localize(path) if store is not None else path


def read_artifact(path: Path) -> QuantizedArtifact:
    """The artifact of a completed variant folder (raises if it is not complete); a folder only the shared
    store has complete is fetched first (``path`` may be where another machine had it)."""
    store = configured()
    if store is not None and not (path / COMPLETE_MARKER).is_file():
        path = store.fetch_artifact(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise QuantizationError(f"{path} is not a completed variant folder (no {COMPLETE_MARKER} marker)")
    provenance = read_json(path / PROVENANCE_FILE)
    return QuantizedArtifact(
        variant_id=provenance["variant"],
        path=path,
        output_format=provenance["output_format"],
        size_bytes=provenance["size_bytes"],
        seconds=provenance["seconds"],
        peak_rss_bytes=provenance["peak_rss_bytes"],
        provenance=provenance,
    )


def quantize_variant(
    variant: Variant,
    *,
    source_dir: Path,
    out_dir: Path,
    calibration: CalibrationSet | None,
    dtype: str = "auto",
    device: str = "cpu",
    tokenizer_dir: Path | None = None,
    source: dict[str, Any] | None = None,
    shared_dir: Path | None = None,
    recipe_dir: Path | None = None,
    trust_remote_code: bool = False,
) -> QuantizedArtifact:
    """Quantize ``variant`` of the model in ``source_dir`` into ``out_dir`` with its method's ``quantize``.

    Args:
        variant: the variant to make.
        source_dir: the baseline model folder.
        out_dir: the final folder; replaced if it exists without a ``COMPLETE`` marker, reused if
            another process completed it while this one waited for the lock.
        calibration: tokenized calibration samples (None when the recipe has none).
        dtype: load dtype of the baseline.
        device: ``cpu`` or ``cuda[:N]``.
        tokenizer_dir: the tokenizer's folder, if not the model's.
        source: description of the baseline for the provenance (id, revision).
        shared_dir: scratch shared by the recipe's variants (default: beside ``out_dir``).
        recipe_dir: the recipe's folder, for relative data paths in method parameters.
        trust_remote_code: let transformers run the model's own code (see ``QuantizeContext``).

    Returns:
        the completed artifact.

    Raises:
        MissingDependencyError: a backend package of the method is not installed (names the pip extra).
        QuantizationError: the method failed or refused; nothing is left at ``out_dir``.
    """
    spec = variant.spec
    if spec.quantize is None:
        raise QuantizationError(f"{variant.id}: method '{spec.name}' cannot quantize in quantmill {__version__} yet")
    missing = spec.missing_packages()
    if missing:
        raise MissingDependencyError(missing[0], spec.extra, f"{variant.id} ({spec.name})")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    shared = store_holding(out_dir)
    with contextlib.ExitStack() as locked:
        locked.enter_context(exclusive_lock(out_dir.with_name(f".{out_dir.name}.lock")))
        lease = locked.enter_context(shared.lease(out_dir, f"artifact {out_dir.name}")) if shared else None
        if shared is not None:
            shared.fetch_artifact(out_dir)  # another machine may have finished it
        if (out_dir / COMPLETE_MARKER).is_file():
            if shared is not None and lease is not None and not shared.has_artifact(out_dir):
                shared.push_artifact(out_dir, before_marker=lease.check)  # made here; its push had failed
            return read_artifact(out_dir)  # another process made exactly this while we waited
        staging = out_dir.with_name(f".{out_dir.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)  # an earlier attempt that never completed
        staging.mkdir(parents=True)
        ctx = QuantizeContext(
            source_dir=source_dir,
            out_dir=staging,
            calibration=calibration,
            dtype=dtype,
            device=device,
            tokenizer_dir=tokenizer_dir or source_dir,
            shared_dir=shared_dir or out_dir.parent / ".shared",
            source_revision=(source or {}).get("revision") or str(source_dir),
            recipe_dir=recipe_dir,
            trust_remote_code=trust_remote_code,
        )
        log.info("quantizing %s with %s", variant.id, spec.name)
        try:
            with measure() as cost:
                details = spec.quantize(variant.params, ctx)
            if spec.output_format.has_tokenizer and not any((staging / n).exists() for n in TOKENIZER_FILES):
                ctx.load_tokenizer().save_pretrained(staging)
            _require_quantized_layers(variant, source_dir, staging)
        except QuantmillError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:  # backend errors become a failed variant with the cause attached
            shutil.rmtree(staging, ignore_errors=True)
            raise QuantizationError(f"{variant.id}: {spec.name} failed: {type(exc).__name__}: {exc}") from exc

        provenance = {
            "variant": variant.id,
            "method": spec.name,
            "parameters": variant.params.model_dump(mode="json"),
            "output_format": spec.output_format.name,
            "source": source or {"path": str(source_dir)},
            "calibration": None if calibration is None else _describe(calibration),
            "seconds": round(cost.seconds, 3),
            "peak_rss_bytes": cost.peak_rss_bytes,
            "peak_cuda_bytes": cost.peak_cuda_bytes,
            "size_bytes": folder_bytes(staging),
            "device": device,
            "created": datetime.now(UTC).isoformat(),
            "versions": {
                "quantmill": __version__,
                "python": platform.python_version(),
                **_versions(*COMMON_PACKAGES, *spec.packages),
            },
            "details": details,
        }
        atomic_write_json(staging / PROVENANCE_FILE, provenance)
        atomic_write_json(staging / COMPLETE_MARKER, {"variant": variant.id})
        staging.rename(out_dir)
        if shared is not None and lease is not None:
            shared.push_artifact(out_dir, before_marker=lease.check)
    return read_artifact(out_dir)


def _require_quantized_layers(variant: Variant, source_dir: Path, staging: Path) -> None:
    """Refuse an output whose every decoder linear layer is still a plain float weight: the backend skipped
    layers it does not handle (``Conv1D``, an unknown layout) and saving it would publish the baseline
    under a quantized variant's name. Formats without safetensors (GGUF, hqq's own) are not read here."""
    found = unquantized_linear_layers(staging)
    if found is None:
        return
    plain, layers = found
    if layers and len(plain) == layers:
        raise QuantizationError(
            f"{variant.id}: {variant.spec.name} quantized none of the {layers} linear layers of "
            f"{_architecture(source_dir)} (e.g. {plain[0]}): it does not handle this architecture's layers"
        )


def _architecture(model_dir: Path) -> str:
    try:
        shape = read_model_shape(model_dir)
    except ValueError:
        return "this model"
    return (shape.architecture or shape.model_type or "this model") if shape else "this model"


def _describe(calibration: CalibrationSet) -> dict[str, Any]:
    return {
        "source": calibration.source,
        "fingerprint": calibration.fingerprint,
        "samples": len(calibration.input_ids),
        "tokens": calibration.num_tokens,
    }
