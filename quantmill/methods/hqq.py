"""HQQ (half-quadratic quantization), calibration-free; saved in hqq's native format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from quantmill.errors import QuantizationError
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.layers import linear_layers
from quantmill.methods.spec import Finding, MethodParams, MethodSpec, conv1d_findings, group_size_findings, scale_bits

if TYPE_CHECKING:
    from quantmill.modelinfo import ModelShape


class HQQParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits", "group_size")

    bits: Literal[1, 2, 3, 4, 8] = 4
    group_size: int = Field(64, gt=0)


#: where hqq's model patcher looks for the decoder blocks (``model.model.layers``: Llama, Qwen2, Mistral, Phi-3 …)
HQQ_BLOCKS = "model.layers."


def layout_findings(shape: ModelShape | None) -> list[Finding]:
    """hqq quantizes ``nn.Linear`` layers of decoders whose blocks are ``model.layers.N``; other layouts
    (GPT-2's ``transformer.h``, GPT-NeoX's ``gpt_neox.layers``, OPT's ``model.decoder.layers``) fail inside it."""
    if shape is None:
        return []
    findings = conv1d_findings(shape, "hqq")
    layers = linear_layers(shape)
    if not findings and layers and not any(name.startswith(HQQ_BLOCKS) for name in layers):
        example = min(layers)
        findings.append(
            Finding(
                "method",
                f"hqq handles decoders whose blocks are {HQQ_BLOCKS}N; "
                f"{shape.architecture or shape.model_type} has them elsewhere (e.g. {example})",
                "use bnb, torchao or gguf for this model",
            )
        )
    return findings


def quantize(params: HQQParams, ctx: QuantizeContext) -> dict:
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = ctx.load_model()
    if not hasattr(getattr(model, "model", None), "layers"):  # hqq would fail with a TypeError deep inside
        raise QuantizationError(
            f"hqq handles decoders whose blocks are {HQQ_BLOCKS}N; {type(model).__name__} has no model.layers"
        )
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
    check=lambda p, shape, device: layout_findings(shape) + group_size_findings(p.group_size, shape),
)
