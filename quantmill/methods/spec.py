"""What a quantization method declares about itself, without importing its backend.

A method file (``quantmill/methods/gptq.py`` …) defines a pydantic parameter model
and a :class:`MethodSpec`. Validation, planning and the JSON Schema read only the
spec, so ``quantmill validate`` never imports torch or the method's library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from quantmill.methods.base import QuantizeContext
    from quantmill.modelinfo import ModelShape


class MethodParams(BaseModel):
    """Base of every method's parameters: strict, immutable, hashable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: fields a matrix row may give as a list, expanded into one variant per value
    axes: ClassVar[tuple[str, ...]] = ()


@dataclass(frozen=True)
class Finding:
    """A method rule broken by a variant: which parameter, what, and what would do."""

    field: str
    message: str
    hint: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """A method's declaration.

    Attributes:
        name: the recipe's ``method:`` value.
        params: the pydantic model of the method's parameters.
        summary: one line for ``quantmill init`` and the docs.
        output_format: what the output is (``compressed-tensors``, ``gguf``, …); a model-card tag.
        extra: the pip extra that installs the backend.
        variant_id: builds the stable id of one expanded variant.
        bits_per_weight: nominal bits per quantized weight, for the plan's size estimate.
        quantize: ``quantize(params, ctx) -> details``; writes the model into ``ctx.out_dir``.
        needs_calibration: whether a variant with these parameters needs calibration data.
        check: method rules that need the model's shape or the recipe's device (group sizes …).
        quantizes_embeddings: whether embeddings are quantized too (GGUF), for size estimates.
        uses_gpu: whether the method benefits from a GPU (takes a ``gpu`` slot in flows).
        load: ``load(folder, device)`` for outputs transformers cannot load (None: ``from_pretrained``).
    """

    name: str
    params: type[MethodParams]
    summary: str
    output_format: str
    extra: str
    variant_id: Callable[[Any], str]
    bits_per_weight: Callable[[Any], float]
    quantize: Callable[[Any, QuantizeContext], dict[str, Any]] | None
    needs_calibration: Callable[[Any], bool] = field(default=lambda params: False)
    check: Callable[[Any, ModelShape | None, str], list[Finding]] = field(default=lambda params, shape, device: [])
    quantizes_embeddings: bool = False
    uses_gpu: bool = True
    load: Callable[[Path, str], Any] | None = None


def group_size_findings(group_size: int | None, shape: ModelShape | None) -> list[Finding]:
    """Every linear layer's in-features must be a multiple of the group size."""
    if group_size is None or group_size <= 0 or shape is None:
        return []
    bad = {layer: size for layer, size in shape.linear_in_features.items() if size % group_size}
    if not bad:
        return []
    layers = ", ".join(f"{layer} ({size})" for layer, size in sorted(bad.items()))
    valid = shape.valid_group_sizes()
    return [
        Finding(
            "group_size",
            f"group size {group_size} does not divide the in-features of {layers}",
            f"valid group sizes for this model: {', '.join(map(str, valid)) or 'none'}, or -1 for per-channel",
        )
    ]
