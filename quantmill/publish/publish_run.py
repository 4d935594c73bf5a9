"""Publishing from a run record: one variant as the pipeline does it, or a finished run's folder.

:func:`publish_recorded` publishes one variant from what its run recorded (its
output folder, evaluation and verdict); the pipeline calls it for every passing
variant, and ``quantmill publish RUN [--force VARIANT]`` (:func:`publish_run`)
for a finished run's, with the recipe the run saved.
"""

from __future__ import annotations

from pathlib import Path

from quantmill.errors import PublishError
from quantmill.publish.publisher import is_grouped, make_target, publish_variant, publishable, repo_id_for
from quantmill.publish.targets import Target
from quantmill.quantize import read_artifact
from quantmill.recipe.load import LoadedRecipe, validate_document
from quantmill.record import PublishOutcome, RunRecord, VariantStatus
from quantmill.runstore import Run
from quantmill.yamlio import load_yaml_text


def related_links(loaded: LoadedRecipe, record: RunRecord, variant_ids: list[str], target: Target) -> list[dict]:
    """The repos published together, so each card links to the others (each card leaves itself out)."""
    return [
        {"name": v, "url": target.url(repo_id_for(loaded, loaded.variant(v))), "note": record.variants[v].method}
        for v in variant_ids
    ]


def publish_recorded(
    loaded: LoadedRecipe,
    record: RunRecord,
    variant_id: str,
    target: Target,
    related: list[dict],
    *,
    force: bool = False,
) -> PublishOutcome:
    """Publish one variant of ``record`` (see :func:`~quantmill.publish.publisher.publish_variant`); a GGUF
    variant bound for the grouped ``{model}-GGUF`` repo publishes that repo (:mod:`quantmill.publish.gguf_repo`).

    Raises:
        PublishError: the variant has no output or evaluation, did not pass (unless
            ``force``), or the target refused the commit.
    """
    entry = record.variants[variant_id]
    if is_grouped(loaded, loaded.variant(variant_id)) and entry.artifact and entry.evaluation and record.model:
        from quantmill.publish.gguf_repo import publish_group

        if entry.status != VariantStatus.PASSED and not force:
            raise PublishError(f"{variant_id} is '{entry.status}': only variants that pass their gates are published")
        return publish_group(loaded, record, variant_id, target, force=force)
    if entry.artifact is None or entry.evaluation is None or entry.verdict is None or record.model is None:
        raise PublishError(f"{variant_id} has no quantized output or evaluation to publish ({entry.error})")
    return publish_variant(
        loaded,
        loaded.variant(variant_id),
        artifact_path=entry.artifact,
        provenance=read_artifact(entry.artifact).provenance,
        evaluation=entry.evaluation,
        baseline=record.baseline_evaluation(),
        verdict=entry.verdict,
        revision=record.model.revision,
        target=target,
        run_id=record.run_id,
        force=force,
        related=[link for link in related if link["name"] != variant_id],
    )


def recipe_of_run(run: Run, record: RunRecord) -> LoadedRecipe:
    """The recipe exactly as the run ran it: its snapshot ``recipe.yaml`` in the run folder.

    The recipe file may have changed or gone since; the snapshot is validated as if it
    still stood where the run's recipe did, so its relative paths (data, zoo, card
    template) resolve as they did and its name and operator grants are the same.

    Raises:
        PublishError: the run folder has no snapshot.
        RecipeError: the snapshot no longer validates (e.g. a data file it names is gone).
    """
    snapshot = run.path / "recipe.yaml"
    if not snapshot.is_file():
        raise PublishError(f"{run.path} has no recipe.yaml: the run's copy of its recipe is missing")
    text = snapshot.read_text(encoding="utf-8")
    recipe_path = Path(record.recipe_path)
    return validate_document(load_yaml_text(text, str(snapshot)), recipe_path.parent, recipe_path, text)


def publish_run(run_path: Path, *, force: list[str], target: str | None = None) -> list[PublishOutcome]:
    """Publish the run's passing variants, plus the ``force``d ones (marked as forced in their cards),
    with the recipe as the run saved it (:func:`recipe_of_run`), not the file as it is today.

    Raises:
        PublishError: a forced variant does not exist or has no output, or a commit failed.
    """
    run = Run(Path(run_path))
    record = run.read_record()
    loaded = recipe_of_run(run, record)
    unknown = [v for v in force if v not in record.variants]
    if unknown:
        raise PublishError(f"no variant {', '.join(unknown)} in this run (variants: {', '.join(record.variants)})")
    chosen = publishable(record.variants, force)
    publisher = make_target(loaded, target)
    related = related_links(loaded, record, chosen, publisher)
    return [
        publish_recorded(loaded, record, variant_id, publisher, related, force=variant_id in force)
        for variant_id in chosen
    ]
