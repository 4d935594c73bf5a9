"""Quantization-aware training with torchao's QAT API (prepare → train → convert)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantmill.dataref import DatasetRef
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits
from quantmill.methods.torchao import TORCHAO


class TrainingSpec(BaseModel):
    """The fine-tuning budget of a QAT variant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetRef | None = Field(None, description="training texts (default: the recipe's calibration data)")
    steps: int = Field(200, gt=0, le=1_000_000)
    batch_size: int = Field(8, gt=0, le=4096)
    seq_len: int = Field(128, gt=0, le=131072)
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    gradient_accumulation: int = Field(1, gt=0, le=1024)
    seed: int = 0


class QATParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits",)

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(32, gt=0)
    activations: Literal["none", "int8"] = "none"
    exclude: tuple[str, ...] = ("lm_head", "embed_tokens")
    training: TrainingSpec = TrainingSpec()


def quantize(params: QATParams, ctx: QuantizeContext) -> dict:
    """Fake-quantized fine-tuning (torchao prepare → train), then a real quantized checkpoint.

    torchao cannot serialise a model after its QAT "convert" step ("Attempted to access
    the data pointer on an invalid python storage"), so the trained float weights are
    saved and quantized at load with the same config, which gives exactly the
    converted model (tested), and that checkpoint is saved.
    """
    from quantmill.methods import _qat

    return _qat.train_and_quantize(params, ctx)


def training_tokens(params: QATParams) -> int:
    training = params.training
    return training.steps * training.batch_size * training.seq_len * training.gradient_accumulation


def training_cost(params: QATParams) -> str:
    """The fine-tuning budget, for the plan."""
    return f"QAT {params.training.steps} steps, {training_tokens(params):,} tokens"


def training_notes(params: QATParams, details: dict) -> str | None:
    """The measured training cost and the loss curve's ends, for the card."""
    training = details.get("training")
    if not training:
        return None
    curve = training["loss_curve"]
    return (
        f"QAT training: {training['steps']} steps, {training['tokens']} tokens, "
        f"{training['seconds']} s, loss {curve[0]['loss']} → {curve[-1]['loss']}"
    )


SPEC = MethodSpec(
    name="qat",
    params=QATParams,
    summary="quantization-aware fine-tuning (torchao), 2-8 bit weights",
    output_format=TORCHAO,
    extra="torchao",
    packages=("torchao",),
    quantize=quantize,
    needs_calibration=lambda p: p.training.dataset is None,
    variant_id=lambda p: f"qat-w{p.bits}-g{p.group_size}" + ("-a8" if p.activations == "int8" else ""),
    bits_per_weight=lambda p: p.bits + scale_bits(p.group_size),
    check=lambda p, shape, device: group_size_findings(p.group_size, shape),
    cost_note=training_cost,
    card_notes=training_notes,
    training_tokens=training_tokens,
)
