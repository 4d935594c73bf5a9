"""The QAT method's work: torchao fake-quant preparation, a training loop, and a loadable checkpoint."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from quantmill.errors import QuantizationError
from quantmill.methods.base import QuantizeContext, package_version
from quantmill.textdata import load_texts

log = logging.getLogger(__name__)

#: the validation split's cap, which keeps each evaluation cheap on large training sets
MAX_VALIDATION_TEXTS = 512
#: planned passes over the training tokens above which QAT warns of a small training set
MAX_PASSES = 4


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


def split_validation(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, validation) texts: ``fraction`` of the distinct texts (1 to 512) held out.

    The held-out texts are those with the smallest sha256, so the split is deterministic
    and a text's side depends only on the text (not on order, seed or the other texts'
    count beyond the size of the split). Every copy of a held-out text leaves training.
    """
    distinct = sorted(set(texts), key=lambda text: hashlib.sha256(text.encode()).hexdigest())
    if len(distinct) < 2:
        raise QuantizationError(
            f"QAT holds out validation texts and needs at least 2 distinct training texts; it has {len(distinct)}"
        )
    count = min(MAX_VALIDATION_TEXTS, len(distinct) - 1, max(1, round(fraction * len(distinct))))
    held_out = set(distinct[:count])
    return [text for text in texts if text not in held_out], distinct[:count]


def _token_ids(texts: list[str], tokenizer) -> list[list[int]]:
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [tokenizer(text)["input_ids"] + eos for text in texts]


def passes_over_data(training, training_tokens: int) -> float:
    """How many times the planned steps go through the training texts' tokens (rows pack documents)."""
    rows = training.steps * training.batch_size * training.gradient_accumulation
    return rows * training.seq_len / max(1, training_tokens)


def small_data_warning(training, documents: int, training_tokens: int) -> str | None:
    """A warning when the planned steps would pass over the training texts more than MAX_PASSES times.

    Beyond a few passes QAT memorises its training texts instead of learning to
    compensate the quantization error, and held-out quality drops: the validation
    split then usually stops training early, but more (or longer) texts would help.
    """
    passes = passes_over_data(training, training_tokens)
    if passes <= MAX_PASSES:
        return None
    return (
        f"small training set: {training.steps} steps × {training.batch_size} rows × {training.seq_len} tokens "
        f"pass over the {documents} training texts ({training_tokens} tokens) {passes:.0f} times "
        f"(more than {MAX_PASSES}); expect overfitting: add texts or use fewer steps"
    )


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


@dataclass
class ValidationCurve:
    """Validation losses by step (0 = the starting point), the best so far, and when to stop."""

    patience: int
    min_improvement: float = 0.0
    points: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    best_loss: float = math.inf
    evaluations_since_best: int = 0

    def record(self, step: int, loss: float) -> bool:
        """Add an evaluation; True when it is a new best (lower than the best by more than ``min_improvement``)."""
        self.points.append({"step": step, "loss": round(loss, 5)})
        if loss < self.best_loss * (1 - self.min_improvement):
            self.best_step, self.best_loss, self.evaluations_since_best = step, loss, 0
            return True
        self.evaluations_since_best += 1
        return False

    @property
    def exhausted(self) -> bool:
        """``patience`` evaluations in a row did not improve on the best: stop training."""
        return self.evaluations_since_best >= self.patience

    @property
    def improved(self) -> bool:
        """Some training step beat the starting point."""
        return self.best_step > 0


def _validation_rows(documents: list[list[int]], seq_len: int):
    """The held-out documents concatenated in order and cut into rows of ``seq_len`` tokens."""
    import torch

    stream = [token for document in documents for token in document]
    return [torch.tensor([stream[i : i + seq_len]]) for i in range(0, len(stream), seq_len) if len(stream) - i > 1]


def validation_loss(model, rows, device) -> float:
    """Mean next-token loss over the validation rows (each row's tokens weighted equally)."""
    import torch

    total, predicted = 0.0, 0
    model.eval()
    with torch.no_grad():
        for row in rows:
            count = row.shape[1] - 1
            total += float(model(input_ids=row.to(device), labels=row.to(device)).loss) * count
            predicted += count
    model.train()
    return total / predicted


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
    rows = _validation_rows(held_out_ids, training.seq_len)
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
