"""bitsandbytes NF4 / FP4 / INT8 through transformers' ``BitsAndBytesConfig``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.spec import MethodParams, MethodSpec


class BnbParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("type",)

    type: Literal["nf4", "fp4", "int8"] = Field("nf4", description="bitsandbytes has no 2- or 3-bit type")
    double_quant: bool = Field(True, description="quantize the 4-bit scales too")
    compute_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


def quantize(params: BnbParams, ctx: QuantizeContext) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    if params.type == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params.type,
            bnb_4bit_use_double_quant=params.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, params.compute_dtype),
        )
    device_map = {"": ctx.device} if ctx.on_cuda else None
    model = ctx.load_model(quantization_config=config, device_map=device_map)
    # Save before any forward pass: on AVX512-BF16 CPUs bitsandbytes repacks 4-bit
    # weights at the first forward, and a save after that writes the repacked layout,
    # which reloads as wrong weights.
    model.save_pretrained(ctx.out_dir)
    ctx.load_tokenizer().save_pretrained(ctx.out_dir)
    return {
        "backend": "bitsandbytes",
        "backend_version": package_version("bitsandbytes"),
        "saved_before_first_forward": True,
        "reloadable_with_transformers": True,
    }


SPEC = MethodSpec(
    name="bnb",
    params=BnbParams,
    summary="bitsandbytes NF4/FP4/INT8, no calibration",
    output_format=TransformersFormat("bitsandbytes"),
    extra="bnb",
    packages=("bitsandbytes",),
    quantize=quantize,
    variant_id=lambda p: f"bnb-{p.type}",
    bits_per_weight=lambda p: 8.0 if p.type == "int8" else (4.127 if p.double_quant else 4.5),
)
