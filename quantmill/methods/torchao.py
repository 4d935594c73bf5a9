"""torchao post-training quantization through transformers' ``TorchAoConfig``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.errors import QuantizationError
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.spec import (
    Finding,
    MethodParams,
    MethodSpec,
    conv1d_findings,
    group_size_findings,
    scale_bits,
)

#: torchao checkpoints load with transformers' ``TorchAoConfig``; QAT writes the same format.
TORCHAO = TransformersFormat("torchao")


class TorchAoParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["int8-weight-only", "int8-dynamic-intx", "int4-weight-only"] = "int8-weight-only"
    weight_bits: int = Field(4, ge=1, le=8, description="weight bits for int8-dynamic-intx")
    group_size: int = Field(32, ge=-1)


def _check(p: TorchAoParams, shape, device: str) -> list[Finding]:
    findings = conv1d_findings(shape, "torchao")
    findings += group_size_findings(p.group_size, shape) if p.scheme != "int8-weight-only" else []
    if p.scheme == "int4-weight-only" and device == "cpu":
        findings.append(
            Finding(
                "scheme",
                "torchao int4-weight-only has no CPU kernel, and this recipe runs on the CPU",
                "use scheme 'int8-dynamic-intx' with weight_bits: 4 on CPU, or run on CUDA",
            )
        )
    return findings


def _bits_per_weight(p: TorchAoParams) -> float:
    if p.scheme == "int8-weight-only":
        return 8.0
    bits = 4 if p.scheme == "int4-weight-only" else p.weight_bits
    return bits + scale_bits(p.group_size)


def quantize(params: TorchAoParams, ctx: QuantizeContext) -> dict:
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationIntxWeightConfig, Int8WeightOnlyConfig
    from torchao.quantization.granularity import PerAxis, PerGroup
    from transformers import TorchAoConfig

    if params.scheme == "int4-weight-only" and not (ctx.on_cuda and torch.cuda.is_available()):
        raise QuantizationError(
            "torchao int4-weight-only has no CPU kernel; use scheme 'int8-dynamic-intx' with weight_bits: 4 "
            "on CPU, or run this variant on CUDA"
        )
    if params.scheme == "int8-weight-only":
        config = Int8WeightOnlyConfig()
    elif params.scheme == "int4-weight-only":
        config = Int4WeightOnlyConfig(group_size=params.group_size)
    else:
        granularity = PerGroup(params.group_size) if params.group_size > 0 else PerAxis(0)
        config = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=getattr(torch, f"int{params.weight_bits}"), weight_granularity=granularity
        )
    model = ctx.load_model(quantization_config=TorchAoConfig(quant_type=config), **ctx.placement())
    model.save_pretrained(ctx.out_dir, safe_serialization=True)
    return {"backend": "torchao", "backend_version": package_version("torchao"), "reloadable_with_transformers": True}


SPEC = MethodSpec(
    name="torchao",
    params=TorchAoParams,
    summary="torchao int8 weight-only or int8-activation/intx-weight",
    output_format=TORCHAO,
    extra="torchao",
    packages=("torchao",),
    quantize=quantize,
    variant_id=lambda p: {
        "int8-weight-only": "torchao-int8wo",
        "int8-dynamic-intx": f"torchao-int8da-w{p.weight_bits}-g{p.group_size}",
        "int4-weight-only": f"torchao-int4wo-g{p.group_size}",
    }[p.scheme],
    bits_per_weight=_bits_per_weight,
    check=_check,
)
