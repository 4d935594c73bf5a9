"""The QAT method's work: torchao fake-quant preparation, a training loop, and a loadable checkpoint."""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from typing import Any

from quantmill.errors import QuantizationError
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


def _training_ids(params, ctx: QuantizeContext, tokenizer) -> list[list[int]]:
    training = params.training
    if training.dataset is not None:
        texts = load_texts(training.dataset, ctx.recipe_dir or ctx.source_dir.parent)
    else:
        texts = list(ctx.require_calibration("qat without training.dataset").texts)
    if not texts:
        raise QuantizationError("QAT has no training texts")
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


def train_and_quantize(params, ctx: QuantizeContext) -> dict[str, Any]:
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig
    from transformers import TorchAoConfig

    training = params.training
    torch.manual_seed(training.seed)
    config = base_config(params)
    tokenizer = ctx.load_tokenizer()
    documents = _training_ids(params, ctx, tokenizer)
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
    curve: list[dict[str, float]] = []
    tokens = 0
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
        if step % 10 == 0 or step == training.steps - 1:
            elapsed = time.perf_counter() - started
            curve.append({"step": step + 1, "loss": round(total, 5), "tokens_per_s": round(tokens / elapsed, 1)})
            log.info("qat step %d/%d loss %.4f (%.0f tok/s)", step + 1, training.steps, total, tokens / elapsed)
    seconds = time.perf_counter() - started
    model.eval()

    # The prepared model keeps the plain parameter names: its trained float weights load into a
    # fresh model, saved, then quantized at load with the same config (exactly the converted model).
    trained = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    probe = _batch(documents, random.Random(0), 2, min(training.seq_len, 32))
    quantize_(model, QATConfig(config, step="convert"))  # the in-memory quantized model QAT produces
    with torch.no_grad():
        expected = model(input_ids=probe.to(device)).logits.float().cpu()
    del model
    float_dir = ctx.out_dir.parent / f".{ctx.out_dir.name}.float"
    shutil.rmtree(float_dir, ignore_errors=True)
    try:
        plain = ctx.load_model(dtype=torch.float32)
        plain.load_state_dict(trained)
        plain.save_pretrained(float_dir)
        del plain
        excluded = [name for name in params.exclude]
        device_map = {"": ctx.device} if ctx.on_cuda else None
        quantized = ctx.load_model(
            path=float_dir,
            dtype=torch.float32,
            device_map=device_map,
            quantization_config=TorchAoConfig(quant_type=config, modules_to_not_convert=excluded),
        )
        quantized.save_pretrained(ctx.out_dir, safe_serialization=True)
        del quantized
    finally:
        shutil.rmtree(float_dir, ignore_errors=True)
    tokenizer.save_pretrained(ctx.out_dir)
    reloaded = ctx.load_model(path=ctx.out_dir, dtype=torch.float32, device_map=device_map)
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
            "steps": training.steps,
            "tokens": tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1),
            "documents": len(documents),
            "loss_curve": curve,
        },
        "checkpoint": "trained float weights quantized at load with the same torchao config",
        "reload_max_abs_logit_difference": difference,
    }
