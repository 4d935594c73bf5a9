"""Publishing from a run record: one variant as the pipeline does it, or a finished run's folder.

:func:`publish_recorded` publishes one variant from what its run recorded (its
output folder, evaluation and verdict); the pipeline calls it for every passing
variant, and ``quantmill publish RUN [--force VARIANT]`` (:func:`publish_run`)
for a finished run's, with the recipe the run saved.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace
from pathlib import Path

from quantmill.errors import PublishError, QuantmillError
from quantmill.publish.publisher import is_grouped, make_target, publish_variant, publishable, repo_id_for
from quantmill.publish.targets import Target
from quantmill.quantize import read_artifact
from quantmill.recipe.load import LoadedRecipe, validate_document
from quantmill.record import PublishOutcome, RunRecord, VariantStatus
from quantmill.report.quality import quality_metric
from quantmill.runstore import Run
from quantmill.yamlio import load_yaml_text


def related_links(loaded: LoadedRecipe, record: RunRecord, variant_ids: list[str], target: Target) -> list[dict]:
    """The repos published together, so each card links to the others (each card leaves itself out)."""
    return [
        {"name": v, "url": target.url(repo_id_for(loaded, loaded.variant(v))), "note": record.variants[v].method}
        for v in variant_ids
    ]


def prefer_when(record: RunRecord, this: str, other: str) -> str:
    """When to take variant ``other`` instead of ``this``, in the words of their measured numbers:
    less memory (smaller), lower latency (faster decoding), more accuracy (better quality metric)."""
    mine, theirs = record.variants[this].evaluation, record.variants[other].evaluation
    if mine is None or theirs is None:
        return "not measured"
    reasons = []
    size, other_size = mine.value("size_mb"), theirs.value("size_mb")
    if size is not None and other_size is not None and other_size < size:
        reasons.append(f"less memory ({other_size:.4g} MB against {size:.4g})")
    speed, other_speed = mine.value("decode_tok_s"), theirs.value("decode_tok_s")
    if speed is not None and other_speed is not None and other_speed > speed:
        reasons.append(f"lower latency ({other_speed:.4g} decode tokens/s against {speed:.4g})")
    quality = quality_metric(record)
    value, other_value = (mine.value(quality), theirs.value(quality)) if quality else (None, None)
    if (
        value is not None
        and other_value is not None
        and (other_value < value if quality == "ppl" else other_value > value)
    ):
        reasons.append(f"more accuracy ({quality} {other_value:.4g} against {value:.4g})")
    if not reasons:
        return "this variant is at least as small, fast and accurate as measured here"
    return "prefer it for " + ", ".join(reasons)


def _with_advice(record: RunRecord, variant_id: str, related: list[dict]) -> list[dict]:
    """The links for ``variant_id``'s card (itself left out), each saying when to prefer that sibling."""
    return [
        {**link, "note": f"{link['note']}; {prefer_when(record, variant_id, link['name'])}"}
        if link["name"] in record.variants
        else link
        for link in related
        if link["name"] != variant_id
    ]


def publish_recorded(
    loaded: LoadedRecipe,
    record: RunRecord,
    variant_id: str,
    target: Target,
    related: list[dict],
    *,
    force: Collection[str] = (),
) -> PublishOutcome:
    """Publish one variant of ``record`` (see :func:`~quantmill.publish.publisher.publish_variant`); a GGUF
    variant bound for the grouped ``{model}-GGUF`` repo publishes that repo (:mod:`quantmill.publish.gguf_repo`).

    ``force``: the variants this publish forces (``quantmill publish RUN --force …``); ``variant_id`` is
    published though it did not pass when it is among them, and a grouped repo keeps every forced type.

    Raises:
        PublishError: the variant has no output or evaluation, did not pass (unless
            forced), or the target refused the commit.
    """
    entry = record.variants[variant_id]
    forced = variant_id in force
    if is_grouped(loaded, loaded.variant(variant_id)) and entry.artifact and entry.evaluation and record.model:
        from quantmill.publish.gguf_repo import publish_group

        if entry.status != VariantStatus.PASSED and not forced:
            raise PublishError(f"{variant_id} is '{entry.status}': only variants that pass their gates are published")
        return publish_group(loaded, record, variant_id, target, forced=force)
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
        force=forced,
        related=_with_advice(record, variant_id, related),
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


def with_candidates_made_at_run_time(loaded: LoadedRecipe, record: RunRecord) -> LoadedRecipe:
    """``loaded`` with the variants its recipe does not list but its run made: a search's mixed candidates
    come from its sensitivity scan, so they are rebuilt from what their outputs record (method and
    parameters, which give the same id), judged by the search's rules as the run judged them."""
    from quantmill.recipe.load import search_gates
    from quantmill.recipe.matrix import Variant
    from quantmill.registry import get_method

    known = {variant.id for variant in loaded.variants}
    made: list[Variant] = []
    for variant_id, entry in record.variants.items():
        if variant_id in known or entry.artifact is None:
            continue
        try:
            provenance = read_artifact(entry.artifact).provenance
            spec = get_method(provenance["method"])
            params = spec.params.model_validate(provenance["parameters"])
        except (QuantmillError, KeyError, ValueError):
            continue  # publishing it says what is missing
        if spec.variant_id(params) == variant_id:
            made.append(Variant(variant_id, spec.name, params, search_gates(loaded.recipe), -1))
    return replace(loaded, variants=loaded.variants + tuple(made)) if made else loaded


def publish_run(run_path: Path, *, force: list[str], target: str | None = None) -> list[PublishOutcome]:
    """Publish the run's passing variants, plus the ``force``d ones (marked as forced in their cards),
    with the recipe as the run saved it (:func:`recipe_of_run`), not the file as it is today.

    Raises:
        PublishError: a forced variant does not exist or has no output, or a commit failed.
    """
    run = Run(Path(run_path))
    record = run.read_record()
    loaded = with_candidates_made_at_run_time(recipe_of_run(run, record), record)
    unknown = [v for v in force if v not in record.variants]
    if unknown:
        raise PublishError(f"no variant {', '.join(unknown)} in this run (variants: {', '.join(record.variants)})")
    chosen = publishable(record.variants, force)
    publisher = make_target(loaded, target)
    related = related_links(loaded, record, chosen, publisher)
    return [publish_recorded(loaded, record, variant_id, publisher, related, force=force) for variant_id in chosen]
