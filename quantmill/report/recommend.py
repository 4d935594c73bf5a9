"""Which variant to deploy where, derived only from measured numbers.

Following the deployment guidance quantmill is built around: the smallest
passing variant for memory-bound hosts (INT4 territory), the fastest passing
variant for latency-bound serving (INT8 territory), and the unquantized model
when accuracy is critical or nothing passes.
"""

from __future__ import annotations

from dataclasses import dataclass

from quantmill.evaluation.results import EvaluationResult
from quantmill.record import RunRecord, VariantStatus


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
    failed = sorted(v for v, e in record.variants.items() if e.status != VariantStatus.PASSED)
    out.append(
        Recommendation(
            "accuracy-critical use",
            None,
            "keep the unquantized model; every passing variant lost some measured quality"
            + (f" ({len(failed)} variant(s) did not pass their gates)" if failed else ""),
        )
    )
    return out
