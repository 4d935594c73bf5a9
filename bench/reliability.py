"""The large versions of the reliability tests: fuzzed recipes, kill -9 points, token leaks.

    python bench/reliability.py [--cases 10000] [--kill-points 20] [--seed 7] [--server]

Prints the figures: cases tried and tracebacks (must be 0), kill points survived,
leaks found (must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _env import REPO

SENTINEL = "hf_SENTINEL_reliability_0123456789"


def fuzz_recipes(cases: int, seed: int) -> dict:
    from quantmill.testing.fuzzing import fuzz

    tracebacks = 0
    counts = {"valid": 0, "error": 0}
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    for chunk in range(0, cases, 100):  # chunks, so one traceback does not hide the rest
        try:
            for key, value in fuzz(recipes, min(100, cases - chunk), seed + chunk).items():
                counts[key] += value
        except Exception:  # a traceback reaching the user is exactly what is counted  # noqa: BLE001
            tracebacks += 1
    return {"cases": cases, **counts, "tracebacks": tracebacks}


def _records(runs: Path) -> list:
    """Every run record in the store, oldest run first (raises RunStoreError if one does not read)."""
    from quantmill.runstore import Run

    return [Run(results.parent).read_record() for results in sorted(runs.glob("*/*/results.json"))]


def _finished(runs: Path) -> set[str]:
    """Variants a (killed) run had recorded as finished, read from its results.json."""
    from quantmill.record import VariantStatus

    done: set[str] = set()
    for record in _records(runs):
        done |= {v for v, entry in record.variants.items() if entry.status != VariantStatus.PENDING}
    return done


@contextlib.contextmanager
def prefect_api(work: Path, server: bool) -> Iterator[dict[str, str]]:
    """The environment the runs get: Prefect's ephemeral server in each run (started anew by each, killed with it),
    or one long-lived ``prefect server start`` that every run reports to (``server``)."""
    env = {**os.environ, "HF_TOKEN": SENTINEL, "PREFECT_HOME": str(work / "prefect")}
    env.pop("PREFECT_API_URL", None)
    if not server:
        yield env
        return
    from quantmill.tasks.limits import MACHINE_LIMITS_ENV
    from quantmill.testing.prefect_server import start_prefect_server

    process, server_env = start_prefect_server(work / "prefect")
    try:
        # a killed run's heavy slot is a file lock the kill frees, as on the ephemeral server; the server's
        # own slot would stay taken until its lease expired, and the rerun would wait for that
        yield {**env, "PREFECT_API_URL": server_env["PREFECT_API_URL"], MACHINE_LIMITS_ENV: "1"}
    finally:
        process.terminate()
        process.wait(timeout=30)


def kill_points(points: int, seed: int, work: Path, env: dict[str, str]) -> dict:
    """kill -9 a demo-like run at seeded random moments, each in a fresh run store, then rerun it.

    A point survives when the rerun completes, redoes no variant the killed run had
    finished, every results.json parses, and no incomplete output folder stands where
    a complete one belongs.
    """
    from quantmill.errors import RunStoreError
    from quantmill.testing.recipes import fast_recipe

    recipe = work / "recipe.yaml"
    recipe.write_text(
        fast_recipe("    - {method: rtn, bits: [4, 8], group_size: 128}\n    - {method: bnb, type: int8}\n")
    )
    command = [sys.executable, "-m", "quantmill.cli", "run", str(recipe)]
    start = time.perf_counter()
    subprocess.run(command, env={**env, "QUANTMILL_RUNS_DIR": str(work / "timing")}, capture_output=True, check=True)
    full = time.perf_counter() - start
    rng = random.Random(seed)
    survived, problems, printed_leaks = 0, [], 0
    for point in range(points):
        runs = work / f"runs-{point}"
        point_env = {**env, "QUANTMILL_RUNS_DIR": str(runs)}
        process = subprocess.Popen(
            command, env=point_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        at = rng.uniform(0.5, full)
        time.sleep(at)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        try:
            before = _finished(runs)
        except RunStoreError:
            before, problems = set(), [*problems, f"point {point}: results.json unreadable after the kill"]
        rerun = subprocess.run(command, env=point_env, capture_output=True, text=True)
        why = []
        printed_leaks += SENTINEL in rerun.stdout + rerun.stderr
        if rerun.returncode != 0:
            why.append(f"rerun exit {rerun.returncode}: {rerun.stderr[-300:]}")
        try:
            records = _records(runs)
        except RunStoreError as exc:
            why.append(str(exc))
            records = []
        if records:
            latest = records[-1].variants
            redone = [v for v in before if v not in latest or not latest[v].fully_cached]
            if redone:
                why.append(f"finished before the kill but redone: {redone}")
        for artifact in (runs / "flowtest" / "artifacts").glob("*"):
            if not artifact.name.startswith(".") and not (artifact / "COMPLETE").is_file():
                why.append(f"{artifact.name} has no COMPLETE marker")
        print(
            json.dumps(
                {
                    "point": point,
                    "killed_at_seconds": round(at, 1),
                    "finished_before_kill": sorted(before),
                    "survived": not why,
                    "why": why,
                }
            ),
            flush=True,
        )
        survived += not why
        problems += [f"point {point}: {w}" for w in why]
    leaks = [str(p) for p in work.rglob("*") if p.is_file() and SENTINEL.encode() in p.read_bytes()]
    return {
        "kill_points": points,
        "survived": survived,
        "full_run_seconds": round(full, 1),
        "leaks": len(leaks) + printed_leaks,
        "problems": problems[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--kill-points", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--server",
        action="store_true",
        help="every run reports to one `prefect server start` (as after `quantmill server start`) instead of "
        "starting Prefect's ephemeral server itself: ~13 s less a run",
    )
    args = parser.parse_args()
    figures = {"fuzz": fuzz_recipes(args.cases, args.seed) if args.cases else {"cases": 0, "tracebacks": 0}}
    print(json.dumps(figures["fuzz"]), flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="quantmill-reliability-") as tmp,
        prefect_api(Path(tmp), args.server) as env,
    ):
        figures["crash"] = kill_points(args.kill_points, args.seed, Path(tmp), env)
    print(json.dumps(figures["crash"]))
    failed = (
        figures["fuzz"]["tracebacks"] or figures["crash"]["leaks"] or figures["crash"]["survived"] < args.kill_points
    )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
