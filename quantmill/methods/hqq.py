"""HQQ (half-quadratic quantization), calibration-free; saved in hqq's native format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits


class HQQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[1, 2, 3, 4, 8] = 4
    group_size: int = Field(64, gt=0)


def quantize(params: HQQParams, ctx: QuantizeContext) -> dict:
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


def usage(repo_id: str) -> str:
    return (
        "transformers 5 cannot load HQQ checkpoints; use hqq's loader:\n\n```python\n"
        "import torch\n"
        "from hqq.models.hf.base import AutoHQQHFModel\n"
        "from transformers import AutoTokenizer\n"
        f'model = AutoHQQHFModel.from_quantized("{repo_id}", device="cuda" if torch.cuda.is_available() else "cpu")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n```'
    )


#: hqq's native folder: loaded with hqq's own loader, for evaluation and on the card.
HQQ = TransformersFormat("hqq", library_name="hqq", load_model=load, usage_text=usage)


SPEC = MethodSpec(
    name="hqq",
    params=HQQParams,
    summary="HQQ 1-8 bit weights, no calibration (native hqq format)",
    output_format=HQQ,
    extra="hqq",
    packages=("hqq",),
    quantize=quantize,
    variant_id=lambda p: f"hqq-w{p.bits}-g{p.group_size}",
    bits_per_weight=lambda p: p.bits + scale_bits(p.group_size, 32),
    check=lambda p, shape, device: group_size_findings(p.group_size, shape),
)
