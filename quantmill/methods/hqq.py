"""HQQ (half-quadratic quantization), calibration-free; saved in hqq's native format."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings


class HQQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[1, 2, 3, 4, 8] = 4
    group_size: int = Field(64, gt=0)


SPEC = MethodSpec(
    name="hqq",
    params=HQQParams,
    summary="HQQ 1-8 bit weights, no calibration (native hqq format)",
    output_format="hqq",
    extra="hqq",
    requires_calibration=False,
    variant_id=lambda p: f"hqq-w{p.bits}-g{p.group_size}",
    bits_per_weight=lambda p: p.bits + 32 / p.group_size,
    check=lambda p, shape: group_size_findings(p.group_size, shape),
)
