"""bitsandbytes NF4 / FP4 / INT8 through transformers' ``BitsAndBytesConfig``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from quantmill.methods.base import QuantizeContext, package_version
from quantmill.methods.formats import TransformersFormat
from quantmill.methods.spec import MethodParams, MethodSpec

if TYPE_CHECKING:
    from quantmill.evaluation.backends import EvalModel

#: bitsandbytes' AVX512-BF16 CPU kernel packs a 4-bit layer's output rows in blocks of this many
CPU_PACKING_BLOCK = 32


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
    model = ctx.load_model(quantization_config=config, **ctx.placement())
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


def keep_cpu_layout(model) -> int:
    """Stop bitsandbytes repacking 4-bit layers for its AVX512-BF16 CPU kernel where it must not; returns how many.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks each 4-bit layer at its first
    forward pass without gradients, for a kernel that computes in bfloat16 whatever the
    compute dtype and asserts ``N must be divisible by block_n`` on a layer whose output
    features are not a multiple of 32 (stories260K's 172-wide MLP). Such layers, and every
    layer whose compute dtype is not bfloat16, keep the saved layout and compute in their
    compute dtype, as on any other CPU or GPU: the measurement is of the model as saved,
    not of a machine-dependent bfloat16 kernel. Without AVX512-BF16 nothing changes.
    """
    import torch
    from bitsandbytes.nn import Linear4bit

    kept = 0
    for module in model.modules():
        if not (isinstance(module, Linear4bit) and module.support_avx512bf16_for_cpu):
            continue
        if module.out_features % CPU_PACKING_BLOCK or module.compute_dtype != torch.bfloat16:
            module.support_avx512bf16_for_cpu = False
            kept += 1
    return kept


@dataclass(frozen=True)
class BitsAndBytesFormat(TransformersFormat):
    """A bitsandbytes checkpoint, evaluated in its compute dtype on any CPU (:func:`keep_cpu_layout`)."""

    def load_for_evaluation(
        self, folder: Path, device: str, batch_size: int | str, *, trust_remote_code: bool = False
    ) -> EvalModel:
        from transformers import AutoTokenizer

        from quantmill.evaluation.backends import load_transformers_model, transformers_eval_model

        model = load_transformers_model(folder, "auto", device, trust_remote_code=trust_remote_code)
        keep_cpu_layout(model)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)
        return transformers_eval_model(model, tokenizer, batch_size)


CPU_NOTE = (
    "On a CPU with AVX512-BF16, bitsandbytes repacks 4-bit layers for a bfloat16 kernel that needs "
    "output features in multiples of 32 (`N must be divisible by block_n` otherwise). quantmill "
    "measures in the saved compute dtype without that repacking (unless it is bfloat16 and the "
    "shapes allow); to run the model the same way:\n\n"
    "```python\nfor module in model.modules():\n"
    '    if hasattr(module, "support_avx512bf16_for_cpu"):\n'
    "        module.support_avx512bf16_for_cpu = False\n```"
)

SPEC = MethodSpec(
    name="bnb",
    params=BnbParams,
    summary="bitsandbytes NF4/FP4/INT8, no calibration",
    output_format=BitsAndBytesFormat("bitsandbytes", serve_note=CPU_NOTE),
    extra="bnb",
    packages=("bitsandbytes",),
    quantize=quantize,
    variant_id=lambda p: f"bnb-{p.type}",
    bits_per_weight=lambda p: 8.0 if p.type == "int8" else (4.127 if p.double_quant else 4.5),
)
