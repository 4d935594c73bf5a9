"""The search strategy: which candidate to screen or fully evaluate next, and the verdict on every candidate.

Pure logic over measurements (no model, no Prefect): ``flows/search.py`` asks :meth:`Search.next_step`,
runs the step (cached, through the same tasks as a matrix run), and records what it measured, until
there is no next step; :meth:`Search.result` then names the winner and why each other candidate lost.

The rules, for an objective that is the weights' size (``size_mb``, ``size_gb``, ``bits_per_weight``):

* **Size**: a candidate's size is its measured size once screened (screening quantizes it), else its
  *predicted* size: its estimate (the plan's bits per weight × parameters) times the smallest
  measured/estimated ratio among the screened candidates of its method (estimates miss what a format keeps
  unquantized: embeddings in the model's dtype, GGUF's per-tensor types; the ratio corrects that per
  method), else nothing is known of its size.
* **Order**: candidates go smallest first by that size, re-ordered as sizes are measured; candidates
  whose size is unknown (no estimate, or no screened candidate of their method) go by their estimate.
* **Proxy first**: a candidate is quantized and screened with the cheap proxy (perplexity on a slice of
  the perplexity corpus) before it may get a full evaluation; screening also measures its real size.
* **Cannot win by size**: once a candidate passed, a candidate that is not smaller cannot win. A screened
  candidate is compared by measured size; an unscreened one is skipped unquantized when its predicted size
  exceeds the passing candidate's measured size by more than :data:`SIZE_SLACK`, and screened (to measure
  it) when its size is unknown. Risk: a candidate whose real size is below the winner's while its predicted
  size is over :data:`SIZE_SLACK` above (its method's ratio varies that much across settings) is never tried.
* **Screened out by proxy**: a candidate whose proxy is worse by more than :data:`SCREEN_MARGIN` than that
  of a candidate that already failed a quality constraint (a rule on a metric that is not a cost: size,
  speed, memory) is expected to fail too, and gets no full evaluation. Risk: the proxy (a few documents'
  perplexity) ranks two candidates differently than the constraint's metric does; the margin absorbs
  the proxy's noise, not a real disagreement.
* **Budget**: at most ``budget`` full evaluations, counted whether or not they came from the cache (so a
  rerun decides the same); the rest are "not evaluated: budget".

For any other objective (``maximize: decode_tok_s``, ``minimize: peak_rss_gb``) size does not decide, so
nothing is skipped by size: candidates that survive screening are evaluated smallest first until the budget
is spent, and the best passing one by the objective wins.

When every candidate got a full evaluation the search was exhaustive, and its :attr:`SearchResult.frontier`
is the grid's quality/objective frontier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

#: objectives that are the weights' size: the order by size decides which candidates can still win
SIZE_OBJECTIVES = ("size_mb", "size_gb", "bits_per_weight")
#: an unquantized candidate whose predicted size exceeds a passing candidate's by more than this fraction is not tried
SIZE_SLACK = 0.10
#: a proxy worse by more than this fraction than a candidate's that failed a quality constraint screens a candidate out
SCREEN_MARGIN = 0.02


class Outcome(StrEnum):
    WINNER = "winner"
    LARGER = "larger than the winner"
    WORSE = "worse objective than the winner"
    FAILED = "failed a constraint"
    SCREENED = "screened out by proxy"
    BUDGET = "not evaluated: budget"
    ERROR = "error"


@dataclass(frozen=True)
class Candidate:
    """A candidate as the strategy sees it: its id, estimated size in MB (None: unknown) and method (the
    candidates whose measured sizes correct its estimate)."""

    id: str
    estimated_mb: float | None
    method: str = ""


@dataclass(frozen=True)
class ProxyMeasurement:
    """What screening measured: the proxy (lower is better; None when the recipe has no proxy corpus) and
    the real size of the weights, or why quantizing or screening failed."""

    score: float | None = None
    size_mb: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class FullMeasurement:
    """What a full evaluation measured and how the gates judged it.

    Attributes:
        objective: the objective metric's value (None when not measured).
        passed: every required constraint holds.
        unmet: the constraints that did not hold, with numbers, or the error.
        quality_failure: a failed constraint is on a quality metric (what the proxy predicts).
        quality: the quality value (higher is better) the frontier is drawn with, when known.
    """

    objective: float | None
    passed: bool
    unmet: str = ""
    quality_failure: bool = False
    quality: float | None = None


@dataclass(frozen=True)
class Step:
    kind: Literal["proxy", "evaluate"]
    candidate: str


@dataclass(frozen=True)
class Decision:
    candidate: str
    outcome: Outcome
    reason: str


@dataclass(frozen=True)
class SearchResult:
    """The search's verdict.

    Attributes:
        winner: the winning candidate, or None when none met the constraints within the budget.
        decisions: every candidate's outcome and why, smallest first (:meth:`Search.order`).
        full_evaluations: how many full evaluations the search used.
        exhaustive: every candidate was fully evaluated (the frontier is the grid's).
        frontier: fully evaluated candidates that no other beats on both objective and quality, best objective first.
        summary: the result in one sentence.
    """

    winner: str | None
    decisions: tuple[Decision, ...]
    full_evaluations: int
    exhaustive: bool
    frontier: tuple[str, ...]
    summary: str


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


class Search:
    """One search's state: the candidates, what was measured of them, and the rules in the module docstring."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        objective: str,
        lower_is_better: bool,
        budget: int,
        *,
        size_slack: float = SIZE_SLACK,
        screen_margin: float = SCREEN_MARGIN,
    ):
        if budget < 1:
            raise ValueError("a search needs a budget of at least one full evaluation")
        if len({c.id for c in candidates}) != len(candidates):
            raise ValueError("candidate ids must be unique")
        unknown = math.inf  # candidates without an estimate go last, in the order given
        self.candidates = sorted(candidates, key=lambda c: unknown if c.estimated_mb is None else c.estimated_mb)
        self._by_id = {c.id: c for c in self.candidates}
        self.objective = objective
        self.lower_is_better = lower_is_better
        self.budget = budget
        self.size_slack = size_slack
        self.screen_margin = screen_margin
        self.proxies: dict[str, ProxyMeasurement] = {}
        self.full: dict[str, FullMeasurement] = {}

    # -- what was measured

    def record_proxy(self, candidate: str, measured: ProxyMeasurement) -> None:
        self.proxies[candidate] = measured

    def record_full(self, candidate: str, measured: FullMeasurement) -> None:
        if len(self.full) >= self.budget and candidate not in self.full:
            raise ValueError(f"the budget of {self.budget} full evaluations is spent")
        self.full[candidate] = measured

    # -- the rules

    @property
    def by_size(self) -> bool:
        return self.objective in SIZE_OBJECTIVES

    def _measured(self, candidate: str) -> float | None:
        screened = self.proxies.get(candidate)
        return screened.size_mb if screened else None

    def _predicted(self, candidate: str) -> float | None:
        """The estimate corrected by the smallest measured/estimated ratio of the method's screened candidates."""
        own = self._by_id[candidate]
        if own.estimated_mb is None:
            return None
        ratios = [
            measured / c.estimated_mb
            for c in self.candidates
            if c.method == own.method and c.estimated_mb and (measured := self._measured(c.id)) is not None
        ]
        return own.estimated_mb * min(ratios) if ratios else None

    def size(self, candidate: str) -> tuple[float | None, str]:
        """The candidate's size in MB and how it is known: ``size`` (measured), ``predicted size``, or unknown."""
        measured = self._measured(candidate)
        if measured is not None:
            return measured, "size"
        predicted = self._predicted(candidate)
        return (predicted, "predicted size") if predicted is not None else (None, "unknown size")

    def order(self) -> list[Candidate]:
        """Smallest first: by measured or predicted size where known, else by estimate (see the module docstring)."""

        def key(candidate: Candidate) -> float:
            size, _ = self.size(candidate.id)
            if size is None:
                size = candidate.estimated_mb
            return math.inf if size is None else size

        return sorted(self.candidates, key=key)

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.lower_is_better else a > b

    def leader(self) -> str | None:
        """The best fully evaluated candidate that passed: best objective, then smaller, then first in order."""
        best: str | None = None
        for candidate in self.candidates:
            measured = self.full.get(candidate.id)
            if measured is None or not measured.passed or measured.objective is None:
                continue
            if best is None:
                best = candidate.id
                continue
            held = self.full[best].objective
            assert held is not None
            if self._better(measured.objective, held):
                best = candidate.id
        return best

    def _cannot_win(self, candidate: str, leader: str | None) -> bool:
        """Size objectives only: ``candidate`` is not smaller than a passing one (see the module docstring)."""
        if not self.by_size or leader is None or candidate == leader:
            return False
        theirs = self._measured(leader)
        mine, how = self.size(candidate)
        if theirs is None or mine is None:
            return False  # screening measures it
        return mine >= theirs if how == "size" else mine > theirs * (1 + self.size_slack)

    def _screened_by(self, candidate: str) -> str | None:
        """The failed candidate whose proxy this one's is clearly worse than, if any."""
        score = self.proxies[candidate].score
        if score is None:
            return None
        for other, measured in self.full.items():
            other_score = self.proxies[other].score if other in self.proxies else None
            if measured.quality_failure and other_score is not None and score > other_score * (1 + self.screen_margin):
                return other
        return None

    def next_step(self) -> Step | None:
        """The next thing to measure, or None when the search is decided."""
        leader = self.leader()
        for candidate in self.order():
            name = candidate.id
            if name in self.full or self._cannot_win(name, leader):
                continue
            if name not in self.proxies:
                return Step("proxy", name)
            if self.proxies[name].error is not None or self._screened_by(name) is not None:
                continue
            if len(self.full) < self.budget:
                return Step("evaluate", name)
        return None

    # -- the verdict

    def _decide(self, candidate: str, winner: str | None) -> Decision:
        proxy = self.proxies.get(candidate)
        full = self.full.get(candidate)
        if candidate == winner:
            assert full is not None
            goal = "smallest" if self.by_size else ("lowest" if self.lower_is_better else "highest")
            return Decision(
                candidate,
                Outcome.WINNER,
                f"{goal} {self.objective} ({_fmt(full.objective)}) that meets every constraint",
            )
        if full is not None:
            if not full.passed:
                return Decision(candidate, Outcome.FAILED, full.unmet or "a constraint failed")
            assert winner is not None  # a passing candidate that is not the winner lost to one
            held = self.full[winner].objective
            outcome = Outcome.LARGER if self.by_size else Outcome.WORSE
            return Decision(
                candidate, outcome, f"passed, but {self.objective} {_fmt(full.objective)} vs {_fmt(held)} ({winner})"
            )
        if proxy is not None and proxy.error is not None:
            return Decision(candidate, Outcome.ERROR, proxy.error)
        if winner is not None and self._cannot_win(candidate, winner):
            mine, how = self.size(candidate)
            theirs = self._measured(winner)
            return Decision(candidate, Outcome.LARGER, f"{how} {_fmt(mine)} MB vs {_fmt(theirs)} MB ({winner})")
        if proxy is not None:
            by = self._screened_by(candidate)
            if by is not None:
                return Decision(
                    candidate,
                    Outcome.SCREENED,
                    f"proxy {_fmt(proxy.score)} worse than {_fmt(self.proxies[by].score)} of {by}, "
                    f"which failed: {self.full[by].unmet}",
                )
        return Decision(candidate, Outcome.BUDGET, f"{self.budget} full evaluations spent")

    def frontier(self) -> tuple[str, ...]:
        """Fully evaluated candidates no other one beats on both the objective and quality, best objective first."""
        points = [
            (name, m.objective, m.quality)
            for name, m in self.full.items()
            if m.objective is not None and m.quality is not None
        ]
        sign = 1 if self.lower_is_better else -1

        def dominated(point: tuple[str, float, float]) -> bool:
            _, objective, quality = point
            return any(
                sign * o <= sign * objective and q >= quality and (o, q) != (objective, quality) for _, o, q in points
            )

        kept = [p for p in points if not dominated(p)]
        return tuple(name for name, _, _ in sorted(kept, key=lambda p: sign * p[1]))

    def result(self) -> SearchResult:
        winner = self.leader()
        decisions = tuple(self._decide(c.id, winner) for c in self.order())
        exhaustive = len(self.full) == len(self.candidates)
        count = len(self.full)
        if winner is not None:
            summary = f"{winner} wins: {decisions[[d.candidate for d in decisions].index(winner)].reason}"
        elif any(d.outcome == Outcome.BUDGET for d in decisions):
            summary = f"no candidate met the constraints within {self.budget} full evaluations"
        else:
            unproven = [d.candidate for d in decisions if d.outcome in (Outcome.SCREENED, Outcome.ERROR)]
            summary = "no candidate in the space meets the constraints"
            if unproven:  # the proxy (or an error) ruled these out without a full evaluation: say so
                summary = "no fully evaluated candidate meets the constraints; not proven: " + ", ".join(unproven)
        summary += f" ({count} of {len(self.candidates)} candidates fully evaluated)"
        return SearchResult(winner, decisions, count, exhaustive, self.frontier(), summary)
