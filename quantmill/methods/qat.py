"""Quantization-aware training with torchao's QAT API (prepare → train → convert)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantmill.dataref import DatasetRef
from quantmill.methods.base import QuantizeContext
from quantmill.methods.spec import MethodParams, MethodSpec, group_size_findings, scale_bits
from quantmill.methods.torchao import TORCHAO


class ValidationSpec(BaseModel):
    """How QAT chooses the checkpoint it returns: validation loss on held-out training texts.

    The fake-quantized model is evaluated before training (the starting point) and every
    ``every`` steps; the best evaluation's weights are returned, and training stops once
    ``patience`` evaluations in a row have not improved on the best. An evaluation improves
    on the best only when its loss is lower by more than ``min_improvement`` (relative): on
    a small held-out split, smaller differences are noise, and chasing them picks late,
    overfitted steps.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction: float = Field(
        0.25, gt=0, le=0.5, description="share of the training texts held out (at least 1, at most 512 texts)"
    )
    every: int = Field(10, gt=0, le=1_000_000, description="steps between validation evaluations")
    patience: int = Field(3, gt=0, le=10_000, description="evaluations without improvement before stopping early")
    min_improvement: float = Field(
        0.002,
        ge=0,
        lt=1,
        description="relative drop of the best validation loss that counts as an improvement (smaller is noise)",
    )
    on_no_improvement: Literal["keep_start", "fail"] = Field(
        "keep_start",
        description="when no step beats the starting point: return the starting point (with a warning) or fail",
    )


class TrainingSpec(BaseModel):
    """The fine-tuning budget of a QAT variant, and how its checkpoint is chosen."""

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
    validation: ValidationSpec = ValidationSpec()


class QATParams(MethodParams):
    axes: ClassVar[tuple[str, ...]] = ("bits",)

    bits: Literal[2, 3, 4, 8] = 4
    group_size: int = Field(32, gt=0)
    activations: Literal["none", "int8"] = "none"
    exclude: tuple[str, ...] = ("lm_head", "embed_tokens")
    training: TrainingSpec = TrainingSpec()


def quantize(params: QATParams, ctx: QuantizeContext) -> dict:
    """Fake-quantized fine-tuning (torchao prepare → train), then a real quantized checkpoint.

    The checkpoint is the training step (or the untrained start) with the best loss on
    texts held out of training (:class:`ValidationSpec`), so QAT never returns a model
    worse on those texts than the one it started from.

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
    """The fine-tuning budget and how the checkpoint is chosen, for the plan."""
    validation = params.training.validation
    return (
        f"QAT {params.training.steps} steps, {training_tokens(params):,} tokens, "
        f"validated every {validation.every} steps (patience {validation.patience}; "
        f"no improvement: {validation.on_no_improvement.replace('_', ' ')})"
    )


def training_notes(params: QATParams, details: dict) -> str | None:
    """The measured training cost, the loss curve's ends, the checkpoint chosen and any warnings, for the card."""
    training = details.get("training")
    if not training:
        return None
    curve = training["loss_curve"]
    planned = training.get("planned_steps", training["steps"])
    steps = f"{training['steps']} steps" if training["steps"] == planned else f"{training['steps']} of {planned} steps"
    notes = (
        f"QAT training: {steps}, {training['tokens']} tokens, {training['seconds']} s, "
        f"loss {curve[0]['loss']} → {curve[-1]['loss']}"
    )
    validation = training.get("validation")
    if validation:
        notes += (
            f"; validation loss on {validation['documents']} held-out texts {validation['start_loss']} at the start, "
            f"best {validation['best_loss']} at step {validation['best_step']}; returned: {validation['returned']}"
        )
    for warning in training.get("warnings", []):
        notes += f"\n\nWarning: {warning}"
    return notes


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
