"""Plain round-to-nearest through compressed-tensors: the baseline for GPTQ and AWQ."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods._llmcompressor import COMPRESSED_TENSORS, EXTRA, IGNORE, PACKAGES, compress, weight_scheme
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits


class RTNParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(128, ge=-1, description="weights per scale; -1 for per-channel")
    symmetric: bool = True


def quantize(params: RTNParams, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(
        config_groups=weight_scheme(params.bits, params.group_size, params.symmetric), ignore=IGNORE
    )
    return compress(ctx, [modifier], calibration=None, pipeline="datafree")


SPEC = MethodSpec(
    name="rtn",
    params=RTNParams,
    summary="round-to-nearest weights (compressed-tensors), no calibration",
    output_format=COMPRESSED_TENSORS,
    extra=EXTRA,
    packages=PACKAGES,
    quantize=quantize,
    variant_id=lambda p: f"rtn-w{p.bits}-g{p.group_size if p.group_size > 0 else 'ch'}",
    bits_per_weight=lambda p: p.bits + scale_bits(p.group_size),
    check=lambda p, shape, device: group_size_findings(p.group_size, shape),
)
