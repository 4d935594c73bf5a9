"""Turn pydantic's validation errors into located, actionable recipe problems."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from quantmill.errors import RecipeProblem
from quantmill.registry import did_you_mean
from quantmill.yamlio import Loc, LocatedDocument


def _model_at(model: type[BaseModel] | None, loc: Loc) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc`` (best effort)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return current
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """The BaseModel inside ``X | None`` or ``list[X]``, if any."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, tuple):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
        return None
    return annotation


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_from_validation(
    error: ValidationError, doc: LocatedDocument, root: type[BaseModel], prefix: Loc = ()
) -> list[RecipeProblem]:
    """One :class:`RecipeProblem` per pydantic error, located in ``doc``.

    ``prefix`` places the validated object inside the document (for matrix rows).
    """
    problems = []
    for item in error.errors(include_url=False):
        loc: Loc = prefix + tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = item["type"]
        ctx = item.get("ctx") or {}
        field = str(loc[-1]) if loc else ""
        hint = None
        if kind == "extra_forbidden":
            parent = _model_at(root, loc[len(prefix) : -1])
            valid = sorted(parent.model_fields) if parent else []
            message = f"unknown key '{field}'"
            close = did_you_mean(field, valid) if valid else None
            hint = "; ".join(x for x in (close, f"valid keys: {', '.join(valid)}" if valid else None) if x)
        elif kind == "missing":
            message = f"required key '{field}' is missing"
        elif kind in ("literal_error", "enum"):
            expected = str(ctx.get("expected", ""))
            message = f"{_short(item.get('input'))} is not allowed"
            options = [o.strip().strip("'") for o in expected.replace(" or ", ", ").split(",") if o.strip()]
            close = did_you_mean(str(item.get("input")), options) if isinstance(item.get("input"), str) else None
            hint = "; ".join(x for x in (close, f"expected {expected}") if x)
        elif kind == "value_error":
            message = str(ctx.get("error", item["msg"]))
        else:
            message = f"{item['msg']} (got {_short(item.get('input'))})"
        problems.append(doc.problem(loc, message, hint))
    return problems
