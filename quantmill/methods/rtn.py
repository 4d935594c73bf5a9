"""Plain round-to-nearest through compressed-tensors: the baseline for GPTQ and AWQ."""

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
from quantmill.methods.layers import (
    LayerBits,
    linear_bits_per_weight,
    linear_layer_findings,
    linear_precision_rows,
    mix_suffix,
)
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits


class RTNParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("layer_bits",)

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(128, ge=-1, description="weights per scale; -1 for per-channel")
    symmetric: bool = True
    layer_bits: LayerBits = Field(
        (),
        json_schema_extra={"default": {}},  # stored as pairs, written as a mapping
        description="per-layer bits: linear module name (model.layers.0.mlp.down_proj) → bits; the rest get 'bits'",
    )


def quantize(params: RTNParams, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.quantization import QuantizationModifier

    modifier = QuantizationModifier(
        config_groups=weight_scheme(params.bits, params.group_size, params.symmetric, params.layer_bits), ignore=IGNORE
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
    variant_id=lambda p: f"rtn-w{p.bits}-g{p.group_size if p.group_size > 0 else 'ch'}{mix_suffix(p.layer_bits)}",
    bits_per_weight=lambda p: p.bits + scale_bits(p.group_size),
    check=lambda p, shape, device: (
        linear_only_findings(shape)
        + group_size_findings(p.group_size, shape)
        + linear_layer_findings(p.layer_bits, shape)
    ),
    layer_bits_per_weight=lambda p, shape: linear_bits_per_weight(
        p.layer_bits, shape, p.bits, lambda bits: bits + scale_bits(p.group_size)
    ),
    layer_precision=lambda p, details: linear_precision_rows(p.layer_bits, p.bits, p.group_size),
)
