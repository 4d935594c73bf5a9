"""The QAT method's work: torchao fake-quant preparation, a training loop, and a loadable checkpoint."""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from typing import Any

from quantmill.errors import QuantizationError
from quantmill.methods._qat_validation import (
    ValidationCurve,
    small_data_warning,
    split_validation,
    validation_loss,
    validation_rows,
)
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.textdata import load_texts

log = logging.getLogger(__name__)


def base_config(params):
    """The torchao post-training config the fake quantizers imitate (and the checkpoint uses)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    weight_dtype = getattr(torch, f"int{params.bits}")
    if params.activations == "int8":
        return Int8DynamicActivationIntxWeightConfig(
            weight_dtype=weight_dtype, weight_granularity=PerGroup(params.group_size)
        )
    return IntxWeightOnlyConfig(weight_dtype=weight_dtype, granularity=PerGroup(params.group_size))


def _training_texts(params, ctx: QuantizeContext) -> list[str]:
    training = params.training
    if training.dataset is not None:
        texts = load_texts(training.dataset, ctx.recipe_dir or ctx.source_dir.parent)
    else:
        texts = list(ctx.require_calibration("qat without training.dataset").texts)
    if not texts:
        raise QuantizationError("QAT has no training texts")
    return texts


def _token_ids(texts: list[str], tokenizer) -> list[list[int]]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [tokenizer(text)["input_ids"] + eos for text in texts]


def _batch(documents: list[list[int]], rng: random.Random, batch_size: int, seq_len: int):
    import torch

    rows = []
    for _ in range(batch_size):
        row: list[int] = []
        while len(row) < seq_len:
            row.extend(documents[rng.randrange(len(documents))])
        rows.append(row[:seq_len])
    return torch.tensor(rows, dtype=torch.long)


def _learning_rate_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    done = (step - warmup) / max(1, steps - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * done))
    if schedule == "linear":
        return 1 - done
    return 1.0


def _cpu_copy(model) -> dict[str, Any]:
    # clone: on the CPU .cpu() returns the same storage, which the optimizer keeps changing
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in model.state_dict().items()}


def train_and_quantize(params, ctx: QuantizeContext) -> dict[str, Any]:
    """Train with fake quantizers, keep the step with the best validation loss, save it quantized.

    The best step's weights are kept as a CPU copy of the state dict (made only when the
    validation loss improves): fine for models that fit in host memory twice; a model near
    that limit would need the copy written to disk instead. When no step beats the starting
    point, the starting point is reloaded from the baseline (no copy of it is kept).
    """
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from transformers import TorchAoConfig

    training = params.training
    validation = training.validation
    torch.manual_seed(training.seed)
    config = base_config(params)
    tokenizer = ctx.load_tokenizer()
    training_texts, held_out = split_validation(_training_texts(params, ctx), validation.fraction)
    documents = _token_ids(training_texts, tokenizer)
    held_out_ids = _token_ids(held_out, tokenizer)
    warnings = []
    small_data = small_data_warning(training, len(documents), sum(map(len, documents)))
    if small_data:
        log.warning("qat: %s", small_data)
        warnings.append(small_data)
    model = ctx.load_model(dtype=torch.float32)
    if ctx.on_cuda:
        model.to(ctx.device)

    def selected(module, name: str) -> bool:
        return isinstance(module, torch.nn.Linear) and not any(part in name for part in params.exclude)

    quantize_(model, QATConfig(config, step="prepare"), filter_fn=selected)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(training.schedule, step, training.steps, training.warmup_steps)
    )
    rng = random.Random(training.seed)
    device = next(model.parameters()).device
    rows = validation_rows(held_out_ids, training.seq_len)
    if not rows:
        raise QuantizationError("QAT's held-out texts have fewer than 2 tokens: use longer texts")
    curve: list[dict[str, float]] = []
    validation_curve = ValidationCurve(validation.patience, validation.min_improvement)
    validation_curve.record(0, validation_loss(model, rows, device))
    best_state: dict[str, Any] | None = None  # None: the starting point
    tokens = 0
    steps_run = 0
    started = time.perf_counter()
    model.train()
    for step in range(training.steps):
        total = 0.0
        for _ in range(training.gradient_accumulation):
            batch = _batch(documents, rng, training.batch_size, training.seq_len).to(device)
            loss = model(input_ids=batch, labels=batch).loss / training.gradient_accumulation
            loss.backward()
            total += loss.item()
            tokens += batch.numel()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        steps_run = step + 1
        stopping = False
        if steps_run % validation.every == 0 or steps_run == training.steps:
            held_out_loss = validation_loss(model, rows, device)
            if validation_curve.record(steps_run, held_out_loss):
                best_state = _cpu_copy(model)
            stopping = validation_curve.exhausted
            log.info("qat step %d validation loss %.4f", steps_run, held_out_loss)
        if step % 10 == 0 or steps_run == training.steps or stopping:
            elapsed = time.perf_counter() - started
            curve.append({"step": steps_run, "loss": round(total, 5), "tokens_per_s": round(tokens / elapsed, 1)})
            log.info("qat step %d/%d loss %.4f (%.0f tok/s)", steps_run, training.steps, total, tokens / elapsed)
        if stopping:
            log.info(
                "qat: no validation improvement in %d evaluations; stopped at step %d", validation.patience, steps_run
            )
            break
    seconds = time.perf_counter() - started
    start_loss = validation_curve.points[0]["loss"]
    if not validation_curve.improved:
        message = (
            f"no QAT step improved the validation loss of the starting point ({start_loss:.5f}, "
            f"{len(validation_curve.points) - 1} evaluations over {steps_run} steps)"
        )
        if validation.on_no_improvement == "fail":
            raise QuantizationError(f"{message}; the recipe asks to fail (training.validation.on_no_improvement)")
        log.warning("qat: %s; returning the starting point (plain fake-quantized weights)", message)
        warnings.append(f"{message}: the starting point was returned")
        best_state = ctx.load_model(dtype=torch.float32).state_dict()
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()

    # The prepared model keeps the plain parameter names: the chosen float weights load into a
    # fresh model, saved, then quantized at load with the same config (exactly the converted model).
    probe = _batch(documents, random.Random(0), 2, min(training.seq_len, 32))
    quantize_(model, QATConfig(config, step="convert"))  # the in-memory quantized model QAT produces
    with torch.no_grad():
        expected = model(input_ids=probe.to(device)).logits.float().cpu()
    del model
    float_dir = ctx.out_dir.parent / f".{ctx.out_dir.name}.float"
    shutil.rmtree(float_dir, ignore_errors=True)
    try:
        plain = ctx.load_model(dtype=torch.float32)
        plain.load_state_dict(best_state)
        plain.save_pretrained(float_dir)
        del plain
        excluded = [name for name in params.exclude]
        quantized = ctx.load_model(
            path=float_dir,
            dtype=torch.float32,
            **ctx.placement(),
            quantization_config=TorchAoConfig(quant_type=config, modules_to_not_convert=excluded),
        )
        quantized.save_pretrained(ctx.out_dir, safe_serialization=True)
        del quantized
    finally:
        shutil.rmtree(float_dir, ignore_errors=True)
    tokenizer.save_pretrained(ctx.out_dir)
    reloaded = ctx.load_model(path=ctx.out_dir, dtype=torch.float32, **ctx.placement())
    with torch.no_grad():
        difference = float((reloaded(input_ids=probe.to(device)).logits.float().cpu() - expected).abs().max())
    if difference != 0.0:
        raise QuantizationError(
            f"the saved QAT checkpoint differs from the converted model (max |Δlogit| {difference})"
        )
    return {
        "backend": "torchao",
        "backend_version": package_version("torchao"),
        "reloadable_with_transformers": True,
        "training": {
            "steps": steps_run,
            "planned_steps": training.steps,
            "stopped_early": steps_run < training.steps,
            "tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "documents": len(documents),
            "loss_curve": curve,
            "validation": {
                "documents": len(held_out),
                "tokens": sum(map(len, held_out_ids)),
                "curve": validation_curve.points,
                "start_loss": start_loss,
                "best_step": validation_curve.best_step,
                "best_loss": round(validation_curve.best_loss, 5),
                "returned": f"step {validation_curve.best_step}" if validation_curve.improved else "starting point",
            },
            "warnings": warnings,
        },
        "checkpoint": "trained float weights quantized at load with the same torchao config",
        "reload_max_abs_logit_difference": difference,
    }
