"""What a search costs against the exhaustive grid over the same space, side by side in one run.

    python bench/search.py [--budget N] [--model demo|stories|both] [--mixed] [--out bench/results]

For each model: the same space, constraints and evaluation run twice through the recipe flow, each in a
fresh run store (nothing cached): once as a recipe with ``search:`` (objective ``minimize size_mb``), once as
a plain matrix of every candidate with the constraints as its gates. Reports full evaluations,
quantizations and wall time of each, their ratios, both winners (the grid's: the smallest passing variant by
measured size) and whether they agree; then the search again on its own store (everything cached).

``--mixed`` adds a ``mixed:`` GGUF entry to the search's space; the grid then also holds every candidate
that entry makes (:func:`quantmill.search.mixed.mixed_candidates`, written back as matrix rows with
``recipe_fragment``), so both cover the same space. The grid's rows are made after the search ran: the
sensitivity scan is paid once, by the search.

Models: the bundled demo model (tiny-llama, tiny_world_mc + perplexity), and the shared pretrained
``../shared/models/stories260K/hf`` (perplexity and greedy agreement only; skipped when absent). Writes
``search.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _env import REPO

from quantmill.testing.recipes import DEMO_DATA, DEMO_MODEL, DEMO_TASKS

STORIES = REPO.parent / "shared" / "models" / "stories260K" / "hf"
CORPUS = DEMO_DATA / "tiny_world_ppl.jsonl"

#: the ``mixed:`` entry ``--mixed`` adds to each scenario's space
MIXED = "    - {mixed: {method: gguf, types: [q2_k, q4_k, q6_k, q8_0]}}\n"

SCENARIOS: dict[str, dict[str, str]] = {
    "demo": {
        "model": f"{{id: {DEMO_MODEL}, dtype: float32}}",
        "evaluation": (
            f"  tasks: [tiny_world_mc]\n  include_paths: [{DEMO_TASKS}]\n  limit: 40\n  metrics: [size]\n"
            f"  perplexity: {{dataset: {{path: {CORPUS}}}, max_documents: 16}}\n"
        ),
        "space": (
            "    - {method: rtn, bits: [2, 4, 8], group_size: 64}\n"
            "    - {method: gguf, types: [q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, q8_0]}\n"
        ),
        "constraints": (
            "    - {metric: tiny_world_mc/acc, min_recovery: 0.95}\n    - {metric: greedy_agreement, min: 0.92}\n"
        ),
    },
    "stories": {
        "model": f"{{id: {STORIES}, dtype: float32}}",
        "evaluation": f"  metrics: [size]\n  perplexity: {{dataset: {{path: {CORPUS}}}, max_documents: 16}}\n",
        # in-features 64 and 172: per-channel RTN; llama.cpp's K-quants fall back per tensor
        "space": (
            "    - {method: rtn, bits: [2, 4, 8], group_size: -1}\n"
            "    - {method: gguf, types: [q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, q8_0]}\n"
        ),
        # with 'greedy_agreement min 0.8' too, every candidate of the grid failed (q5_k_m: 0.35): perplexity decides
        "constraints": "    - {metric: ppl, max_increase_pct: 5}\n",
    },
}


def recipe(scenario: dict[str, str], body: str) -> str:
    return (
        f"name: bench-search\nmodel: {scenario['model']}\ndevice: cpu\n"
        f"calibration: {{dataset: {{path: {DEMO_DATA / 'calibration.jsonl'}}}, num_samples: 32, seq_len: 64}}\n"
        f"evaluation:\n{scenario['evaluation']}{body}publish: {{target: none}}\n"
    )


def search_body(scenario: dict[str, str], budget: int) -> str:
    return (
        f"search:\n  objective: {{minimize: size_mb}}\n  constraints:\n{scenario['constraints']}"
        f"  space:\n{scenario['space']}  budget: {{full_evaluations: {budget}}}\n  proxy_documents: 4\n"
    )


def grid_body(scenario: dict[str, str], mixed_rows: str = "") -> str:
    space = scenario["space"].replace(MIXED, "") + mixed_rows
    return f"variants:\n  methods:\n{space}gates:\n{scenario['constraints']}"


def mixed_rows(text: str) -> str:
    """The matrix rows that make the search's mixed candidates (the scan is cached by then: the search ran)."""
    from quantmill.recipe import load_recipe_text
    from quantmill.search.mixed import mixed_candidates, recipe_fragment

    loaded = load_recipe_text(text, REPO)
    made = [v for space in loaded.mixed_spaces for v in mixed_candidates(loaded, space.model_dump(), "cpu")]
    return "".join(f"    - {json.dumps(recipe_fragment(v))}\n" for v in made)


def timed_run(text: str, folder: Path) -> tuple[dict[str, Any], float]:
    from quantmill.flows.recipe import run_recipe

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(text)
    start = time.perf_counter()
    record = run_recipe(str(path), runs_dir=str(folder / "runs"), publish=False)
    return record, time.perf_counter() - start


def grid_winner(record: dict[str, Any]) -> tuple[str | None, float | None]:
    """The smallest passing variant of the grid by measured size."""
    passing = [
        (entry["evaluation"]["metrics"]["size_mb"]["value"], name)
        for name, entry in record["variants"].items()
        if entry["status"] == "passed"
    ]
    return (min(passing)[1], min(passing)[0]) if passing else (None, None)


def warm_up(scenario: dict[str, str], work: Path) -> None:
    """A one-candidate search on a store of its own: the process's one-time costs (imports, lm-eval's task
    index, llama.cpp's first load) are paid here, not by whichever of the timed runs goes first."""
    one = {**scenario, "space": "    - {method: gguf, types: [q8_0]}\n"}
    timed_run(recipe(one, search_body(one, 1)), work)


def compare(name: str, scenario: dict[str, str], budget: int | None, work: Path) -> dict[str, Any]:
    candidates = len(_candidates(recipe(scenario, search_body(scenario, 1000))))
    mixed = MIXED in scenario["space"]
    budget = budget or (candidates + 4 * mixed)  # a mixed: entry makes up to `steps` (4) candidates
    warm_up(scenario, work / f"{name}-warm-up")
    searched, search_s = timed_run(recipe(scenario, search_body(scenario, budget)), work / f"{name}-search")
    rows = mixed_rows(recipe(scenario, search_body(scenario, budget))) if mixed else ""
    candidates += rows.count("\n")
    grid, grid_s = timed_run(recipe(scenario, grid_body(scenario, rows)), work / f"{name}-grid")
    _, rerun_s = timed_run(recipe(scenario, search_body(scenario, budget)), work / f"{name}-search")
    trace = searched["search"]
    winner, size = grid_winner(grid)
    quantized = sum(c["size_mb"] is not None for c in trace["candidates"])
    return {
        "model": name,
        "candidates": candidates,
        "budget": budget,
        "search": {
            "winner": trace["winner"],
            "winner_size_mb": next((c["size_mb"] for c in trace["candidates"] if c["id"] == trace["winner"]), None),
            "full_evaluations": trace["full_evaluations"],
            "quantizations": quantized,
            "wall_s": round(search_s, 1),
            "summary": trace["summary"],
            "outcomes": {c["id"]: f"{c['outcome']}: {c['reason']}" for c in trace["candidates"]},
        },
        "grid": {
            "winner": winner,
            "winner_size_mb": size,
            "full_evaluations": len(grid["variants"]),
            "quantizations": len(grid["variants"]),
            "wall_s": round(grid_s, 1),
            "verdicts": {n: e["status"] for n, e in grid["variants"].items()},
        },
        "agree": trace["winner"] == winner,
        "full_evaluations_ratio": round(trace["full_evaluations"] / max(len(grid["variants"]), 1), 3),
        "wall_ratio": round(search_s / grid_s, 3),
        "rerun_wall_s": round(rerun_s, 1),
    }


def _candidates(text: str) -> list[str]:
    from quantmill.recipe import load_recipe_text

    return [v.id for v in load_recipe_text(text, REPO).variants]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, help="full evaluations (default: as many as candidates)")
    parser.add_argument("--model", choices=("demo", "stories", "both"), default="both")
    parser.add_argument("--mixed", action="store_true", help="add a mixed: GGUF entry to the space (and grid)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    names = ["demo", "stories"] if args.model == "both" else [args.model]
    if "stories" in names and not (STORIES / "config.json").is_file():
        print(f"stories260K not found at {STORIES}: skipped")
        names.remove("stories")
    from prefect.testing.utilities import prefect_test_harness

    results = []
    # fresh run stores: every step of the search and of the grid computes (their caches live in their stores)
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        for name in names:
            scenario = SCENARIOS[name]
            if args.mixed:
                scenario = {**scenario, "space": scenario["space"] + MIXED}
            result = compare(name, scenario, args.budget, Path(tmp))
            results.append(result)
            s, g = result["search"], result["grid"]
            print(f"\n== {name}: {result['candidates']} candidates, budget {result['budget']}")
            print(
                f"search: winner {s['winner']} ({s['winner_size_mb']} MB), {s['full_evaluations']} full evaluations, "
                f"{s['quantizations']} quantizations, {s['wall_s']} s"
            )
            print(
                f"grid:   winner {g['winner']} ({g['winner_size_mb']} MB), {g['full_evaluations']} full evaluations, "
                f"{g['quantizations']} quantizations, {g['wall_s']} s"
            )
            print(
                f"ratios (search / grid): full evaluations {result['full_evaluations_ratio']}, "
                f"wall time {result['wall_ratio']}; agree on the winner: {result['agree']}; "
                f"search rerun (cached): {result['rerun_wall_s']} s"
            )
            for candidate, outcome in s["outcomes"].items():
                print(f"  {candidate:<14} {g['verdicts'].get(candidate, '?'):<8} {outcome}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
