"""Per-layer precision: a map that gives single layers (GPTQ, RTN) or tensors (GGUF) their own precision.

A mixed-precision variant is an ordinary variant whose parameters carry such a map:
its id gains a digest of the map (``gptq-w4-g64-mix1a2b3c``), the map is in its
cache keys, provenance and card, and a recipe row with the same map makes it again.
Nothing here imports torch: ``quantmill validate`` checks the names against the
model's shape read from its safetensors headers.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from quantmill.methods.spec import Finding
from quantmill.modelinfo import is_block_linear

if TYPE_CHECKING:
    from quantmill.modelinfo import ModelShape

#: a map as the params hold it: (name, precision) pairs, hashable like every other parameter
Pairs = tuple[tuple[str, Any], ...]


#: a ``layer_bits`` name: a module's dotted name, literally (llm-compressor would read ``re:…`` as a pattern)
LAYER_NAME = re.compile(r"[A-Za-z0-9_.]{1,200}")
#: a ``tensor_types`` name or pattern, as llama-quantize's tensor-type file takes it safely: lower case (llama.cpp
#: lowercases patterns, which would change ``\D`` into ``\d``), no whitespace or ``=`` (its file's separators),
#: no groups or alternatives, and at most two repetitions, so no pattern can backtrack for long (recipes are
#: untrusted; Python checks the patterns at validation and llama.cpp's std::regex runs them again)
TENSOR_PATTERN = re.compile(r"[a-z0-9_.*+]{1,64}")
MAX_REPETITIONS = 2


def check_name(name: str, what: str) -> None:
    """Refuse a name a recipe may not give (ValueError, shown with the recipe's file, line and field)."""
    if what == "tensor":
        if not TENSOR_PATTERN.fullmatch(name) or name.count("*") + name.count("+") > MAX_REPETITIONS:
            raise ValueError(
                f"tensor name or pattern {name!r} is not allowed: use lower-case letters, digits, '_' and '.', "
                f"with at most {MAX_REPETITIONS} of '*' or '+' (e.g. blk.0.ffn_down.weight, attn_v, ffn_down.*)"
            )
    elif not LAYER_NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a module name: letters, digits, '_' and '.' only")


def precision_map(allowed: Collection[Any], *, ordered: bool, what: str) -> Any:
    """An annotated parameter type for ``{name: precision}``, stored as a tuple of pairs.

    ``allowed``: the valid precisions (a bad one is refused with the list of valid ones).
    ``ordered``: keep the recipe's order (llama.cpp applies the first pattern that matches a
    tensor, so the order of GGUF patterns means something); otherwise the pairs are sorted.
    ``what``: ``tensor`` (llama.cpp names and patterns, :data:`TENSOR_PATTERN`) or ``layer`` (module names).
    """
    valid = ", ".join(map(str, allowed))

    def to_pairs(value: Any) -> Pairs:
        if isinstance(value, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in value):
            value = dict(value)
        if not isinstance(value, Mapping):
            raise ValueError(f"give a mapping of {what} names to precisions, e.g. {{name: {next(iter(allowed))}}}")
        pairs = []
        for name, precision in value.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"{what} names must be non-empty strings, got {name!r}")
            check_name(name, what)
            if isinstance(precision, str):
                precision = precision.lower()
            if precision not in allowed or isinstance(precision, bool):
                raise ValueError(f"{what} '{name}': {precision!r} is not allowed; valid: {valid}")
            pairs.append((name, precision))
        return tuple(pairs) if ordered else tuple(sorted(pairs))

    value_schema: dict[str, Any] = {"enum": list(allowed)}
    if all(isinstance(value, str) for value in allowed):  # names are case-insensitive, as llama.cpp's are

        def fold(text: str) -> str:
            return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)

        value_schema = {"type": "string", "pattern": "^(?:" + "|".join(map(fold, allowed)) + ")$"}
    return Annotated[
        Pairs,
        BeforeValidator(to_pairs),
        PlainSerializer(lambda pairs: dict(pairs), return_type=dict),
        WithJsonSchema(
            {
                "type": "object",
                "additionalProperties": value_schema,
                "description": f"per-{what} precision: {what} name → one of {valid} (the rest: the uniform setting)",
            }
        ),
    ]


#: ``layer_bits`` of GPTQ and RTN: linear module name → bits (the methods' own bit widths)
LayerBits = precision_map((2, 3, 4, 8), ordered=False, what="layer")


def mix_suffix(pairs: Pairs) -> str:
    """``-mix1a2b3c`` for a non-empty map (a digest of its pairs, in their order), ``""`` for none."""
    if not pairs:
        return ""
    return "-mix" + hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest()[:6]


def linear_layers(shape: ModelShape) -> dict[str, int]:
    """The decoder's linear layers (what GPTQ and RTN quantize, :func:`quantmill.modelinfo.is_block_linear`)
    and their parameters."""
    return {name: n for name, n in shape.weight_parameters.items() if is_block_linear(name)}


def unknown_name_findings(
    field: str, pairs: Pairs, known: Iterable[str], matches: Callable[[str, str], bool], what: str
) -> list[Finding]:
    """A finding for each name of the map that matches none of the model's ``known`` names, with a did-you-mean."""
    known = sorted(known)
    findings = []
    for name, _ in pairs:
        if any(matches(name, candidate) for candidate in known):
            continue
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}; " if close else ""
        examples = ", ".join(known[:3]) + (", …" if len(known) > 3 else "")
        findings.append(
            Finding(field, f"no {what} of this model is called '{name}'", f"{hint}{what} names look like {examples}")
        )
    return findings


def first_match(name: str, pairs: Pairs) -> Any:
    """The precision of the first pattern that ``name`` matches (llama.cpp's ``--tensor-type`` rule), or None."""
    for pattern, precision in pairs:
        if pattern_matches(pattern, name):
            return precision
    return None


def pattern_matches(pattern: str, name: str) -> bool:
    """Whether a llama.cpp tensor pattern (a regular expression searched in the name) matches ``name``."""
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def invalid_pattern_findings(field: str, pairs: Pairs) -> list[Finding]:
    findings = []
    for pattern, _ in pairs:
        try:
            re.compile(pattern)
        except re.error as exc:
            findings.append(Finding(field, f"'{pattern}' is not a valid pattern: {exc}", "escape special characters"))
    return findings


def grouped_rows(precision_of: Mapping[str, str], rest: str | None) -> list[dict[str, str]]:
    """Card rows: one per precision with the layers that have it, highest count first; ``rest`` describes
    the layers the map does not name (None when it names them all)."""
    by_precision: dict[str, list[str]] = {}
    for name, precision in precision_of.items():
        by_precision.setdefault(precision, []).append(name)
    rows = [
        {"precision": precision, "layers": ", ".join(f"`{n}`" for n in sorted(names)), "count": str(len(names))}
        for precision, names in sorted(by_precision.items(), key=lambda item: (-len(item[1]), item[0]))
    ]
    if rest is not None:
        rows.append({"precision": rest, "layers": "every other quantized layer", "count": "rest"})
    return rows


def _in_model(name: str, module: str) -> bool:
    return name == module


def linear_layer_findings(pairs: Pairs, shape: ModelShape | None) -> list[Finding]:
    """``layer_bits`` must name linear layers of the model (checked when its shape is known)."""
    if shape is None or not shape.weight_parameters or not pairs:
        return []
    return unknown_name_findings("layer_bits", pairs, linear_layers(shape), _in_model, "linear layer")


def linear_bits_per_weight(
    pairs: Pairs, shape: ModelShape, default_bits: int, bits_per_weight: Callable[[int], float]
) -> dict[str, float]:
    """Each decoder linear layer's bits per weight: its own from ``layer_bits``, else the uniform setting's."""
    own = dict(pairs)
    return {name: bits_per_weight(own.get(name, default_bits)) for name in linear_layers(shape)}


def linear_precision_rows(pairs: Pairs, default_bits: int, group_size: int) -> list[dict[str, str]]:
    """The card's rows for a GPTQ/RTN variant with ``layer_bits`` (none when it has none)."""
    if not pairs:
        return []
    group = f"group {group_size}" if group_size > 0 else "per channel"
    return grouped_rows({name: f"{bits}-bit, {group}" for name, bits in pairs}, f"{default_bits}-bit, {group}")
