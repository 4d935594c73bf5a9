"""Expand the recipe's matrix rows into named variants.

A row such as ``{method: gptq, bits: [4, 8], group_size: 128}`` becomes one
variant per combination of its list-valued axes, each with a stable id
(``gptq-w4-g128``). ``variants.overrides`` then changes non-axis fields or gates
of single variants; an override never renames a variant.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from quantmill.errors import RecipeProblem, UnknownMethodError
from quantmill.methods.spec import MethodParams, MethodSpec
from quantmill.progress import BASELINE
from quantmill.recipe.errors import problems_from_validation
from quantmill.recipe.schema import SLUG, GateRule
from quantmill.registry import did_you_mean, get_method, method_names
from quantmill.trust.operator import get_operator
from quantmill.yamlio import LocatedDocument

ROW_KEYS = ("method", "id", "gates")
_GATES = TypeAdapter(list[GateRule])


@dataclass(frozen=True)
class Variant:
    """One quantized model to produce: a method, its parameters and its gates.

    Attributes:
        id: stable id, unique in the recipe (``gptq-w4-g128``).
        method: the registered method name.
        params: validated method parameters.
        gates: the rules that apply to this variant (global ones, replaced per
            metric by the variant's own).
        row: index of the matrix row it came from.
    """

    id: str
    method: str
    params: MethodParams
    gates: tuple[GateRule, ...]
    row: int

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)


def _validate_gates(raw: Any, doc: LocatedDocument, loc: tuple, problems: list[RecipeProblem]) -> list[GateRule]:
    try:
        return _GATES.validate_python(raw)
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, doc, GateRule, loc))
        return []


def merge_gates(global_gates: list[GateRule], own: list[GateRule]) -> tuple[GateRule, ...]:
    replaced = {g.metric for g in own}
    return tuple([g for g in global_gates if g.metric not in replaced] + own)


def _spec_for_row(row: Any, doc: LocatedDocument, loc: tuple, problems: list[RecipeProblem]) -> MethodSpec | None:
    if not isinstance(row, dict):
        problems.append(doc.problem(loc, "each matrix row must be a mapping", "e.g. {method: gptq, bits: 4}"))
        return None
    method = row.get("method")
    if method is None:
        problems.append(doc.problem(loc, "required key 'method' is missing", f"one of {', '.join(method_names())}"))
        return None
    if not isinstance(method, str):
        problems.append(doc.problem(loc + ("method",), f"method must be a name, got {method!r}"))
        return None
    try:
        return get_method(method)
    except UnknownMethodError:
        hint = did_you_mean(method, method_names())
        problems.append(
            doc.problem(
                loc + ("method",),
                f"unknown method '{method}'",
                "; ".join(x for x in (hint, f"available: {', '.join(method_names())}") if x),
            )
        )
        return None


def _expand_row(
    section: tuple[str, ...],
    index: int,
    row: dict,
    spec: MethodSpec,
    global_gates: list[GateRule],
    doc: LocatedDocument,
    problems: list[RecipeProblem],
) -> list[Variant]:
    loc: tuple[str | int, ...] = (*section, index)
    own_gates = _validate_gates(row.get("gates", []), doc, loc + ("gates",), problems)
    params = {k: v for k, v in row.items() if k not in ROW_KEYS}
    written_as: dict[str, str] = {}  # axis -> the key the recipe used for it
    for axis in spec.params.axes:
        plural = axis + "s"  # `types: [q4_k_m, q8_0]` reads better than `type: [...]`
        if plural in params and plural not in spec.params.model_fields:
            if axis in params:
                problems.append(doc.problem(loc + (plural,), f"give '{axis}' or '{plural}', not both"))
                return []
            params[axis] = params.pop(plural)
            written_as[axis] = plural
    axes: list[tuple[str, list[tuple[int | None, Any]]]] = []
    for axis in spec.params.axes:
        value = params.get(axis)
        if isinstance(value, list):
            if not value:
                problems.append(doc.problem(loc + (axis,), f"'{axis}' is an empty list", "give at least one value"))
                return []
            axes.append((axis, list(enumerate(value))))
        elif axis in params:
            axes.append((axis, [(None, value)]))
    variants: list[Variant] = []
    seen_messages: set[tuple[str, str]] = set()
    combos = list(itertools.product(*(values for _, values in axes))) if axes else [()]
    for combo in combos:
        chosen = dict(params)
        list_index: dict[str, int] = {}
        for (axis, _), (position, value) in zip(axes, combo, strict=True):
            chosen[axis] = value
            if position is not None:
                list_index[axis] = position
        try:
            validated = spec.params.model_validate(chosen)
        except ValidationError as exc:
            for problem in problems_from_validation(exc, doc, spec.params, loc):
                field = problem.path.rsplit(".", 1)[-1]
                key = written_as.get(field, field)
                if field in list_index:
                    problem = doc.problem(loc + (key, list_index[field]), problem.message, problem.hint)
                elif key != field:
                    problem = doc.problem(loc + (key,), problem.message, problem.hint)
                if (problem.path, problem.message) not in seen_messages:
                    seen_messages.add((problem.path, problem.message))
                    problems.append(problem)
            continue
        variants.append(Variant(spec.variant_id(validated), spec.name, validated, (), index))
    explicit = row.get("id")
    if explicit is not None:
        if not isinstance(explicit, str) or not SLUG.match(explicit):
            problems.append(
                doc.problem(loc + ("id",), f"invalid variant id {explicit!r}", "use a-z, 0-9, '.', '_', '-'")
            )
        elif explicit == BASELINE:
            problems.append(
                doc.problem(
                    loc + ("id",), "'baseline' is reserved for the unquantized model", "choose another variant id"
                )
            )
        elif len(combos) != 1:
            problems.append(
                doc.problem(
                    loc + ("id",),
                    f"'id' names one variant but this row expands to {len(combos)}",
                    "split the row, or drop 'id' to use generated ids",
                )
            )
        elif variants:
            variants = [Variant(explicit, spec.name, variants[0].params, (), index)]
    merged = merge_gates(global_gates, own_gates)
    return [Variant(v.id, v.method, v.params, merged, v.row) for v in variants]


def _apply_override(variant: Variant, changes: Any, doc: LocatedDocument, problems: list[RecipeProblem]) -> Variant:
    loc = ("variants", "overrides", variant.id)
    if not isinstance(changes, dict):
        problems.append(doc.problem(loc, "an override must be a mapping of fields to new values"))
        return variant
    spec = variant.spec
    for key in changes:
        if key in spec.params.axes:
            problems.append(
                doc.problem(
                    loc + (key,),
                    f"'{key}' is a matrix axis and cannot be overridden",
                    "change it in the matrix row, which gives the variant a new id",
                )
            )
        elif key in ("method", "id"):
            problems.append(doc.problem(loc + (key,), f"'{key}' cannot be overridden", "edit the matrix row"))
    if any(p.path.startswith(f"variants.overrides.{variant.id}") for p in problems):
        return variant
    params = {k: v for k, v in changes.items() if k != "gates"}
    try:
        new_params = spec.params.model_validate({**variant.params.model_dump(), **params})
    except ValidationError as exc:
        problems.extend(problems_from_validation(exc, doc, spec.params, loc))
        return variant
    gates = variant.gates
    if "gates" in changes:
        gates = merge_gates(list(variant.gates), _validate_gates(changes["gates"], doc, loc + ("gates",), problems))
    return Variant(variant.id, variant.method, new_params, gates, variant.row)


def _row_size(row: Any) -> int:
    """How many variants a matrix row expands to, from its axis lengths alone (nothing is built)."""
    if not isinstance(row, dict) or not isinstance(row.get("method"), str):
        return 1
    try:
        axes = get_method(row["method"]).params.axes
    except UnknownMethodError:
        return 1
    values = [row.get(axis, row.get(axis + "s")) for axis in axes]
    return math.prod(max(len(value), 1) for value in values if isinstance(value, list))


def matrix_size(rows: list[Any]) -> int:
    """The number of variants ``rows`` expand to, computed before expanding."""
    return sum(_row_size(row) for row in rows)


def expand_rows(
    doc: LocatedDocument,
    section: tuple[str, ...],
    rows: list[tuple[int, Any]],
    global_gates: list[GateRule],
    problems: list[RecipeProblem],
) -> list[Variant]:
    """The variants that matrix ``rows`` (``(index, row)`` pairs of the list at ``section`` in ``doc``) expand to;
    problems found are appended to ``problems``.

    The rows' size is computed from their axis lengths first: more variants than the
    operator's ``max_variants`` are refused with their count and never expanded.
    """
    size, limit = matrix_size([row for _, row in rows]), get_operator().max_variants
    if size > limit:
        problems.append(
            doc.problem(
                section,
                f"the matrix expands to {size} variants, more than the limit of {limit}",
                "split the recipe or shorten its axis lists (the operator sets QUANTMILL_MAX_VARIANTS)",
            )
        )
        return []
    variants: list[Variant] = []
    first_row_of: dict[str, int] = {}
    for index, row in rows:
        spec = _spec_for_row(row, doc, (*section, index), problems)
        if spec is None:
            continue
        for variant in _expand_row(section, index, row, spec, global_gates, doc, problems):
            if variant.id in first_row_of:
                problems.append(
                    doc.problem(
                        (*section, index),
                        f"duplicate variant id '{variant.id}'",
                        f"row {first_row_of[variant.id]} already makes it; remove one or set a distinct 'id'",
                    )
                )
                continue
            first_row_of[variant.id] = index
            variants.append(variant)
    return variants


def expand_matrix(doc: LocatedDocument, global_gates: list[GateRule], problems: list[RecipeProblem]) -> list[Variant]:
    """All variants of the recipe's matrix (``variants:``) in ``doc``, overrides applied (:func:`expand_rows`)."""
    section = doc.data.get("variants") if isinstance(doc.data, dict) else None
    if not isinstance(section, dict) or not isinstance(section.get("methods"), list):
        return []  # the schema check reports the missing or malformed section
    variants = expand_rows(doc, ("variants", "methods"), list(enumerate(section["methods"])), global_gates, problems)
    overrides = section.get("overrides") or {}
    if isinstance(overrides, dict):
        by_id = {v.id: i for i, v in enumerate(variants)}
        for variant_id, changes in overrides.items():
            if variant_id not in by_id:
                hint = did_you_mean(variant_id, list(by_id))
                problems.append(
                    doc.problem(
                        ("variants", "overrides", variant_id),
                        f"no variant has the id '{variant_id}'",
                        "; ".join(x for x in (hint, f"variant ids: {', '.join(by_id) or 'none'}") if x),
                    )
                )
                continue
            i = by_id[variant_id]
            variants[i] = _apply_override(variants[i], changes, doc, problems)
    return variants
