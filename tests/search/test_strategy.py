"""The search strategy on synthetic measurements: order, pruning, screening, budget, and the exhaustive grid."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from quantmill.search.strategy import (
    Candidate,
    FullMeasurement,
    Outcome,
    ProxyMeasurement,
    Search,
)

pytestmark = pytest.mark.fast


@dataclass(frozen=True)
class Truth:
    """A synthetic candidate: its estimated and real size, its quality and proxy (lower is better)."""

    estimated: float
    size: float
    quality: float
    proxy: float
    error: str | None = None


def run(search: Search, world: dict[str, Truth], threshold: float) -> list[tuple[str, str]]:
    """Drive ``search`` to the end against ``world`` (a candidate passes with quality ≥ threshold); the steps taken."""
    steps = []
    while (step := search.next_step()) is not None:
        truth = world[step.candidate]
        steps.append((step.kind, step.candidate))
        if step.kind == "proxy":
            search.record_proxy(step.candidate, ProxyMeasurement(truth.proxy, truth.size, truth.error))
        else:
            passed = truth.quality >= threshold
            unmet = "" if passed else f"acc min_recovery {threshold} (got {truth.quality})"
            search.record_full(
                step.candidate,
                FullMeasurement(truth.size, passed, unmet, quality_failure=not passed, quality=truth.quality),
            )
        assert len(steps) < 10 * len(world), "the search does not end"
    return steps


def make(world: dict[str, Truth], budget: int, objective: str = "size_mb", lower: bool = True) -> Search:
    candidates = [Candidate(name, truth.estimated) for name, truth in world.items()]  # one method
    return Search(candidates, objective, lower, budget)


def sizes_world(*qualities: float) -> dict[str, Truth]:
    """Candidates c0, c1, … of sizes 10, 20, …; a lower quality has a higher (worse) proxy."""
    return {f"c{i}": Truth(10.0 * (i + 1), 10.0 * (i + 1), q, 100 - q) for i, q in enumerate(qualities)}


def outcomes(search: Search) -> dict[str, Outcome]:
    return {d.candidate: d.outcome for d in search.result().decisions}


def test_smallest_first_stops_at_the_first_that_passes():
    world = sizes_world(0.5, 0.8, 0.95, 0.99)
    search = make(world, budget=10)
    steps = run(search, world, threshold=0.9)
    result = search.result()
    assert result.winner == "c2"
    assert steps == [
        ("proxy", "c0"),
        ("evaluate", "c0"),
        ("proxy", "c1"),
        ("evaluate", "c1"),
        ("proxy", "c2"),
        ("evaluate", "c2"),
    ]  # c3 is neither quantized nor evaluated: larger than a candidate that passed
    assert outcomes(search) == {
        "c0": Outcome.FAILED,
        "c1": Outcome.FAILED,
        "c2": Outcome.WINNER,
        "c3": Outcome.LARGER,
    }
    reasons = {d.candidate: d.reason for d in result.decisions}
    assert reasons["c0"] == "acc min_recovery 0.9 (got 0.5)"
    assert reasons["c3"] == "predicted size 40 MB vs 30 MB (c2)"
    assert reasons["c2"] == "smallest size_mb (30) that meets every constraint"
    assert result.full_evaluations == 3 and not result.exhaustive
    assert result.summary.startswith("c2 wins")


def test_the_budget_is_never_exceeded_and_the_rest_is_named():
    world = sizes_world(0.5, 0.6, 0.95, 0.99)
    search = make(world, budget=2)
    run(search, world, threshold=0.9)
    result = search.result()
    assert result.winner is None and result.full_evaluations == 2
    assert outcomes(search) == {
        "c0": Outcome.FAILED,
        "c1": Outcome.FAILED,
        "c2": Outcome.BUDGET,
        "c3": Outcome.BUDGET,
    }
    assert "within 2 full evaluations" in result.summary
    with pytest.raises(ValueError, match="budget of 2 full evaluations is spent"):
        search.record_full("c2", FullMeasurement(30.0, True))


def test_a_proxy_clearly_worse_than_a_failed_candidate_is_screened_out():
    world = {
        "small": Truth(10, 10, 0.5, proxy=10.0),
        "broken": Truth(20, 20, 0.4, proxy=10.5),  # 5 % worse than `small`, which failed
        "close": Truth(30, 30, 0.95, proxy=10.1),  # 1 %: within the margin, evaluated
    }
    search = make(world, budget=5)
    steps = run(search, world, threshold=0.9)
    assert ("evaluate", "broken") not in steps
    result = search.result()
    assert result.winner == "close"
    decision = next(d for d in result.decisions if d.candidate == "broken")
    assert decision.outcome == Outcome.SCREENED
    assert decision.reason == "proxy 10.5 worse than 10 of small, which failed: acc min_recovery 0.9 (got 0.5)"


def test_without_a_winner_the_summary_names_the_candidates_only_the_proxy_ruled_out():
    world = {"small": Truth(10, 10, 0.5, proxy=10.0), "broken": Truth(20, 20, 0.95, proxy=10.5)}
    search = make(world, budget=5)
    run(search, world, threshold=0.9)
    result = search.result()
    assert result.winner is None
    assert result.summary == (
        "no fully evaluated candidate meets the constraints; not proven: broken (1 of 2 candidates fully evaluated)"
    )


def test_a_failure_on_a_cost_metric_screens_nothing():
    world = {"small": Truth(10, 10, 0.5, proxy=10.0), "worse": Truth(20, 20, 0.95, proxy=12.0)}
    search = make(world, budget=5)
    search.record_proxy("small", ProxyMeasurement(10.0, 10))
    search.record_full("small", FullMeasurement(10, False, "decode_tok_s min 100", quality_failure=False))
    assert search.next_step() is not None and search.next_step().candidate == "worse"


def test_measured_sizes_correct_the_estimates_within_the_slack():
    world = {
        "a": Truth(estimated=20, size=20, quality=0.95, proxy=1),
        "b": Truth(estimated=21, size=18, quality=0.95, proxy=1),  # estimate 5 % over a's, really smaller
        "c": Truth(estimated=30, size=15, quality=0.95, proxy=1),  # predicted 43 % over b: not tried (the risk)
    }
    search = make(world, budget=5)
    steps = run(search, world, threshold=0.9)
    result = search.result()
    assert result.winner == "b"
    assert ("proxy", "c") not in steps
    reasons = {d.candidate: (d.outcome, d.reason) for d in result.decisions}
    assert reasons["a"] == (Outcome.LARGER, "passed, but size_mb 20 vs 18 (b)")
    # c's estimate × the smallest measured/estimated ratio of its method (18/21)
    assert reasons["c"] == (Outcome.LARGER, "predicted size 25.71 MB vs 18 MB (b)")
    assert [d.candidate for d in result.decisions] == ["b", "a", "c"]  # smallest first, by what is known


def test_a_method_whose_estimates_are_off_is_measured_before_it_is_ruled_out():
    """GGUF quantizes the embeddings that RTN keeps in the model's dtype: one method's estimates run low. A
    candidate of a method with no measured size yet is screened (which measures it) before it can lose on size."""
    world = {
        "rtn": Truth(estimated=10, size=16, quality=0.95, proxy=1),
        "gguf": Truth(estimated=12, size=11, quality=0.95, proxy=1),
        "gguf-big": Truth(estimated=20, size=19, quality=0.99, proxy=1),
    }
    candidates = [Candidate(name, truth.estimated, name.split("-")[0]) for name, truth in world.items()]
    search = Search(candidates, "size_mb", True, budget=5)
    steps = run(search, world, threshold=0.9)
    result = search.result()
    assert result.winner == "gguf"
    assert ("proxy", "gguf-big") not in steps  # its method's ratio (11/12) predicts 18.3 MB: larger than 11
    assert outcomes(search) == {"gguf": Outcome.WINNER, "rtn": Outcome.LARGER, "gguf-big": Outcome.LARGER}


def test_a_failed_quantization_costs_no_evaluation():
    world = {"a": Truth(10, 10, 0.95, 1, error="QuantizationError: boom"), "b": Truth(20, 20, 0.95, 1)}
    search = make(world, budget=1)
    run(search, world, threshold=0.9)
    assert search.result().winner == "b"
    assert outcomes(search)["a"] == Outcome.ERROR


def test_maximize_evaluates_every_survivor_and_takes_the_best():
    world = {
        "small": Truth(10, 10, 0.95, 1),
        "mid": Truth(20, 20, 0.95, 1),
        "big": Truth(30, 30, 0.5, 2),
    }
    speed = {"small": 90.0, "mid": 120.0, "big": 60.0}
    search = make(world, budget=5, objective="decode_tok_s", lower=False)
    while (step := search.next_step()) is not None:
        truth = world[step.candidate]
        if step.kind == "proxy":
            search.record_proxy(step.candidate, ProxyMeasurement(truth.proxy, truth.size))
        else:
            passed = truth.quality >= 0.9
            search.record_full(step.candidate, FullMeasurement(speed[step.candidate], passed, quality=truth.quality))
    result = search.result()
    assert result.winner == "mid" and result.exhaustive
    assert outcomes(search) == {"small": Outcome.WORSE, "mid": Outcome.WINNER, "big": Outcome.FAILED}


def test_frontier_of_an_exhaustive_search():
    search = make({}, budget=5)
    search.candidates = [Candidate(n, s) for n, s in (("a", 10), ("b", 20), ("c", 30))]
    for name, size, quality in (("a", 10.0, 0.5), ("b", 20.0, 0.4), ("c", 30.0, 0.9)):
        search.record_proxy(name, ProxyMeasurement(1, size))
        search.record_full(name, FullMeasurement(size, quality > 0.8, quality=quality))
    result = search.result()
    assert result.exhaustive
    assert result.frontier == ("a", "c")  # b is larger and worse than a


def exhaustive_winner(world: dict[str, Truth], threshold: float) -> str | None:
    """The grid's answer: the smallest candidate (by real size) that meets the threshold."""
    passing = [(t.size, name) for name, t in world.items() if t.quality >= threshold and t.error is None]
    return min(passing)[1] if passing else None


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_the_exhaustive_grid(seed):
    """On random grids where the estimate ranks sizes within the slack and the proxy ranks quality as the
    constraint does, the search finds the grid's winner with at most the budget, usually far fewer."""
    rng = random.Random(seed)
    world = {}
    for i in range(rng.randint(3, 14)):
        size = rng.uniform(5, 100)
        quality = min(1.0, size / 100 + rng.uniform(-0.3, 0.3))  # bigger is better, noisily
        world[f"c{i}"] = Truth(size * rng.uniform(0.97, 1.03), size, quality, proxy=10 - 5 * quality)
    threshold = rng.uniform(0.3, 0.9)
    search = make(world, budget=len(world))
    run(search, world, threshold)
    result = search.result()
    assert result.winner == exhaustive_winner(world, threshold)
    assert result.full_evaluations <= len(world)
    assert sorted(d.candidate for d in result.decisions) == sorted(world)


@pytest.mark.parametrize("budget", [1, 2, 3, 5])
def test_any_budget_is_respected(budget):
    rng = random.Random(budget)
    world = {f"c{i}": Truth(i + 1.0, i + 1.0, rng.random(), rng.random()) for i in range(12)}
    search = make(world, budget=budget)
    steps = run(search, world, threshold=0.95)
    assert sum(kind == "evaluate" for kind, _ in steps) <= budget
    assert search.result().full_evaluations <= budget
