"""Which variant to deploy where, derived only from measured numbers.

Following the deployment guidance quantmill is built around: the smallest
passing variant for memory-bound hosts (INT4 territory), the fastest passing
variant for latency-bound serving (INT8 territory), and the unquantized model
when accuracy is critical or nothing passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Recommendation:
    use_case: str
    variant: str | None
    reason: str


def recommend(results: dict[str, Any]) -> list[Recommendation]:
    variants = results.get("variants", {})
    passed = {v: e for v, e in variants.items() if e.get("status") == "passed" and e.get("evaluation")}

    def metric(entry: dict[str, Any], name: str) -> float | None:
        found = entry["evaluation"]["metrics"].get(name)
        return None if found is None else found["value"]

    if not passed:
        return [
            Recommendation(
                "all hosts", None, "No variant passed its required gates: keep the unquantized (BF16/FP16) model."
            )
        ]
    out = []
    sized = {v: metric(e, "size_mb") for v, e in passed.items() if metric(e, "size_mb") is not None}
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
    speeds = {v: metric(e, "decode_tok_s") for v, e in passed.items() if metric(e, "decode_tok_s") is not None}
    if speeds:
        fastest = max(speeds, key=lambda v: (speeds[v], v))
        device = results.get("device", "this device")
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
    failed = sorted(v for v, e in variants.items() if e.get("status") != "passed")
    out.append(
        Recommendation(
            "accuracy-critical use",
            None,
            "keep the unquantized model; every passing variant lost some measured quality"
            + (f" ({len(failed)} variant(s) failed their gates)" if failed else ""),
        )
    )
    return out
