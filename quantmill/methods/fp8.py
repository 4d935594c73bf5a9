"""FP8 weights and activations through llm-compressor (dynamic or static scales)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.spec import MethodParams, MethodSpec


class FP8Params(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("scheme",)

    scheme: Literal["dynamic", "static"] = Field("dynamic", description="static needs calibration data")


SPEC = MethodSpec(
    name="fp8",
    params=FP8Params,
    summary="FP8 W8A8 (llm-compressor), dynamic or static activation scales",
    output_format="compressed-tensors",
    extra="llmcompressor",
    requires_calibration=False,
    variant_id=lambda p: f"fp8-{p.scheme}",
    bits_per_weight=lambda p: 8 + 32 / 256,
)
