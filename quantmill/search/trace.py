"""What a run record keeps of a search (``results.json``'s ``search``): every candidate, its numbers and outcome.

Built from the strategy's state once the search is decided (``quantmill.search.verdicts.trace_of``);
the report and the card read it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Trace(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class CandidateTrace(_Trace):
    """One candidate of the search.

    Attributes:
        id, method, setting: the variant.
        estimated_mb: the plan's size estimate (the search order).
        proxy: the screening proxy (lower is better), when it was measured.
        size_mb: the real size of its weights, once quantized.
        objective, quality: from its full evaluation, when it had one.
        outcome: winner, larger than the winner, failed a constraint, screened out by proxy, … (``Outcome``).
        reason: why, with numbers.
    """

    id: str
    method: str
    setting: str
    estimated_mb: float | None = None
    proxy: float | None = None
    size_mb: float | None = None
    objective: float | None = None
    quality: float | None = None
    outcome: str
    reason: str


class SearchTrace(_Trace):
    """A search's goal and how it went.

    Attributes:
        objective, constraints, budget, proxy: the goal, as the recipe states it (the proxy in words).
        quality_metric: the metric the frontier is drawn with.
        full_evaluations: how many the search used.
        candidates: every candidate, in search order (smallest estimate first).
        winner: the winning candidate's id, or None.
        exhaustive: every candidate was fully evaluated: ``frontier`` is the grid's.
        frontier: fully evaluated candidates no other beats on both objective and quality.
        summary: the result in one sentence.
    """

    objective: str
    constraints: list[str]
    budget: int
    proxy: str | None = None
    quality_metric: str | None = None
    full_evaluations: int
    candidates: list[CandidateTrace]
    winner: str | None = None
    exhaustive: bool = False
    frontier: list[str] = []
    summary: str
