"""Model cards built only from what this run measured.

Metadata goes through huggingface_hub's ``ModelCardData`` (with ``EvalResult``
for every task metric, so the Hub shows a model-index); the body is the Jinja
template shipped in ``quantmill/templates`` (or the recipe's own). Every number
in a card comes from the variant's provenance, evaluation or verdict. What is
particular to a method (usage snippet, library name, tags, file table, notes)
comes from its spec and its output format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from quantmill.evaluation.results import EvaluationResult
from quantmill.gates import Verdict
from quantmill.metrics import split_task_metric
from quantmill.plan import variant_setting
from quantmill.publish.sandbox import render_model_card
from quantmill.recipe.checks import is_local_model
from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant


@dataclass
class CardInputs:
    """Everything a card may say, all measured or declared by this run."""

    loaded: LoadedRecipe
    variant: Variant
    repo_id: str
    provenance: dict[str, Any]
    evaluation: EvaluationResult
    baseline: EvaluationResult | None
    verdict: Verdict
    license: str
    revision: str
    forced: bool = False
    related: list[dict[str, str]] = field(default_factory=list)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _eval_rows(inputs: CardInputs) -> list[dict[str, str]]:
    rows = []
    # sorted: the record on disk keeps metrics sorted, and a card rebuilt from it (``publish RUN``)
    # must be byte-identical to the one the run built, or republishing is not a no-op
    for metric, measured in sorted(inputs.evaluation.metrics.items()):
        if metric in (
            "size_mb",
            "size_gb",
            "bits_per_weight",
            "load_s",
            "prefill_tok_s",
            "decode_tok_s",
            "peak_rss_gb",
        ):
            continue
        base = inputs.baseline.metrics.get(metric) if inputs.baseline else None
        recovery = _fmt(measured.value / base.value) if base and base.value else "n/a"
        rows.append(
            {
                "metric": metric,
                "baseline": _fmt(base.value if base else None),
                "value": _fmt(measured.value),
                "recovery": recovery,
                "stderr": _fmt(measured.stderr),
            }
        )
    return rows


_OUTCOME_WORDS = {"passed": "pass", "failed": "FAIL", "inconclusive": "INCONCLUSIVE"}


def _gate_rows(verdict: Verdict) -> list[dict[str, str]]:
    return [
        {
            "metric": o.metric,
            "rule": o.rule + (" (warn)" if o.level == "warn" else ""),
            "threshold": f"{o.threshold:g}",
            "observed": _fmt(o.observed),
            "baseline": _fmt(o.baseline),
            "outcome": _OUTCOME_WORDS[o.result] + (f" — {o.note}" if o.note else ""),
        }
        for o in verdict.outcomes
    ]


def _size_rows(inputs: CardInputs) -> list[tuple[str, str]]:
    names = {
        "size_mb": "weights on disk (MB)",
        "bits_per_weight": "bits per weight",
        "load_s": "load time (s)",
        "prefill_tok_s": "prefill (tokens/s)",
        "decode_tok_s": "decode (tokens/s)",
        "peak_rss_gb": "peak memory while evaluating (GB)",
    }
    rows = [
        (label, _fmt(inputs.evaluation.value(key))) for key, label in names.items() if key in inputs.evaluation.metrics
    ]
    rows.append(("quantization time (s)", _fmt(inputs.provenance.get("seconds"))))
    rows.append(("peak memory while quantizing (GB)", _fmt(inputs.provenance.get("peak_rss_bytes", 0) / 1e9)))
    return rows


def hub_base_model(loaded: LoadedRecipe) -> str | None:
    """The Hub id the card's ``base_model`` may name: ``model.base_model``, else the model id when it
    is a Hub id; None for a local folder without one (the Hub rejects a filesystem path there)."""
    model = loaded.recipe.model
    if model.base_model:
        return model.base_model
    return None if is_local_model(model.id, loaded.base_dir) else model.id


def card_metadata(inputs: CardInputs):
    from huggingface_hub import EvalResult, ModelCardData

    variant, loaded = inputs.variant, inputs.loaded
    spec = variant.spec
    results = []
    for metric, measured in sorted(inputs.evaluation.metrics.items()):
        split = split_task_metric(metric)
        if split is None:
            continue
        task, name = split
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=task,
                dataset_name=task,
                metric_type=name,
                metric_value=measured.value,
            )
        )
    if "ppl" in inputs.evaluation.metrics and loaded.recipe.evaluation.perplexity:
        corpus = loaded.recipe.evaluation.perplexity.dataset
        name = corpus.hub or Path(corpus.path or "corpus").stem
        results.append(
            EvalResult(
                task_type="text-generation",
                dataset_type=name,
                dataset_name=name,
                metric_type="perplexity",
                metric_value=inputs.evaluation.value("ppl"),
            )
        )
    bits = getattr(variant.params, "bits", None)
    tags = ["quantmill", variant.method, *spec.output_format.tags]
    if bits is not None:
        tags.append(f"{bits}-bit")
    base_model = hub_base_model(loaded)
    return ModelCardData(
        base_model=base_model,
        base_model_relation="quantized" if base_model else None,
        quantized_by="quantmill",
        library_name=spec.output_format.library_name,
        pipeline_tag="text-generation",
        license=inputs.license,
        tags=tags,
        model_name=inputs.repo_id.split("/")[-1],
        eval_results=results or None,
        quantmill={
            "variant": variant.id,
            "recipe": loaded.name,
            "recipe_sha256": loaded.sha256,
            "verdict": inputs.verdict.status,
            "forced": inputs.forced,
        },
    )


def layer_precision_section(variant: Variant, provenance: dict[str, Any]) -> dict[str, str]:
    """The card's "Per-layer precision" section (a table) for a variant whose layers differ in precision."""
    rows = variant.spec.layer_precision(variant.params, provenance.get("details") or {})
    if not rows:
        return {}
    lines = ["| precision | layers | count |", "|---|---|---|"]
    lines += [f"| {row['precision']} | {row['layers']} | {row['count']} |" for row in rows]
    return {"Per-layer precision": "\n".join(lines)}


def _template_text(loaded: LoadedRecipe) -> str:
    custom = loaded.recipe.publish.card_template
    if custom:
        return loaded.resolve(custom).read_text()
    return resources.files("quantmill").joinpath("templates/model_card.md.j2").read_text()


def render_card(inputs: CardInputs):
    """The variant's ``ModelCard`` (huggingface_hub), rendered from the template in Jinja's sandbox."""
    variant, loaded, provenance = inputs.variant, inputs.loaded, inputs.provenance
    calibration = provenance.get("calibration")
    calibration_text = (
        "none (this method does not calibrate)"
        if not calibration
        else f"{calibration['samples']} samples, {calibration['tokens']} tokens "
        f"from `{Path(calibration['source']).name}` "
        f"(fingerprint `{calibration['fingerprint'][:16]}`)"
    )
    row = _recipe_row(loaded, variant)
    versions = ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items() if v)
    output_format = variant.spec.output_format
    lm_eval = inputs.evaluation.details.get("lm_eval", {}).get("lm_eval_version")
    template = _template_text(loaded)
    return render_model_card(
        card_metadata(inputs),
        template,
        repo_name=inputs.repo_id.split("/")[-1],
        summary=(
            f"`{loaded.recipe.model.id}` quantized with **{variant.method}** ({variant_setting(variant)}), "
            f"variant `{variant.id}` of recipe `{loaded.name}`, made and measured by quantmill."
        ),
        forced=inputs.forced,
        usage=output_format.usage(inputs.repo_id, provenance),
        lm_eval_version=lm_eval,
        device=inputs.evaluation.details.get("device", "n/a"),
        eval_rows=_eval_rows(inputs),
        verdict=inputs.verdict.status,
        gate_rows=_gate_rows(inputs.verdict),
        size_rows=_size_rows(inputs),
        files=output_format.card_files(provenance),
        base_model=loaded.recipe.model.id,
        revision=inputs.revision,
        method=variant.method,
        output_format=output_format.name,
        parameters=json.dumps(variant.params.model_dump(mode="json"), sort_keys=True),
        calibration=calibration_text,
        method_notes=variant.spec.card_notes(variant.params, provenance.get("details") or {}),
        recipe_name=loaded.name,
        recipe_sha256=loaded.sha256[:16],
        recipe_excerpt=yaml.safe_dump(row, sort_keys=False).strip(),
        versions=versions,
        reproduce=f"quantmill run {loaded.path.name if loaded.path else 'recipe.yaml'} --only {variant.id}",
        related=inputs.related,
        extras={  # the measured sections last: a recipe's extra section of the same title cannot replace them
            **loaded.recipe.publish.card_extras,
            **layer_precision_section(variant, provenance),
            **search_section(loaded),
        },
    )


def _recipe_row(loaded: LoadedRecipe, variant: Variant) -> dict[str, Any]:
    """The recipe row that made the variant: a matrix row, or an entry of the search's space; for a
    mixed-precision candidate of a search (no row of its own), the row that makes it again."""
    if variant.row < 0:
        from quantmill.search.mixed import recipe_fragment

        return recipe_fragment(variant)
    data = yaml.safe_load(loaded.text)
    rows = data["search"]["space"] if loaded.recipe.search is not None else data["variants"]["methods"]
    return rows[variant.row] if 0 <= variant.row < len(rows) and isinstance(rows[variant.row], dict) else {}


def search_section(loaded: LoadedRecipe, found: str = "This variant") -> dict[str, str]:
    """The card's "Found by search" section, for the winner of a recipe's search (the only variant it publishes);
    ``found``: what the card calls it (a grouped GGUF repo's card names its file)."""
    from quantmill.plan import describe_gate

    search = loaded.recipe.search
    if search is None:
        return {}
    constraints = "; ".join(f"`{describe_gate(g)}`" for g in search.constraints)
    text = (
        f"{found} was found by search: the best under the goal **{search.objective.describe()}** that meets "
        f"every constraint ({constraints}), among the candidates of recipe `{loaded.name}`'s search space, with at "
        f"most {search.budget.full_evaluations} full evaluations. The run's report lists every candidate, its numbers "
        "and why it lost."
    )
    return {"Found by search": text}
