"""Which variant to deploy where, derived only from measured numbers.

Following the deployment guidance quantmill is built around: the smallest
passing variant for memory-bound hosts (INT4 territory), the fastest passing
variant for latency-bound serving (INT8 territory), and for accuracy-critical use
the best passing variant whose quality shows no loss beyond noise (its recovery is
within noise of 1), else the unquantized model, which is also the answer when nothing passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantmill.evaluation.results import EvaluationResult
from quantmill.metrics import metric_direction
from quantmill.record import RunRecord, VariantStatus
from quantmill.report.compare import measured_loss, noise
from quantmill.report.quality import quality_metric, recovery


@dataclass(frozen=True)
class Recommendation:
    use_case: str
    variant: str | None
    reason: str


def recommend(record: RunRecord) -> list[Recommendation]:
    passed: dict[str, EvaluationResult] = {
        v: e.evaluation
        for v, e in record.variants.items()
        if e.status == VariantStatus.PASSED and e.evaluation is not None
    }

    if not passed:
        return [
            Recommendation(
                "all hosts", None, "No variant passed its required gates: keep the unquantized (BF16/FP16) model."
            )
        ]
    out = []
    sized = {v: size for v, e in passed.items() if (size := e.value("size_mb")) is not None}
    if sized:
        smallest = min(sized, key=lambda v: (sized[v], v))
        out.append(
            Recommendation(
                "memory-bound hosts",
                smallest,
                f"smallest variant that passes every required gate ({sized[smallest]:.4g} MB)",
            )
        )
    else:
        out.append(
            Recommendation("memory-bound hosts", None, "sizes were not measured (add 'size' to evaluation.metrics)")
        )
    speeds = {v: speed for v, e in passed.items() if (speed := e.value("decode_tok_s")) is not None}
    if speeds:
        fastest = max(speeds, key=lambda v: (speeds[v], v))
        device = record.device or "this device"
        out.append(
            Recommendation(
                "latency-bound serving",
                fastest,
                f"fastest passing variant: {speeds[fastest]:.4g} decode tokens/s on {device} "
                "(CPU runs dequantize some formats, so re-measure on the serving hardware)",
            )
        )
    else:
        out.append(
            Recommendation("latency-bound serving", None, "speed was not measured (add 'speed' to evaluation.metrics)")
        )
    out.append(_accuracy_critical(record, passed))
    return out


def _accuracy_critical(record: RunRecord, passed: dict[str, EvaluationResult]) -> Recommendation:
    """The passing variant with the best quality among those without a loss beyond noise, if any."""
    use_case = "accuracy-critical use"
    failed = sum(1 for e in record.variants.values() if e.status != VariantStatus.PASSED)
    not_passed = f" ({failed} variant(s) did not pass their gates)" if failed else ""
    quality = quality_metric(record)
    baseline = record.baseline_evaluation()
    reference = baseline.metrics.get(quality) if baseline and quality else None
    if quality is None or reference is None:
        return Recommendation(use_case, None, "keep the unquantized model; quality was not measured against it")
    direction = metric_direction(quality)
    if direction is None:  # a loss cannot be told from a gain
        return Recommendation(use_case, None, f"keep the unquantized model; which way {quality} is better is unknown")
    measured = {v: e.metrics[quality] for v, e in passed.items() if quality in e.metrics}
    if not measured:
        return Recommendation(use_case, None, f"keep the unquantized model; no passing variant measured {quality}")
    lossless = [v for v, value in measured.items() if measured_loss(quality, reference, value) is None]

    def described(variant: str) -> str:
        value = measured[variant]
        recovered = recovery(value, reference)
        ratio = f"recovery {recovered:.3f}, " if recovered is not None else ""
        return f"{ratio}{quality} {value.value:.4g} vs {reference.value:.4g} ± {noise(reference, value):.2g}"

    if not lossless:
        closest = min(measured, key=lambda v: (abs(measured_loss(quality, reference, measured[v]) or 0.0), v))
        return Recommendation(
            use_case,
            None,
            f"keep the unquantized model; every passing variant lost {quality} beyond noise "
            f"(the closest, {closest}: {described(closest)}){not_passed}",
        )
    sign = -1 if direction == "lower" else 1
    best = max(lossless, key=lambda v: (sign * measured[v].value, -(passed[v].value("size_mb") or 0.0), v))
    others = sorted(set(lossless) - {best})
    also = f"; also without measurable loss: {', '.join(others)}" if others else ""
    return Recommendation(
        use_case,
        best,
        f"no measurable loss in {quality} ({described(best)}, within noise of the unquantized model){also}. "
        "Measured on this recipe's evaluation only: the unquantized model stays the reference",
    )
