"""HQQ (half-quadratic quantization), calibration-free; saved in hqq's native format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.base import QuantizeContext, package_version, require
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings


class HQQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[1, 2, 3, 4, 8] = 4
    group_size: int = Field(64, gt=0)


def quantize(params: HQQParams, ctx: QuantizeContext) -> dict:
    require("hqq", "hqq", "hqq", "HQQ quantization")
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = ctx.load_model()
    AutoHQQHFModel.quantize_model(
        model,
        quant_config=BaseQuantizeConfig(nbits=params.bits, group_size=params.group_size),
        compute_dtype=model.dtype,
        device=ctx.device,
    )
    AutoHQQHFModel.save_quantized(model, str(ctx.out_dir))
    return {
        "backend": "hqq",
        "backend_version": package_version("hqq"),
        # transformers 5 has no HQQ loader: the folder is hqq's native format.
        "reloadable_with_transformers": False,
        "loader": "hqq.models.hf.base.AutoHQQHFModel.from_quantized",
    }


def load(path: Path, device: str):
    """hqq's own loader: transformers 5 cannot read HQQ checkpoints."""
    from hqq.models.hf.base import AutoHQQHFModel

    config = json.loads((path / "config.json").read_text())
    dtype = getattr(__import__("torch"), config.get("dtype") or config.get("torch_dtype") or "float32")
    return AutoHQQHFModel.from_quantized(str(path), device=device, compute_dtype=dtype)


SPEC = MethodSpec(
    name="hqq",
    params=HQQParams,
    summary="HQQ 1-8 bit weights, no calibration (native hqq format)",
    output_format="hqq",
    extra="hqq",
    quantize=quantize,
    load=load,
    variant_id=lambda p: f"hqq-w{p.bits}-g{p.group_size}",
    bits_per_weight=lambda p: p.bits + 32 / p.group_size,
    check=lambda p, shape, device: group_size_findings(p.group_size, shape),
)
