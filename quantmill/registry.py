"""Name → object registries that load lazily and miss helpfully."""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from quantmill.errors import UnknownMethodError

if TYPE_CHECKING:
    from quantmill.methods.spec import MethodSpec

ENTRY_POINT_GROUP = "quantmill.methods"


def did_you_mean(value: str, options: list[str] | tuple[str, ...]) -> str | None:
    """``"did you mean 'gptq'?"`` for a near miss, else None."""
    close = difflib.get_close_matches(value.lower(), [o.lower() for o in options], n=1, cutoff=0.6)
    if not close:
        return None
    original = next(o for o in options if o.lower() == close[0])
    return f"did you mean '{original}'?"


def _load(target: str):
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@cache
def method_targets() -> dict[str, str]:
    """Every registered method name and where its spec lives (built-ins win)."""
    from quantmill.methods import BUILTIN_METHODS

    targets = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    targets.update(BUILTIN_METHODS)
    return targets


def method_names() -> list[str]:
    return sorted(method_targets())


def get_method(name: str) -> MethodSpec:
    """The spec registered as ``name``.

    Raises:
        UnknownMethodError: with a close match and the list of known methods.
    """
    targets = method_targets()
    if name not in targets:
        hint = did_you_mean(name, list(targets))
        message = f"unknown method '{name}'"
        if hint:
            message += f"; {hint}"
        raise UnknownMethodError(message + f" Available: {', '.join(sorted(targets))}")
    return _load(targets[name])
