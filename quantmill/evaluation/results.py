"""What an evaluation measured, in a form that survives JSON round trips."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class MetricValue:
    """One measured number; ``stderr`` as lm-eval reports it (None when it has none)."""

    value: float
    stderr: float | None = None


@dataclass
class EvaluationResult:
    """Every metric of one model, plus what is needed to reproduce and compare it.

    Attributes:
        metrics: ``"tiny_world_mc/acc"``, ``"ppl"``, ``"size_mb"`` … → value.
        details: lm-eval version, task versions and sample counts, seeds, perplexity
            token counts, device: what makes two evaluations comparable.
    """

    metrics: dict[str, MetricValue] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": {k: asdict(v) for k, v in self.metrics.items()}, "details": self.details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        return cls({k: MetricValue(**v) for k, v in data["metrics"].items()}, dict(data.get("details", {})))

    def value(self, metric: str) -> float | None:
        found = self.metrics.get(metric)
        return None if found is None else found.value
