"""The servable probe's process leaves out optional packages a variant's method does not need, and says so
when serving needs one."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from types import SimpleNamespace

import pytest

from quantmill.errors import NotServableError
from quantmill.evaluation import serve_probe

pytestmark = pytest.mark.fast

OPTIONAL = {"qm_probe_optional_a": "qm-probe-optional-a", "qm_probe_optional_b": "qm-probe-optional-b"}


@pytest.fixture
def optional_packages(monkeypatch):
    """Two made-up optional packages; whatever the probe marks absent in ``sys.modules`` is removed after."""
    monkeypatch.setattr(serve_probe, "OPTIONAL_PACKAGES", OPTIONAL)
    for module in OPTIONAL:
        monkeypatch.setitem(sys.modules, module, None)  # registers the clean-up (removal) ...
        del sys.modules[module]  # ... of an entry that only the probe makes
    return OPTIONAL


def test_only_the_optional_packages_the_method_lists_stay_findable(optional_packages):
    left_out = serve_probe.leave_out_optional_packages(["qm-probe-optional-b", "compressed-tensors"])
    assert left_out == ["qm_probe_optional_a"]
    assert sys.modules["qm_probe_optional_a"] is None and "qm_probe_optional_b" not in sys.modules
    assert importlib.util.find_spec("qm_probe_optional_a") is None  # what transformers' availability checks ask
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("qm_probe_optional_a")


def test_the_optional_packages_are_named_by_the_distributions_a_method_lists():
    installed = importlib.metadata.packages_distributions()
    for module, distribution in serve_probe.OPTIONAL_PACKAGES.items():
        if module in installed:
            assert distribution in installed[module], (module, installed[module])


def test_a_variant_that_needs_a_left_out_package_is_not_servable_and_the_reason_names_it(
    optional_packages, monkeypatch
):
    def greedy_generate(*args, **kwargs):
        try:
            importlib.import_module("qm_probe_optional_a.core")
        except ImportError as exc:  # as a card's snippet reports it
            raise NotServableError("not servable: the card's usage snippet failed") from exc

    spec = SimpleNamespace(
        name="plugin", packages=(), output_format=SimpleNamespace(library_name="x", greedy_generate=greedy_generate)
    )
    monkeypatch.setattr("quantmill.registry.get_method", lambda name: spec)
    request = {"method": "plugin", "repo_id": "org/x", "provenance": {}, "prompts": ["Hi"], "max_new_tokens": 2}
    with pytest.raises(NotServableError) as failed:
        serve_probe.answer({**request, "device": "cpu", "trust_remote_code": False})
    assert str(failed.value) == (
        "not servable: serving it imports qm-probe-optional-a, which method 'plugin' does not list among its "
        "packages (the probe leaves it out)"
    )
