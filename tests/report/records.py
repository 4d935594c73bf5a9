"""Constructed run records for the report tests: a baseline and variants with chosen numbers."""

from __future__ import annotations

from typing import Any

from quantmill.record import RunRecord

STDERR = 0.02  # every t/acc in these records, the baseline's included: combined noise ≈ 0.028


def metric(value: float, stderr: float | None = None) -> dict[str, Any]:
    return {"value": value, "stderr": stderr}


def run(**variants: tuple[str, float, float, float]) -> RunRecord:
    """A record whose variants are ``name=(status, t/acc, size MB, decode tok/s)``."""
    return RunRecord.model_validate(run_json(**variants))


def run_json(**variants: tuple[str, float, float, float]) -> dict[str, Any]:
    return {
        "recipe": "r",
        "recipe_path": "/recipes/r.yaml",
        "recipe_sha256": "abc",
        "quantmill_version": "1.0",
        "run_id": "run",
        "device": "cpu",
        "model": {"id": "m", "revision": "sha"},
        "baseline": {
            "evaluation": {"metrics": {"t/acc": metric(0.9, STDERR), "ppl": metric(2.0), "size_mb": metric(4.0)}}
        },
        "variants": {
            name: {
                "method": name.split("-")[0],
                "setting": "-",
                "status": status,
                "evaluation": {
                    "metrics": {
                        "t/acc": metric(acc, STDERR),
                        "size_mb": metric(size),
                        "decode_tok_s": metric(speed),
                        "ppl": metric(2.1),
                    }
                },
                "verdict": {"variant": name, "status": status, "outcomes": []},
            }
            for name, (status, acc, size, speed) in variants.items()
        },
    }
