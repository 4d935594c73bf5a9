"""FP8 weights and activations through llm-compressor (dynamic or static scales)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods._llmcompressor import COMPRESSED_TENSORS, EXTRA, IGNORE, PACKAGES, compress, linear_only_findings
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec


class FP8Params(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["dynamic", "static"] = Field("dynamic", description="static needs calibration data")


def quantize(params: FP8Params, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if params.scheme == "dynamic":
        modifier = QuantizationModifier(targets="Linear", scheme="FP8_DYNAMIC", ignore=IGNORE)
        return compress(ctx, [modifier], calibration=None, pipeline="datafree")
    modifier = QuantizationModifier(targets="Linear", scheme="FP8", ignore=IGNORE)
    return compress(ctx, [modifier], calibration=ctx.require_calibration("fp8 static"), pipeline="sequential")


SPEC = MethodSpec(
    name="fp8",
    params=FP8Params,
    summary="FP8 W8A8 (llm-compressor), dynamic or static activation scales",
    output_format=COMPRESSED_TENSORS,
    extra=EXTRA,
    packages=PACKAGES,
    quantize=quantize,
    needs_calibration=lambda p: p.scheme == "static",
    variant_id=lambda p: f"fp8-{p.scheme}",
    bits_per_weight=lambda p: 8 + 32 / 256,
    check=lambda p, shape, device: linear_only_findings(shape),
)
