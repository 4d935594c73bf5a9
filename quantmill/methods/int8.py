"""INT8 weights and activations (W8A8) through llm-compressor, SmoothQuant optional."""

from __future__ import annotations

from pydantic import Field

from quantmill.methods.spec import MethodParams, MethodSpec


class Int8Params(MethodParams):
    smoothquant: bool = Field(False, description="migrate activation outliers into weights first")
    smoothing_strength: float = Field(0.8, gt=0, le=1)


SPEC = MethodSpec(
    name="int8",
    params=Int8Params,
    summary="W8A8 INT8 (llm-compressor), optional SmoothQuant",
    output_format="compressed-tensors",
    extra="llmcompressor",
    requires_calibration=True,
    variant_id=lambda p: "int8-w8a8" + ("-sq" if p.smoothquant else ""),
    bits_per_weight=lambda p: 8 + 32 / 256,
)
