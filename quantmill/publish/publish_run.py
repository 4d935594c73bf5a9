"""Publishing a finished run from its folder: ``quantmill publish RUN [--force VARIANT]``."""

from __future__ import annotations

from pathlib import Path

from quantmill.errors import PublishError
from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.publish.publisher import PublishResult, make_target, publish_variant, publishable, repo_id_for
from quantmill.quantize import read_artifact
from quantmill.recipe import load_recipe
from quantmill.runstore import Run


def publish_run(run_path: Path, *, force: list[str], target: str | None = None) -> list[PublishResult]:
    """Publish the run's passing variants, plus the ``force``d ones (marked as forced in their cards).

    Raises:
        PublishError: a forced variant does not exist or has no output, or a commit failed.
    """
    run = Run(Path(run_path))
    results = run.read_results()
    loaded = load_recipe(results["recipe_path"])
    variants = results["variants"]
    unknown = [v for v in force if v not in variants]
    if unknown:
        raise PublishError(f"no variant {', '.join(unknown)} in this run (variants: {', '.join(variants)})")
    chosen = publishable(variants, force)
    publisher = make_target(loaded, target)
    baseline = (results.get("baseline") or {}).get("evaluation")
    related = [
        {"name": v, "url": publisher.url(repo_id_for(loaded, loaded.variant(v))), "note": variants[v]["method"]}
        for v in chosen
    ]
    published = []
    for variant_id in chosen:
        entry = variants[variant_id]
        if not entry.get("artifact") or not entry.get("evaluation"):
            raise PublishError(f"{variant_id} has no quantized output or evaluation to publish ({entry.get('error')})")
        published.append(
            publish_variant(
                loaded,
                loaded.variant(variant_id),
                artifact_path=Path(entry["artifact"]),
                provenance=read_artifact(Path(entry["artifact"])).provenance,
                evaluation=EvaluationResult.from_dict(entry["evaluation"]),
                baseline=EvaluationResult.from_dict(baseline) if baseline else None,
                verdict=Verdict.from_dict(entry["verdict"]),
                revision=results["model"]["revision"],
                target=publisher,
                run_id=results["run_id"],
                force=variant_id in force,
                related=[link for link in related if link["name"] != variant_id],
            )
        )
    return published
