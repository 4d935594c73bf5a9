"""AWQ through llm-compressor's ``AWQModifier`` (AutoAWQ was adopted by llm-compressor)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods._llmcompressor import (
    COMPRESSED_TENSORS,
    EXTRA,
    IGNORE,
    PACKAGES,
    compress,
    linear_only_findings,
    weight_scheme,
)
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits


class AWQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[4] = Field(4, description="AWQ here supports 4-bit weights only")
    group_size: int = Field(128, ge=-1)
    symmetric: bool = False


def quantize(params: AWQParams, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier

    scheme = weight_scheme(params.bits, params.group_size, params.symmetric)
    # AWQ searches per-channel scales against this scheme, then the weights are quantized with it.
    modifiers = [
        AWQModifier(config_groups=scheme, ignore=IGNORE),
        QuantizationModifier(config_groups=scheme, ignore=IGNORE),
    ]
    calibration = ctx.require_calibration("awq")
    return compress(ctx, modifiers, calibration=calibration, pipeline="sequential")


SPEC = MethodSpec(
    name="awq",
    params=AWQParams,
    summary="activation-aware 4-bit weights (llm-compressor), calibrated",
    output_format=COMPRESSED_TENSORS,
    extra=EXTRA,
    packages=PACKAGES,
    quantize=quantize,
    needs_calibration=lambda p: True,
    variant_id=lambda p: f"awq-w{p.bits}-g{p.group_size if p.group_size > 0 else 'ch'}",
    bits_per_weight=lambda p: p.bits + scale_bits(p.group_size, 32),
    check=lambda p, shape, device: linear_only_findings(shape) + group_size_findings(p.group_size, shape),
)
