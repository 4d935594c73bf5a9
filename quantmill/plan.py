"""The plan: what a run of a recipe will produce, before anything runs.

``quantmill plan`` renders it; ``--json`` writes :meth:`Plan.to_dict`, which
:meth:`Plan.from_dict` reads back unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from quantmill.recipe.load import LoadedRecipe
from quantmill.recipe.matrix import Variant
from quantmill.recipe.schema import MixedSpace
from quantmill.record import RunRecord

PLAN_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class PlannedVariant:
    """One row of the plan (a variant of the matrix, or a uniform candidate of the search).

    Attributes:
        id: the variant id.
        method: method name.
        setting: the variant's matrix axes, e.g. ``bits=4 group_size=128``.
        output_format: the name of the method's output format.
        bits_per_weight: nominal bits per quantized weight.
        expected_bytes: estimated size of the weights (None when the model's size is unknown).
        gates: the rules that apply, as text.
        publish_to: where an accepted variant would go, or None.
        cache: ``cached``, ``stale`` or ``not run``.
        gpu: how the method uses a GPU (``none``, ``optional``, ``required``).
        last_run: the variant's outcome in the recipe's latest completed run (``failed: tokenizer
            drift: …``), so a rerun's plan says what went wrong last time; None when it has not run.
    """

    id: str
    method: str
    setting: str
    output_format: str
    bits_per_weight: float
    expected_bytes: int | None
    gates: list[str]
    publish_to: str | None
    cache: str = "not run"
    gpu: str = "optional"
    last_run: str | None = None


@dataclass(frozen=True)
class PlannedSearch:
    """A recipe's search: its goal, budget and proxy; its uniform candidates are the plan's variants.

    Attributes:
        objective: ``minimize size_mb``.
        constraints: the rules the winner must pass, as text.
        budget: full evaluations at most.
        proxy: the screening proxy in words (None: the recipe has no perplexity corpus, nothing is screened).
        mixed: the space's mixed-precision entries, whose candidates are made at run time.
    """

    objective: str
    constraints: list[str]
    budget: int
    proxy: str | None
    mixed: list[str]


@dataclass(frozen=True)
class Plan:
    recipe: str
    model: str
    revision: str | None
    baseline_bytes: int | None
    variants: list[PlannedVariant]
    schema_version: int = PLAN_SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)
    search: PlannedSearch | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        fields = dict(data)
        fields["variants"] = [PlannedVariant(**v) for v in data["variants"]]
        if data.get("search") is not None:
            fields["search"] = PlannedSearch(**data["search"])
        return cls(**fields)


def describe_gate(gate) -> str:
    text = f"{gate.metric} {gate.rule} {gate.threshold:g}"
    if gate.significance:
        text += f" (noise {gate.significance:g}σ)"
    return text + (" [warn]" if gate.level == "warn" else "")


_SHORT = {"bits": "w{}", "group_size": "g{}", "weight_bits": "w{}"}


def is_mixed(variant: Variant) -> bool:
    """Whether the variant gives single layers their own precision: its per-layer map (the parameters a dump
    leaves out while empty, ``MethodParams.omitted_when_empty``) is not empty."""
    params = variant.params
    return any(getattr(params, name) for name in params.omitted_when_empty)


def variant_setting(variant: Variant) -> str:
    """The variant's matrix axes, compactly (``w4 g128``), ``+mix`` when layers have their own precision
    (``q2_k+mix``: the axes give the rest), then what it costs beyond quantizing, if anything."""
    params = variant.params
    setting = " ".join(_SHORT.get(axis, "{}").format(getattr(params, axis)) for axis in params.axes) or "-"
    if is_mixed(variant):
        setting += "+mix"
    cost = variant.spec.cost_note(params)
    return f"{setting} · {cost}" if cost else setting


def expected_bytes(loaded: LoadedRecipe, variant: Variant) -> int | None:
    """Quantized weights at the method's nominal bits, the rest kept at 16 bits."""
    shape = loaded.shape
    if shape is None or shape.parameters is None or shape.linear_parameters is None:
        return None
    bpw = variant.spec.average_bits_per_weight(variant.params, shape)
    quantized = shape.parameters if variant.spec.quantizes_embeddings else shape.linear_parameters
    return int(quantized * bpw / 8 + (shape.parameters - quantized) * 2)


def publish_destination(loaded: LoadedRecipe, variant: Variant) -> str | None:
    """Where the variant would be published: the repo the publisher writes (a GGUF type of a recipe
    without ``repo_name`` goes to the grouped ``{model}-GGUF`` repo), as a reviewer should see it."""
    from quantmill.publish.publisher import repo_id_for

    publish = loaded.recipe.publish
    if publish.target == "none":
        return None
    repo = repo_id_for(loaded, variant)
    if publish.target == "local":
        return f"{loaded.resolve(publish.path)}/{repo}"
    return f"{(publish.endpoint or 'https://huggingface.co').rstrip('/')}/{repo}"


def method_notes(loaded: LoadedRecipe) -> list[str]:
    """What the recipe's methods need that this machine or recipe lacks: backend packages, a GPU."""
    notes = []
    for spec in {v.method: v.spec for v in loaded.variants}.values():
        missing = spec.missing_packages()
        if missing:
            notes.append(
                f"{spec.name} needs {', '.join(missing)}, not installed here: pip install 'quantmill[{spec.extra}]'"
            )
        if spec.gpu == "required" and loaded.recipe.device == "cpu":
            notes.append(f"{spec.name} needs a GPU, and this recipe runs on the CPU")
    return notes


#: what every variant must prove, whatever its recipe says (``quantmill.evaluation``)
BUILT_IN_CHECKS = (
    "tokenizer fidelity (the variant's tokenizer splits the evaluation texts as the base model's)",
    "servable (a fresh process loads the upload as the card says and generates; greedy_agreement)",
)


def last_outcomes(record: RunRecord | None) -> dict[str, str]:
    """Each variant's outcome in ``record`` as one line: its status, and its error when it has one."""
    if record is None:
        return {}
    return {
        variant_id: f"{entry.status.value}: {entry.error}" if entry.error else entry.status.value
        for variant_id, entry in record.variants.items()
    }


def describe_mixed(space: MixedSpace) -> str:
    """A mixed-precision space entry in words: ``gptq bits 2/4/8 g64, 4 steps``."""
    levels = f"bits {'/'.join(map(str, space.bits))}" if space.bits else f"types {'/'.join(space.types or [])}"
    group = f" g{space.group_size}" if space.group_size else ""
    return f"{space.method} {levels}{group}, {space.steps} steps"


def plan_search(loaded: LoadedRecipe) -> PlannedSearch | None:
    from quantmill.search.proxy import describe_proxy

    search = loaded.recipe.search
    if search is None:
        return None
    return PlannedSearch(
        objective=search.objective.describe(),
        constraints=[describe_gate(g) for g in search.constraints],
        budget=search.budget.full_evaluations,
        proxy=describe_proxy(loaded),
        mixed=[f"{describe_mixed(space)}: candidates made at run time" for space in loaded.mixed_spaces],
    )


def build_plan(
    loaded: LoadedRecipe, cache_status: dict[str, str] | None = None, last_run: dict[str, str] | None = None
) -> Plan:
    """The plan for ``loaded``; ``cache_status`` maps variant ids to their cache state, ``last_run`` to
    their outcome in the latest completed run (:func:`last_outcomes`)."""
    shape = loaded.shape
    rows = [
        PlannedVariant(
            id=v.id,
            method=v.method,
            setting=variant_setting(v),
            output_format=v.spec.output_format.name,
            bits_per_weight=round(v.spec.average_bits_per_weight(v.params, shape), 3),
            expected_bytes=expected_bytes(loaded, v),
            gates=[describe_gate(g) for g in v.gates],
            publish_to=publish_destination(loaded, v),
            cache=(cache_status or {}).get(v.id, "not run"),
            gpu=v.spec.gpu,
            last_run=(last_run or {}).get(v.id),
        )
        for v in loaded.variants
    ]
    notes = []
    if shape is None:
        notes.append("model not on disk: sizes are unknown until the first run downloads it")
    if loaded.recipe.model.trust_remote_code:
        notes.append("trust_remote_code is ON: the model's own Python code will run")
    notes.extend(method_notes(loaded))
    if loaded.recipe.search is not None and loaded.recipe.evaluation.perplexity is None:
        notes.append("the search has no screening proxy: add evaluation.perplexity to screen candidates cheaply")
    return Plan(
        recipe=loaded.name,
        model=loaded.recipe.model.id,
        revision=loaded.recipe.model.revision,
        baseline_bytes=shape.parameters * 2 if shape and shape.parameters else None,
        variants=rows,
        notes=notes,
        search=plan_search(loaded),
    )
