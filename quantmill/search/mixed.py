"""Mixed-precision candidates: per-layer precision chosen from a sensitivity scan, as ordinary variants.

:func:`mixed_candidates` turns a search's ``mixed:`` entry into variants: it scans each layer's
sensitivity (:mod:`quantmill.search.sensitivity`), then allocates precision greedily by sensitivity per
byte (:func:`allocation_path`) and keeps, for each of ``steps`` target average precisions between the
lowest and the highest level, the best assignment that fits. Each becomes a variant with the
per-layer map in its parameters (``layer_bits`` or ``tensor_types``) and a stable id;
:func:`recipe_fragment` writes the ``variants.methods`` row that makes it again.

Greedy, not a knapsack: moving the unit with the largest loss saved per byte spent is the
Lagrangian solution of the allocation (optimal on each unit's convex hull, as llama.cpp's
target-bpw proposal and HAWQ-style allocators do), and one pass yields the whole nested path of
assignments, so every target reads off the same path. An exact knapsack would optimise the
additive-loss model more tightly than that model is accurate (layers' errors interact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantmill.errors import QuantizationError
from quantmill.methods.gguf import TENSOR_TYPES, model_tensors
from quantmill.methods.layers import linear_layers
from quantmill.methods.spec import scale_bits
from quantmill.recipe.load import search_gates
from quantmill.recipe.matrix import Variant
from quantmill.registry import get_method
from quantmill.search.sensitivity import Level, Sensitivity, Unit, cached_sensitivity

if TYPE_CHECKING:
    from quantmill.modelinfo import ModelShape
    from quantmill.recipe.load import LoadedRecipe

DEFAULT_BITS = (2, 4, 8)
DEFAULT_TYPES = ("q2_k", "q4_k", "q6_k", "q8_0")


def type_probe(tensor_type: str) -> tuple[int, int, bool]:
    """The RTN probe of a llama.cpp tensor type (a key of ``TENSOR_TYPES``, the one list of them): its bits,
    weights per scale and whether its grid is symmetric, from ggml's block layouts (``ggml-common.h``). A float
    type is not quantized; the legacy and IQ4 types scale blocks of 32 weights, the ``*_1`` ones with a minimum;
    K-quants scale sub-blocks of 16 weights (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K), those with a minimum
    (``dmin``: Q2_K, Q4_K, Q5_K) asymmetric."""
    if TENSOR_TYPES[tensor_type] >= 16:
        return 0, -1, True
    bits = int(next(c for c in tensor_type if c.isdigit()))
    if tensor_type.endswith("_k"):
        return bits, 32 if bits in (4, 5) else 16, bits in (3, 6)
    return bits, 32, not tensor_type.endswith("_1")


# The llama.cpp file type named in a mixed GGUF variant's `type` (its metadata; every tensor is named)
_FILE_TYPE = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m", "f16": "q8_0", "bf16": "q8_0", "f32": "q8_0"}


@dataclass(frozen=True)
class Assignment:
    """A level per unit, with its estimated loss (sum of the units' KLD) and weight bytes."""

    levels: tuple[tuple[Unit, Level], ...]
    loss: float
    bytes: float

    @property
    def bits_per_weight(self) -> float:
        return self.bytes * 8 / sum(unit.parameters for unit, _ in self.levels)


def levels_for(space: Mapping[str, Any]) -> list[Level]:
    """The precision levels of a ``mixed:`` entry, lowest first."""
    method = space["method"]
    if method == "gguf":
        types = [str(t).lower() for t in (space.get("types") or DEFAULT_TYPES)]
        unknown = [t for t in types if t not in TENSOR_TYPES]
        if unknown:
            raise QuantizationError(
                f"mixed gguf: unknown tensor type(s) {', '.join(unknown)}; valid: {', '.join(TENSOR_TYPES)}"
            )
        levels = [Level(t, TENSOR_TYPES[t], *type_probe(t)) for t in dict.fromkeys(types)]
    else:
        group_size = space.get("group_size") or get_method(method).params.model_fields["group_size"].default
        bits = sorted(set(space.get("bits") or DEFAULT_BITS))
        levels = [Level(b, b + scale_bits(group_size), b, group_size) for b in bits]
    return sorted(levels, key=lambda level: level.bits_per_weight)


def units_for(method: str, shape: ModelShape) -> list[Unit]:
    """What gets its own precision: decoder linear layers (GPTQ/RTN), every llama.cpp matrix (GGUF)."""
    if method == "gguf":
        return [Unit(module, name, shape.weight_parameters[module]) for module, name in model_tensors(shape).items()]
    return [Unit(module, module, n) for module, n in linear_layers(shape).items()]


def allocation_path(sensitivity: Sensitivity) -> list[Assignment]:
    """Every unit at the lowest level, then one move at a time: the unit whose move to a higher level saves
    the most estimated loss per byte spent (ties: the unit named first), while a move still saves loss.

    Returns the assignment after each move, the all-lowest one first: sizes grow, losses fall.
    """
    levels = sorted(sensitivity.levels, key=lambda level: level.bits_per_weight)
    units = sorted(sensitivity.units, key=lambda unit: unit.key)
    at = {unit.key: 0 for unit in units}

    def snapshot() -> Assignment:
        chosen = tuple((unit, levels[at[unit.key]]) for unit in units)
        return Assignment(
            chosen,
            sum(sensitivity.of(unit, level) for unit, level in chosen),
            sum(unit.parameters * level.bits_per_weight / 8 for unit, level in chosen),
        )

    path = [snapshot()]
    while True:
        best: tuple[float, str, int] | None = None  # (saved loss per byte, unit, level index)
        for unit in units:
            here = levels[at[unit.key]]
            for index in range(at[unit.key] + 1, len(levels)):
                saved = sensitivity.of(unit, here) - sensitivity.of(unit, levels[index])
                cost = unit.parameters * (levels[index].bits_per_weight - here.bits_per_weight) / 8
                if saved > 0 and (best is None or saved / cost > best[0]):
                    best = (saved / cost, unit.key, index)
        if best is None:
            return path
        at[best[1]] = best[2]
        path.append(snapshot())


def choose(path: Sequence[Assignment], levels: Sequence[Level], steps: int) -> list[Assignment]:
    """For ``steps`` target average precisions evenly between the lowest and the highest of ``levels`` (both
    excluded: those are uniform variants), the lowest-loss assignment on ``path`` at or under the target;
    distinct, mixed ones only, smallest first."""
    low = min(level.bits_per_weight for level in levels)
    high = max(level.bits_per_weight for level in levels)
    chosen: dict[tuple, Assignment] = {}
    for step in range(1, steps + 1):
        target = low + (high - low) * step / (steps + 1)
        fits = [a for a in path if a.bits_per_weight <= target + 1e-9]
        if not fits:
            continue
        best = min(fits, key=lambda a: (a.loss, a.bytes))
        if len({level.value for _, level in best.levels}) > 1:
            chosen[tuple((unit.key, level.value) for unit, level in best.levels)] = best
    return sorted(chosen.values(), key=lambda a: a.bytes)


def to_variant(method: str, assignment: Assignment, gates: tuple = ()) -> Variant:
    """The variant that realises ``assignment``: GPTQ/RTN at the level holding most parameters with the other
    layers in ``layer_bits``; GGUF with every tensor in ``tensor_types`` (a file type's own per-tensor
    choices would otherwise change the unnamed ones)."""
    spec = get_method(method)
    weight: dict[Any, int] = {}
    for unit, level in assignment.levels:
        weight[level.value] = weight.get(level.value, 0) + unit.parameters
    common = max(sorted(weight, key=str), key=lambda value: weight[value])
    if method == "gguf":
        params: dict[str, Any] = {
            "type": _FILE_TYPE.get(str(common), common),
            "tensor_types": {unit.key: level.value for unit, level in assignment.levels},
        }
    else:
        params = {
            "bits": common,
            "group_size": assignment.levels[0][1].group_size,
            "layer_bits": {unit.key: level.value for unit, level in assignment.levels if level.value != common},
        }
    validated = spec.params.model_validate(params)
    return Variant(spec.variant_id(validated), method, validated, gates, -1)


def recipe_fragment(variant: Variant) -> dict[str, Any]:
    """The ``variants.methods`` row that makes ``variant`` again (same parameters, so the same id)."""
    spec = variant.spec
    defaults = spec.params().model_dump(mode="json")
    params = variant.params.model_dump(mode="json")
    return {
        "method": variant.method,
        **{k: v for k, v in params.items() if k in spec.params.axes or v != defaults.get(k)},
    }


def _refuse_findings(method: str, levels: Sequence[Level], shape: ModelShape, device: str) -> None:
    """The method's own rules (group sizes that divide the layers …) for the lowest level, before any scan."""
    spec = get_method(method)
    lowest = levels[0]
    params = {"type": "q8_0"} if method == "gguf" else {"bits": lowest.value, "group_size": lowest.group_size}
    findings = spec.check(spec.params.model_validate(params), shape, device)
    if findings:
        raise QuantizationError(
            "; ".join(f"mixed {method}: {f.message}" + (f" ({f.hint})" if f.hint else "") for f in findings)
        )


def mixed_candidates(loaded: LoadedRecipe, space: Mapping[str, Any], device: str) -> list[Variant]:
    """One variant per distinct mixed assignment of the ``mixed:`` entry ``space`` (keys ``method``, ``bits``,
    ``group_size``, ``types``, ``steps``), smallest estimated size first. Scans sensitivity on ``device``
    (once per model revision, levels and calibration data: the scan is cached)."""
    from quantmill.calibration import cached_calibration_set
    from quantmill.resolve import resolve_model

    method = space["method"]
    shape = loaded.shape
    if shape is None or not shape.weight_parameters:
        raise QuantizationError(
            "mixed precision needs the model's layers: a local model folder (or one in the Hugging Face cache) "
            "with safetensors weights"
        )
    calibration = loaded.recipe.calibration
    if calibration.dataset is None:
        raise QuantizationError("mixed precision needs calibration.dataset: the sensitivity scan measures layers on it")
    if method not in ("gptq", "rtn", "gguf"):
        raise QuantizationError(f"mixed precision is made by gptq, rtn or gguf, not {method!r}")
    levels = levels_for(space)
    _refuse_findings(method, levels, shape, loaded.recipe.device)
    units = units_for(method, shape)
    if not units:
        raise QuantizationError(f"mixed {method}: no layer of this model has a known name (a Llama-like layout)")
    resolved = resolve_model(loaded)
    samples = cached_calibration_set(
        calibration, resolved.tokenizer_path, loaded.base_dir, trust_remote_code=loaded.trust_remote_code
    )
    sensitivity = cached_sensitivity(
        resolved.path,
        resolved.revision,
        units,
        levels,
        samples.input_ids,
        samples.fingerprint,
        device=device,
        trust_remote_code=loaded.trust_remote_code,
    )
    gates = search_gates(loaded.recipe)
    variants = [to_variant(method, a, gates) for a in choose(allocation_path(sensitivity), levels, space["steps"])]
    return sorted(variants, key=lambda v: v.spec.average_bits_per_weight(v.params, shape))
