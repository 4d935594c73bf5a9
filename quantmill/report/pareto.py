"""The Pareto frontier of quality against cost (size or slowness)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    name: str
    cost: float  # lower is better (size in MB, or seconds per token)
    quality: float  # higher is better


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good in both and strictly better in one."""
    return a.cost <= b.cost and a.quality >= b.quality and (a.cost < b.cost or a.quality > b.quality)


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """Points no other point dominates, by increasing cost. Identical points are all kept."""
    frontier = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(frontier, key=lambda p: (p.cost, -p.quality, p.name))
