"""GPTQ through llm-compressor's ``GPTQModifier`` (compressed-tensors output).

auto-gptq is end-of-life and does not import with transformers 5; llm-compressor
is the maintained GPTQ implementation (see README).
"""

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


class GPTQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")
    omitted_when_empty: ClassVar[tuple[str, ...]] = ("layer_bits",)

    bits: Literal[2, 3, 4, 8] = Field(4, description="weight bits")
    group_size: int = Field(128, description="weights per scale; -1 for per-channel", ge=-1)
    symmetric: bool = True
    act_order: bool = Field(False, description="quantize columns in order of decreasing activation")
    dampening: float = Field(0.01, gt=0, lt=1, description="fraction of the Hessian diagonal added for stability")
    block_size: int = Field(128, gt=0)
    layer_bits: LayerBits = Field(
        (),
        json_schema_extra={"default": {}},  # stored as pairs, written as a mapping
        description="per-layer bits: linear module name (model.layers.0.mlp.down_proj) → bits; the rest get 'bits'",
    )


def quantize(params: GPTQParams, ctx: QuantizeContext) -> dict:
    from llmcompressor.modifiers.quantization import GPTQModifier

    modifier = GPTQModifier(
        config_groups=weight_scheme(params.bits, params.group_size, params.symmetric, params.layer_bits),
        ignore=IGNORE,
        dampening_frac=params.dampening,
        block_size=params.block_size,
        # "weight" orders columns by activation size without regrouping (llm-compressor's supported choice).
        actorder="weight" if params.act_order else "static",
    )
    calibration = ctx.require_calibration("gptq")
    return compress(ctx, [modifier], calibration=calibration, pipeline="sequential")


SPEC = MethodSpec(
    name="gptq",
    params=GPTQParams,
    summary="GPTQ (llm-compressor), 2/3/4/8-bit weights, calibrated",
    output_format=COMPRESSED_TENSORS,
    extra=EXTRA,
    packages=PACKAGES,
    quantize=quantize,
    needs_calibration=lambda p: True,
    variant_id=lambda p: f"gptq-w{p.bits}-g{p.group_size if p.group_size > 0 else 'ch'}{mix_suffix(p.layer_bits)}",
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
