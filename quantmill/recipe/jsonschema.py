"""The recipe's JSON Schema, with one matrix-row schema per registered method."""

from __future__ import annotations

import copy
import re
from typing import Any

from quantmill.recipe.schema import GateRule, MixedRow, Recipe
from quantmill.registry import get_method, method_names


def _row_schema(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = get_method(method)
    schema = copy.deepcopy(spec.params.model_json_schema(ref_template="#/$defs/{model}"))
    defs = schema.pop("$defs", {})
    properties = schema.get("properties", {})
    for axis in spec.params.axes:
        if axis in properties:
            single = _case_insensitive(properties[axis])
            properties[axis] = {
                "anyOf": [single, {"type": "array", "items": single, "minItems": 1}],
                "description": single.get("description", "") + " (a list expands the matrix)",
            }
            if axis + "s" not in properties:
                properties[axis + "s"] = {**properties[axis], "description": f"same as '{axis}'"}
    properties["method"] = {"const": method, "description": spec.summary}
    properties["id"] = {"type": "string", "description": "explicit id for a row that makes one variant"}
    properties["gates"] = {"type": "array", "items": {"$ref": "#/$defs/GateRule"}}
    return {
        "title": f"{method} row",
        "type": "object",
        "properties": properties,
        "required": ["method"],
        "additionalProperties": False,
    }, defs


def _case_insensitive(schema: dict[str, Any]) -> dict[str, Any]:
    """GGUF types are case-insensitive: accept any casing of an enum's strings."""
    values = schema.get("enum")
    if not values or not all(isinstance(v, str) for v in values) or not schema.get("_ci"):
        return schema

    def fold(text: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)

    pattern = "^(?:" + "|".join(fold(v) for v in values) + ")$"
    rest = {k: v for k, v in schema.items() if k not in ("enum", "_ci", "type")}
    return {**rest, "type": "string", "pattern": pattern, "examples": values}


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a recipe file, for editors' autocompletion."""
    schema = Recipe.model_json_schema(ref_template="#/$defs/{model}")
    defs = schema.setdefault("$defs", {})
    defs.setdefault("GateRule", GateRule.model_json_schema(ref_template="#/$defs/{model}"))
    rows = []
    for name in method_names():
        row, row_defs = _row_schema(name)
        defs.update(row_defs)
        rows.append(row)
    defs["Variants"]["properties"]["methods"]["items"] = {"oneOf": rows}
    # a search's space holds the same rows, or mixed-precision entries
    defs.setdefault("MixedRow", MixedRow.model_json_schema(ref_template="#/$defs/{model}"))
    defs.setdefault("MixedSpace", defs["MixedRow"].pop("$defs", {}).get("MixedSpace"))
    defs["Search"]["properties"]["space"]["items"] = {"oneOf": [*rows, {"$ref": "#/$defs/MixedRow"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "quantmill recipe"
    return schema
