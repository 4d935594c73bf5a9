"""The method registry: names → method specs, loaded lazily, checked, and missed helpfully.

Built-in methods are listed in :data:`quantmill.methods.BUILTIN_METHODS`; others come
from the ``quantmill.methods`` entry-point group. Whatever an entry gives is checked
(as lm-eval's registry checks its ``LM`` subclasses): it must be a
:class:`~quantmill.methods.spec.MethodSpec` registered under its own name.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from quantmill.errors import InvalidMethodError, UnknownMethodError

if TYPE_CHECKING:
    from quantmill.methods.spec import MethodSpec

ENTRY_POINT_GROUP = "quantmill.methods"


def did_you_mean(value: str, options: list[str] | tuple[str, ...]) -> str | None:
    """``"did you mean 'bits'?"`` for a near miss of ``"bitz"``, else None."""
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
        InvalidMethodError: the entry cannot be imported, or gives something that is not a
            ``MethodSpec`` named ``name``.
    """
    targets = method_targets()
    if name not in targets:
        hint = did_you_mean(name, list(targets))
        message = f"unknown method '{name}'"
        if hint:
            message += f"; {hint}"
        raise UnknownMethodError(message + f" Available: {', '.join(sorted(targets))}")
    return _checked(name, targets[name])


def _checked(name: str, target: str) -> MethodSpec:
    from quantmill.methods.spec import MethodSpec

    try:
        spec = _load(target)
    except Exception as exc:  # a plug-in's import error must not become a traceback
        raise InvalidMethodError(f"method '{name}' ({target}) cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if not isinstance(spec, MethodSpec):
        raise InvalidMethodError(
            f"method '{name}' ({target}) gives a {type(spec).__name__}, not a quantmill.methods.spec.MethodSpec"
        )
    if spec.name != name:
        raise InvalidMethodError(f"method '{name}' ({target}) declares the name '{spec.name}'; they must match")
    return spec
