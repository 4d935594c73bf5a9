"""bitsandbytes NF4 / FP4 / INT8 through transformers' ``BitsAndBytesConfig``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.spec import MethodParams, MethodSpec


class BnbParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("type",)

    type: Literal["nf4", "fp4", "int8"] = Field("nf4", description="bitsandbytes has no 2- or 3-bit type")
    double_quant: bool = Field(True, description="quantize the 4-bit scales too")
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


SPEC = MethodSpec(
    name="bnb",
    params=BnbParams,
    summary="bitsandbytes NF4/FP4/INT8, no calibration",
    output_format="bitsandbytes",
    extra="bnb",
    requires_calibration=False,
    variant_id=lambda p: f"bnb-{p.type}",
    bits_per_weight=lambda p: 8.0 if p.type == "int8" else (4.127 if p.double_quant else 4.5),
)
