"""A recipe through the sequential pipeline (quantmill.pipeline.run_sequential), its outcomes as objects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.quantize import QuantizedArtifact, read_artifact
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.resolve import ResolvedModel


@dataclass
class Made:
    """One variant after quantize → evaluate → gate."""

    variant: Variant
    artifact: QuantizedArtifact
    result: EvaluationResult
    verdict: Verdict


@dataclass
class Staged:
    loaded: LoadedRecipe
    resolved: ResolvedModel
    baseline: EvaluationResult | None
    variants: dict[str, Made]


def run_stages(recipe_text: str, folder: Path, *, baseline: bool = True, servable: bool = False) -> Staged:
    """Write the recipe into ``folder`` and run it with ``run_sequential`` (no publishing; no servable check unless
    asked: its process start per variant is CI time that tests of other things need not spend), runs under ``folder/runs``.

    Raises AssertionError when a step failed, with the error the run recorded.
    """
    from quantmill.pipeline import run_sequential
    from quantmill.resolve import resolve_model

    (folder / "recipe.yaml").write_text(recipe_text)
    run = run_sequential(
        folder / "recipe.yaml", runs_dir=folder / "runs", publish=False, baseline=baseline, servable=servable
    )
    record = run.record
    assert record.baseline is not None and record.baseline.error is None, record.baseline
    made = {}
    for variant_id, entry in record.variants.items():
        assert entry.error is None and entry.artifact and entry.evaluation and entry.verdict, (variant_id, entry.error)
        made[variant_id] = Made(
            run.loaded.variant(variant_id), read_artifact(entry.artifact), entry.evaluation, entry.verdict
        )
    return Staged(run.loaded, resolve_model(run.loaded), record.baseline_evaluation(), made)
