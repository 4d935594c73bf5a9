"""torchao post-training quantization through transformers' ``TorchAoConfig``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.spec import Finding, MethodParams, MethodSpec, group_size_findings


class TorchAoParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["int8-weight-only", "int8-dynamic-intx", "int4-weight-only"] = "int8-weight-only"
    weight_bits: int = Field(4, ge=1, le=8, description="weight bits for int8-dynamic-intx")
    group_size: int = Field(32, ge=-1)


def _check(p: TorchAoParams, shape) -> list[Finding]:
    findings = group_size_findings(p.group_size, shape) if p.scheme != "int8-weight-only" else []
    if p.scheme == "int4-weight-only":
        findings.append(
            Finding(
                "scheme",
                "torchao int4-weight-only has no CPU kernel and cannot run on a CPU-only host",
                "use scheme 'int8-dynamic-intx' with weight_bits: 4 on CPU, or run on CUDA",
            )
        )
    return findings


SPEC = MethodSpec(
    name="torchao",
    params=TorchAoParams,
    summary="torchao int8 weight-only or int8-activation/intx-weight",
    output_format="torchao",
    extra="torchao",
    requires_calibration=False,
    variant_id=lambda p: {
        "int8-weight-only": "torchao-int8wo",
        "int8-dynamic-intx": f"torchao-int8da-w{p.weight_bits}-g{p.group_size}",
        "int4-weight-only": f"torchao-int4wo-g{p.group_size}",
    }[p.scheme],
    bits_per_weight=lambda p: 8.0 if p.scheme == "int8-weight-only" else p.weight_bits + 16 / max(p.group_size, 1),
    check=_check,
)
