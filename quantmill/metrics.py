"""Metric names, which direction is better, and which evaluation produces them.

Gates name metrics either as built-ins (``ppl``, ``size_gb``, ``decode_tok_s`` …)
or as ``<task>/<metric>`` for lm-eval results (``tiny_world_mc/acc``). One table
here serves validation, gating and reporting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower"]
ExtraMetricGroup = Literal["size", "speed", "memory"]


@dataclass(frozen=True)
class BuiltinMetric:
    direction: Direction
    produced_by: str  # an evaluation.metrics group, "perplexity", or "servable" (every variant's servable check)
    unit: str
    description: str


BUILTIN_METRICS: dict[str, BuiltinMetric] = {
    "ppl": BuiltinMetric("lower", "perplexity", "", "token perplexity on the recipe's perplexity corpus"),
    "size_gb": BuiltinMetric("lower", "size", "GB", "bytes on disk of the variant's weights, in 1e9 bytes"),
    "size_mb": BuiltinMetric("lower", "size", "MB", "bytes on disk of the variant's weights, in 1e6 bytes"),
    "bits_per_weight": BuiltinMetric("lower", "size", "bits", "weight bytes × 8 / parameters"),
    "load_s": BuiltinMetric("lower", "speed", "s", "seconds to load the variant"),
    "prefill_tok_s": BuiltinMetric("higher", "speed", "tok/s", "prompt tokens processed per second"),
    "decode_tok_s": BuiltinMetric("higher", "speed", "tok/s", "tokens generated per second"),
    "peak_rss_gb": BuiltinMetric("lower", "memory", "GB", "peak resident memory while evaluating"),
    "greedy_agreement": BuiltinMetric(
        "higher", "servable", "", "fraction of greedy-generated tokens identical to the baseline's (fresh process)"
    ),
}

EXTRA_METRIC_GROUPS: tuple[ExtraMetricGroup, ...] = ("size", "speed", "memory")

# lm-eval metric names whose direction is known without loading the task.
TASK_METRIC_DIRECTIONS: dict[str, Direction] = {
    "acc": "higher",
    "acc_norm": "higher",
    "acc_mutual_info": "higher",
    "exact_match": "higher",
    "f1": "higher",
    "mcc": "higher",
    "bleu": "higher",
    "chrf": "higher",
    "ter": "lower",
    "rouge1": "higher",
    "rouge2": "higher",
    "rougeL": "higher",
    "perplexity": "lower",
    "word_perplexity": "lower",
    "byte_perplexity": "lower",
    "bits_per_byte": "lower",
    "brier_score": "lower",
}

# Which gate comparisons make sense for which direction.
RULES_FOR_DIRECTION: dict[str, tuple[Direction, ...]] = {
    "min": ("higher", "lower"),
    "max": ("higher", "lower"),
    "max_drop": ("higher",),
    "max_drop_pct": ("higher",),
    "min_recovery": ("higher",),
    "max_increase": ("lower",),
    "max_increase_pct": ("lower",),
}


def split_task_metric(name: str) -> tuple[str, str] | None:
    """``"tiny_world_mc/acc"`` → ``("tiny_world_mc", "acc")``; None for a built-in name."""
    task, sep, metric = name.partition("/")
    if not sep or not task or not metric:
        return None
    return task, metric.split(",")[0]


def metric_direction(name: str, task_metrics: dict[str, dict[str, Direction]] | None = None) -> Direction | None:
    """Whether higher or lower is better for ``name``; None when unknown.

    ``task_metrics`` maps local task names to their declared metrics and directions.
    """
    if name in BUILTIN_METRICS:
        return BUILTIN_METRICS[name].direction
    split = split_task_metric(name)
    if split is None:
        return None
    task, metric = split
    if task_metrics and task in task_metrics and metric in task_metrics[task]:
        return task_metrics[task][metric]
    return TASK_METRIC_DIRECTIONS.get(metric)
