"""Regressions between two runs of a recipe: worse beyond noise, or a flipped verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from quantmill.metrics import metric_direction


@dataclass(frozen=True)
class Regression:
    variant: str
    what: str  # the metric, or "verdict"
    before: Any
    after: Any
    why: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _metrics(entry: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    return ((entry.get("evaluation") or {}).get("metrics")) or {}


def find_regressions(before: dict[str, Any], after: dict[str, Any]) -> list[Regression]:
    """Variants of ``after`` that got worse than in ``before``.

    A metric regresses when it moved in its bad direction by more than its
    combined standard error (by any amount when neither run has a stderr, for
    exact quantities such as size); a verdict regresses when passed became failed.
    """
    found: list[Regression] = []
    for variant, entry in after.get("variants", {}).items():
        old = before.get("variants", {}).get(variant)
        if old is None:
            continue
        if old.get("status") == "passed" and entry.get("status") == "failed":
            found.append(Regression(variant, "verdict", "passed", "failed", entry.get("error") or "a gate failed"))
        new_metrics, old_metrics = _metrics(entry), _metrics(old)
        for metric, value in new_metrics.items():
            direction = metric_direction(metric)
            if (
                metric not in old_metrics
                or direction is None
                or metric in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_rss_gb")
            ):
                continue  # timings and memory vary with machine load; they are reported, not flagged
            new_value, old_value = value["value"], old_metrics[metric]["value"]
            if new_value is None or old_value is None:
                continue  # not measured in one of the runs: nothing to compare
            change = new_value - old_value
            worse = change < 0 if direction == "higher" else change > 0
            errors = [e for e in (value.get("stderr"), old_metrics[metric].get("stderr")) if e is not None]
            noise = math.sqrt(sum(e * e for e in errors)) if errors else 0.0
            if worse and abs(change) > noise:
                found.append(
                    Regression(
                        variant,
                        metric,
                        old_metrics[metric]["value"],
                        value["value"],
                        f"changed by {change:+.4g}, beyond its stderr {noise:.4g}",
                    )
                )
    return found
