"""How QAT chooses its checkpoint: the held-out split, the validation loss and its curve, the small-data rule."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

from quantmill.errors import QuantizationError

#: the validation split's cap, which keeps each evaluation cheap on large training sets
MAX_VALIDATION_TEXTS = 512
#: planned passes over the training tokens above which QAT warns of a small training set
MAX_PASSES = 4


def split_validation(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(training, validation) texts: ``fraction`` of the distinct texts (1 to 512) held out.

    The held-out texts are those with the smallest sha256, so the split is deterministic
    and independent of the texts' order and of the training seed. Every copy of a held-out
    text leaves training, so no held-out text is trained on.
    """
    distinct = sorted(set(texts), key=lambda text: hashlib.sha256(text.encode()).hexdigest())
    if len(distinct) < 2:
        raise QuantizationError(
            f"QAT holds out validation texts and needs at least 2 distinct training texts; it has {len(distinct)}"
        )
    count = min(MAX_VALIDATION_TEXTS, len(distinct) - 1, max(1, round(fraction * len(distinct))))
    held_out = set(distinct[:count])
    return [text for text in texts if text not in held_out], distinct[:count]


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


def validation_rows(documents: list[list[int]], seq_len: int):
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
