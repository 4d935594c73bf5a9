"""INT8 weights and activations (W8A8) through llm-compressor, SmoothQuant optional."""

from __future__ import annotations

from pydantic import Field

from quantmill.methods._llmcompressor import COMPRESSED_TENSORS, EXTRA, IGNORE, PACKAGES, compress, linear_only_findings
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec


class Int8Params(MethodParams):
    smoothquant: bool = Field(False, description="migrate activation outliers into weights first")
    smoothing_strength: float = Field(0.8, gt=0, le=1)


def quantize(params: Int8Params, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifiers: list = []
    if params.smoothquant:
        from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier

        modifiers.append(SmoothQuantModifier(smoothing_strength=params.smoothing_strength))
    # W8A8: int8 per-channel weights, int8 per-token dynamic activations.
    modifiers.append(QuantizationModifier(targets="Linear", scheme="W8A8", ignore=IGNORE))
    calibration = ctx.require_calibration("int8 with smoothquant") if params.smoothquant else None
    return compress(ctx, modifiers, calibration=calibration, pipeline="sequential" if calibration else "datafree")


SPEC = MethodSpec(
    name="int8",
    params=Int8Params,
    summary="W8A8 INT8 (llm-compressor), optional SmoothQuant",
    output_format=COMPRESSED_TENSORS,
    extra=EXTRA,
    packages=PACKAGES,
    quantize=quantize,
    needs_calibration=lambda p: p.smoothquant,
    variant_id=lambda p: "int8-w8a8" + ("-sq" if p.smoothquant else ""),
    bits_per_weight=lambda p: 8 + 32 / 256,
    check=lambda p, shape, device: linear_only_findings(shape),
)
